const UNIT_SECONDS: Record<string, number> = {
  s: 1,
  sec: 1,
  secs: 1,
  second: 1,
  seconds: 1,
  m: 60,
  min: 60,
  mins: 60,
  minute: 60,
  minutes: 60,
  h: 3600,
  hr: 3600,
  hrs: 3600,
  hour: 3600,
  hours: 3600,
  d: 86400,
  day: 86400,
  days: 86400,
  w: 604800,
  week: 604800,
  weeks: 604800,
  y: 31557600,
  yr: 31557600,
  yrs: 31557600,
  year: 31557600,
  years: 31557600,
};

/**
 * Converts a lifetime given as seconds or as a duration string (`'90s'`, `'15m'`,
 * `'7d'`, `'1 week'`) to seconds.
 *
 * @throws Error with a readable message when the input is not a positive duration.
 */
export function durationToSeconds(value: string | number): number {
  if (typeof value === 'number') {
    if (!Number.isFinite(value) || value <= 0) throw new Error(`expected a positive number of seconds, got ${value}`);
    return value;
  }
  const match = typeof value === 'string' ? /^\s*(\d+(?:\.\d+)?)\s*([a-z]+)?\s*$/i.exec(value) : null;
  const unit = match?.[2]?.toLowerCase() ?? 's';
  const seconds = match ? Number(match[1]) * (UNIT_SECONDS[unit] ?? NaN) : NaN;
  if (!Number.isFinite(seconds) || seconds <= 0) {
    throw new Error(`expected seconds or a duration such as '15m' or '7d', got ${JSON.stringify(value)}`);
  }
  return seconds;
}
