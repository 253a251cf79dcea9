import { CronTime, validateCronExpression } from 'cron';
import { EXPUNGE_TIME_ZONE } from '../expunger/expunge-schedule.js';
import { DEFAULT_OPTIONS } from './defaults.js';
import { fail, shown } from './option-checks.js';

/** Whole numbers of hours that divide a day, the only `intervalHours` with fixed times of day. */
const HOURS_DIVIDING_A_DAY = [1, 2, 3, 4, 6, 8, 12, 24];

/**
 * The cron expression of the expunge schedule: `expunge.cron`, else the one that
 * `expunge.intervalHours` maps onto (every `h` hours on the hour from midnight UTC),
 * else the default.
 *
 * @throws TokenResourceConfigError for both options at once, an `intervalHours` with no
 *   fixed times of day, or a cron expression that is invalid or never fires.
 */
export function expungeCronOf(options: { cron?: unknown; intervalHours?: unknown }): string {
  const { cron, intervalHours } = options;
  if (cron !== undefined && intervalHours !== undefined) {
    fail('set expunge.cron or expunge.intervalHours, not both (expunge.cron is the one to keep).');
  }
  if (intervalHours !== undefined) return cronOfIntervalHours(intervalHours);
  if (cron === undefined) return DEFAULT_OPTIONS.expunge.cron;
  if (typeof cron !== 'string' || cron.trim() === '') {
    fail(`expunge.cron must be a cron expression such as '${DEFAULT_OPTIONS.expunge.cron}', got ${shown(cron)}.`);
  }
  const { valid, error } = validateCronExpression(cron);
  if (!valid) fail(`expunge.cron '${cron}' is not a valid cron expression: ${error?.message ?? 'unknown error'}.`);
  try {
    new CronTime(cron, EXPUNGE_TIME_ZONE).sendAt();
  } catch {
    fail(`expunge.cron '${cron}' never fires.`);
  }
  return cron;
}

function cronOfIntervalHours(hours: unknown): string {
  if (typeof hours !== 'number' || !HOURS_DIVIDING_A_DAY.includes(hours)) {
    fail(
      `expunge.intervalHours must be a whole number of hours that divides 24 (${HOURS_DIVIDING_A_DAY.join(', ')}), so that runs fall at fixed times of day; got ${String(hours)}. For any other schedule set expunge.cron instead, for example '*/30 * * * *' (every 30 minutes) or '0 3 * * *' (daily at 03:00 UTC).`,
    );
  }
  if (hours === 1) return '0 * * * *';
  if (hours === 24) return '0 0 * * *';
  return `0 */${hours} * * *`;
}
