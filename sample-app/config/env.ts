/**
 * The sample app's settings, read from environment variables and checked once at
 * start-up (by `main.ts` before anything boots, and by `ConfigModule` for injection).
 */

/**
 * DEVELOPMENT ONLY. Signs tokens when `JWT_SECRET` is unset outside production, so that
 * `npm start` works with no setup. Anyone who reads this file can forge tokens for an app
 * that uses it: set `JWT_SECRET` to 32+ random bytes for anything real. With
 * `NODE_ENV=production` the app refuses to start without `JWT_SECRET`.
 */
export const DEV_JWT_SECRET = 'dev-only-secret--set-JWT_SECRET--never-use-in-production';

/** Shortest `JWT_SECRET` accepted: HS256 wants a key at least as long as its 256-bit output. */
const MIN_SECRET_LENGTH = 32;

/** The validated settings. */
export interface SampleEnv {
  /** `NODE_ENV`, default `'development'`. */
  NODE_ENV: string;
  /** HTTP port, default `3000`; `0` picks a free one. */
  PORT: number;
  /** Interface to listen on, default `127.0.0.1`; `0.0.0.0` in a container. */
  HOST: string;
  /** HMAC secret of the tokens. */
  JWT_SECRET: string;
  /** Whether `JWT_SECRET` is the development default (a warning is printed). */
  JWT_SECRET_IS_DEV_DEFAULT: boolean;
  /** `iss` of issued tokens, checked on every token. Default `'nestjs-token-resource-sample'`. */
  JWT_ISSUER: string;
  /** Lifetime of access tokens, seconds or a duration like `'15m'` (the refresh token lives 30 days). Default `'15m'`. */
  TOKEN_TTL: string;
  /** Lifetime of e-mail confirmation tokens. Default `'1h'`. */
  CONFIRM_TOKEN_TTL: string;
  /** Hours between expunger runs. Default `12`. */
  EXPUNGE_INTERVAL_HOURS: number;
}

/** An environment setting is missing or malformed; the message says which and how to fix it. */
export class SampleEnvError extends Error {
  override name = 'SampleEnvError';
}

/**
 * Checks and completes the environment. Throws {@link SampleEnvError} for a bad value,
 * and in production when `JWT_SECRET` is unset: there is no safe default for a secret.
 * Usable as `ConfigModule.forRoot({ validate })`.
 */
export function validateEnv(raw: Record<string, unknown>): SampleEnv {
  const str = (name: string): string | undefined => {
    const value = raw[name];
    return typeof value === 'string' && value.trim() !== '' ? value.trim() : undefined;
  };
  const NODE_ENV = str('NODE_ENV') ?? 'development';

  const secret = str('JWT_SECRET');
  if (secret === undefined && NODE_ENV === 'production') {
    throw new SampleEnvError('JWT_SECRET is required when NODE_ENV=production (32+ random characters, e.g. `openssl rand -base64 48`).');
  }
  if (secret !== undefined && secret.length < MIN_SECRET_LENGTH) {
    throw new SampleEnvError(`JWT_SECRET must be at least ${MIN_SECRET_LENGTH} characters long.`);
  }

  return {
    NODE_ENV,
    PORT: integer('PORT', str('PORT') ?? '3000', 0, 65535),
    HOST: str('HOST') ?? '127.0.0.1',
    JWT_SECRET: secret ?? DEV_JWT_SECRET,
    JWT_SECRET_IS_DEV_DEFAULT: secret === undefined,
    JWT_ISSUER: str('JWT_ISSUER') ?? 'nestjs-token-resource-sample',
    TOKEN_TTL: duration('TOKEN_TTL', str('TOKEN_TTL') ?? '15m'),
    CONFIRM_TOKEN_TTL: duration('CONFIRM_TOKEN_TTL', str('CONFIRM_TOKEN_TTL') ?? '1h'),
    EXPUNGE_INTERVAL_HOURS: positiveNumber('EXPUNGE_INTERVAL_HOURS', str('EXPUNGE_INTERVAL_HOURS') ?? '12'),
  };
}

function integer(name: string, text: string, min: number, max: number): number {
  const value = Number(text);
  if (!Number.isInteger(value) || value < min || value > max) {
    throw new SampleEnvError(`${name} must be an integer from ${min} to ${max}, got ${JSON.stringify(text)}.`);
  }
  return value;
}

/** Seconds, or a number with one of the units `issueToken` knows best: s, m, h, d, w. */
function duration(name: string, text: string): string {
  if (!/^[1-9]\d*\s*[smhdw]?$/i.test(text)) {
    throw new SampleEnvError(`${name} must be seconds or a duration such as 15m, 12h or 7d, got ${JSON.stringify(text)}.`);
  }
  return text;
}

function positiveNumber(name: string, text: string): number {
  const value = Number(text);
  if (!Number.isFinite(value) || value <= 0) throw new SampleEnvError(`${name} must be a positive number, got ${JSON.stringify(text)}.`);
  return value;
}
