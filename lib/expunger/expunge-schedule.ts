import { CronTime } from 'cron';

/** The time zone every expunge schedule is read in, so that all instances agree on it. */
export const EXPUNGE_TIME_ZONE = 'UTC';

/** How far back {@link previousTick} looks: a schedule sparser than this counts as never having fired. */
const MAX_LOOKBACK_MS = 8 * 366 * 86_400_000;

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
