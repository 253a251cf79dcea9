import type { JWTPayload } from 'jose';
import { InvalidTokenError } from '../token-resource.exceptions.js';

/**
 * The longest `jti`, in UTF-8 bytes, that the token table stores. With the subject limit it
 * keeps every key within PostgreSQL's btree entry limit (about 2.7 kB), a subject's marker
 * `jti` (`log-out-everywhere:<subject>`) included.
 */
export const MAX_JTI_BYTES = 255;

/**
 * The longest subject (`sub`), in UTF-8 bytes: it fits the `subject` index and its marker's `jti`.
 */
export const MAX_SUBJECT_BYTES = 1024;

/** The longest purpose, in UTF-8 bytes. */
export const MAX_PURPOSE_BYTES = 255;

/**
 * The latest expiry a row can keep, in seconds since the epoch (9999-12-31T23:59:59Z): it
 * fits `timestamptz` and a JavaScript `Date` alike.
 */
export const MAX_EXPIRY_SECONDS = 253_402_300_799;

/**
 * Why `value` cannot be stored as it is in a `text` key column, or `undefined` when it
 * can: PostgreSQL replaces a lone UTF-16 surrogate (legal in JSON) with U+FFFD, so the
 * row would not match the claim it came from; it refuses NUL; and keys must fit an index.
 */
function unstorable(value: unknown, maxBytes: number): string | undefined {
  if (typeof value !== 'string' || value === '') return 'must be a non-empty string';
  if (!(value as string & { isWellFormed(): boolean }).isWellFormed()) return 'must not contain lone UTF-16 surrogates';
  if (value.includes('\0')) return 'must not contain NUL characters';
  // A UTF-16 code unit is at most 3 bytes of UTF-8: most values need no count.
  if (value.length * 3 > maxBytes && Buffer.byteLength(value) > maxBytes) return `must be at most ${maxBytes} bytes of UTF-8`;
  return undefined;
}

function check(value: unknown, name: string, maxBytes: number): asserts value is string {
  const problem = unstorable(value, maxBytes);
  if (problem) throw new TypeError(`${name} ${problem}`);
}

/** @throws TypeError unless `value` is a storable `jti` (see {@link MAX_JTI_BYTES}). */
export function checkJti(value: unknown, name = 'jti'): asserts value is string {
  check(value, name, MAX_JTI_BYTES);
}

/** @throws TypeError unless `value` is a storable subject (see {@link MAX_SUBJECT_BYTES}). */
export function checkSubject(value: unknown, name = 'subject'): asserts value is string {
  check(value, name, MAX_SUBJECT_BYTES);
}

/** @throws TypeError unless `value` is a storable purpose (see {@link MAX_PURPOSE_BYTES}). */
export function checkPurpose(value: unknown, name = 'purpose'): asserts value is string {
  check(value, name, MAX_PURPOSE_BYTES);
}

/** Whether `value` is a storable purpose (see {@link MAX_PURPOSE_BYTES}). */
export function isPurpose(value: unknown): value is string {
  return unstorable(value, MAX_PURPOSE_BYTES) === undefined;
}

/**
 * @throws TypeError when `value` (a row's `extraData`) holds a string, key or value, that
 *   `jsonb` refuses: one with NUL or a lone UTF-16 surrogate.
 */
export function checkJsonb(value: unknown, name: string): void {
  JSON.stringify(value, (key, inner: unknown) => {
    for (const text of [key, inner]) {
      if (typeof text === 'string' && (text.includes('\0') || !(text as string & { isWellFormed(): boolean }).isWellFormed())) {
        throw new TypeError(
          `${name} must not hold strings with NUL characters or lone UTF-16 surrogates: PostgreSQL's jsonb cannot store them`,
        );
      }
    }
    return inner;
  });
}

/**
 * The expiry a row keeps for a token with this `exp`: rounded up to the whole second, so
 * that the row outlives the token (jose compares whole seconds, and a row expunged before
 * jose stops accepting its token would un-revoke it).
 */
export function expiryOfExp(exp: number): Date {
  return new Date(Math.ceil(exp) * 1000);
}

/**
 * An expiry given as a `Date` (`revokeJti`'s `expiresAt`), rounded up to the whole second
 * like {@link expiryOfExp}.
 *
 * @throws TypeError for an invalid date, or one before 1970 or after {@link MAX_EXPIRY_SECONDS}.
 */
export function checkExpiresAt(value: unknown, name = 'expiresAt'): Date {
  const ms = value instanceof Date ? value.getTime() : Number.NaN;
  if (!(ms >= 0 && ms <= MAX_EXPIRY_SECONDS * 1000)) {
    throw new TypeError(`${name} must be a valid Date between 1970 and the end of 9999`);
  }
  return expiryOfExp(ms / 1000);
}

function checkClaim(claims: JWTPayload, claim: 'jti' | 'sub', maxBytes: number): void {
  const value = claims[claim];
  if (typeof value !== 'string' || value === '') return;
  const problem = unstorable(value, maxBytes);
  if (problem) throw new InvalidTokenError(`token claim ${claim} ${problem}`);
}

/**
 * Checks the claims of a token whose signature jose verified, before anything reads or
 * writes them: a `jti` or `sub` string must be storable (its absence is for the caller to
 * judge), `exp` representable as a row's expiry, and `iat` not later than now plus the
 * clock tolerance: a token from the future would never be covered by a log-out everywhere.
 *
 * @param nowMs the application's clock, the one `issueToken` writes `iat` with.
 * @throws InvalidTokenError naming the claim.
 */
export function checkVerifiedClaims(claims: JWTPayload, nowMs: number, clockToleranceSeconds: number): void {
  checkClaim(claims, 'jti', MAX_JTI_BYTES);
  checkClaim(claims, 'sub', MAX_SUBJECT_BYTES);
  const { exp, iat } = claims;
  if (typeof exp === 'number' && !(exp >= 0 && exp <= MAX_EXPIRY_SECONDS)) {
    throw new InvalidTokenError('token claim exp is out of range');
  }
  if (issuedInFuture(iat, nowMs, clockToleranceSeconds)) throw new InvalidTokenError('token claim iat is in the future');
}

/** Whether an `iat` claim is later than `nowMs` plus the clock tolerance (see {@link checkVerifiedClaims}). */
export function issuedInFuture(iat: unknown, nowMs: number, clockToleranceSeconds: number): boolean {
  // Rounded like the log-out check rounds it: `issueToken`'s `Date.now() / 1000`, times
  // 1000, may exceed the millisecond it was taken in by a float rounding error.
  return typeof iat === 'number' && Math.round(iat * 1000) > nowMs + clockToleranceSeconds * 1000;
}
