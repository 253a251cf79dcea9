import { CronTime, validateCronExpression } from 'cron';
import { failConfig } from '../validation/fail-config.js';

/** The expunger's default schedule: every 12 hours on the hour, at 00:00 and 12:00 UTC. */
export const DEFAULT_EXPUNGE_CRON = '0 0,12 * * *';

/** The time zone every expunge schedule is read in, so that all instances agree on it. */
export const EXPUNGE_TIME_ZONE = 'UTC';

/** Whole numbers of hours that divide a day, the only `intervalHours` with fixed times of day. */
const HOURS_DIVIDING_A_DAY = [1, 2, 3, 4, 6, 8, 12, 24];

/** How far back {@link previousTick} looks: a schedule sparser than this counts as never having fired. */
const MAX_LOOKBACK_MS = 8 * 366 * 86_400_000;

/**
 * The cron expression of the expunge schedule: `expunge.cron`, else the one that
 * `expunge.intervalHours` maps onto (every `h` hours on the hour from midnight UTC, for
 * a whole number `h` dividing 24), else {@link DEFAULT_EXPUNGE_CRON}.
 *
 * @throws TokenResourceConfigError for both options at once, an `intervalHours` with no
 *   fixed times of day, or a cron expression that is invalid or never fires.
 */
export function expungeCronOf(options: { cron?: unknown; intervalHours?: unknown }): string {
  const { cron, intervalHours } = options;
  if (cron !== undefined && intervalHours !== undefined) {
    failConfig('set expunge.cron or expunge.intervalHours, not both (expunge.cron is the one to keep).');
  }
  if (intervalHours !== undefined) return cronOfIntervalHours(intervalHours);
  if (cron === undefined) return DEFAULT_EXPUNGE_CRON;
  if (typeof cron !== 'string' || cron.trim() === '') failConfig(`expunge.cron must be a cron expression such as '${DEFAULT_EXPUNGE_CRON}', got ${String(cron)}.`);
  const { valid, error } = validateCronExpression(cron);
  if (!valid) failConfig(`expunge.cron '${cron}' is not a valid cron expression: ${error?.message ?? 'unknown error'}.`);
  try {
    new CronTime(cron, EXPUNGE_TIME_ZONE).sendAt();
  } catch {
    failConfig(`expunge.cron '${cron}' never fires.`);
  }
  return cron;
}

function cronOfIntervalHours(hours: unknown): string {
  if (typeof hours !== 'number' || !HOURS_DIVIDING_A_DAY.includes(hours)) {
    failConfig(`expunge.intervalHours must be a whole number of hours that divides 24 (${HOURS_DIVIDING_A_DAY.join(', ')}), so that runs fall at fixed times of day; got ${String(hours)}. For any other schedule set expunge.cron instead, for example '*/30 * * * *' (every 30 minutes) or '0 3 * * *' (daily at 03:00 UTC).`);
  }
  if (hours === 1) return '0 * * * *';
  if (hours === 24) return '0 0 * * *';
  return `0 */${hours} * * *`;
}

/**
 * The latest time at or before `now` at which `cron` fires (in UTC), or `undefined` when
 * it has not fired for about eight years. The cron package only looks forward, so this
 * widens a window back from `now` until the window holds a tick, then narrows in on the
 * latest start whose next tick is not after `now`.
 */
export function previousTick(cron: string, now: Date): Date | undefined {
  const time = new CronTime(cron, EXPUNGE_TIME_ZONE);
  const nowMs = now.getTime();
  const nextAfter = (ms: number) => time.getNextDateFrom(new Date(ms), EXPUNGE_TIME_ZONE).toMillis();
  let span = 1000;
  while (nextAfter(nowMs - span) > nowMs) {
    span *= 2;
    if (span > MAX_LOOKBACK_MS) return undefined;
  }
  // Ticks fall on whole seconds, and the next tick after a start ignores its milliseconds:
  // once the two starts are a second apart, the earlier one's next tick is the latest.
  let low = nowMs - span;
  let high = nowMs;
  while (high - low > 1000) {
    const middle = low + Math.floor((high - low) / 2);
    if (nextAfter(middle) <= nowMs) low = middle;
    else high = middle;
  }
  return new Date(nextAfter(low));
}
