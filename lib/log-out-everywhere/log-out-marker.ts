import { LOG_OUT_EVERYWHERE_JTI_PREFIX } from '../token-resource.constants.js';

/**
 * What a subject's log-out-everywhere marker row keeps in `extra_data`. One row per
 * subject, overwritten by each log-out (atomically, by the upsert of
 * `LogOutEverywhereService`), so the revoked-check reads it with the same primary-key
 * lookup as the token's own row.
 */
export interface LogOutMarker {
  /** Milliseconds since the epoch (the application's clock) of the latest log-out everywhere. */
  at: number;
  /** The token kept valid by that log-out (`exceptJti`), if any. */
  exceptJti?: string;
  /**
   * Earlier log-outs already revoked `exceptJti` if it was issued at or before this
   * moment (ms); keeping it now must not un-revoke it. `0` when they did not.
   */
  exceptRevokedUpTo?: number;
  /**
   * The purpose filter of the latest log-out. A token whose row is stored with a purpose
   * the log-out spared (for example an excluded `'confirm'` token) is not revoked by the
   * marker either; the marker only decides for purposes the log-out covered, and for
   * tokens that were never stored (whose purpose is unknown).
   */
  includePurposes?: string[];
  /** See {@link includePurposes}. */
  excludePurposes?: string[];
}

/** The `jti` of the marker row of `subject`. */
export function logOutMarkerJti(subject: string): string {
  return LOG_OUT_EVERYWHERE_JTI_PREFIX + subject;
}

/** Whether a purpose passes an include/exclude filter (no include list: every purpose). */
export function purposePasses(purpose: string, includePurposes: string[] | undefined, excludePurposes: string[] | undefined): boolean {
  if (includePurposes && !includePurposes.includes(purpose)) return false;
  return !(excludePurposes ?? []).includes(purpose);
}

/**
 * Whether a log-out marker revokes a token. A token issued at or before the log-out is
 * revoked; a whole-second `iat` in the log-out's own second therefore counts as revoked
 * (fail closed), while the fractional `iat` of `issueToken` stays exact. A token without
 * `iat` cannot be placed in time and counts as revoked.
 *
 * @param storedPurpose the purpose of the token's own stored row, if it has one: a row
 *   whose purpose the latest log-out spared keeps the token valid.
 */
export function logOutMarkerRevokes(marker: LogOutMarker, jti: string, iat: number | undefined, storedPurpose?: string): boolean {
  if (storedPurpose !== undefined && !purposePasses(storedPurpose, marker.includePurposes, marker.excludePurposes)) return false;
  if (typeof iat !== 'number' || !Number.isFinite(iat)) return true;
  // `issueToken` writes `Date.now() / 1000`; times 1000 that is the whole millisecond
  // again only up to a float rounding error (…122.99998), so round back to the
  // millisecond: the same millisecond as the log-out then reliably counts as revoked.
  const issuedAtMs = Math.round(iat * 1000);
  if (issuedAtMs > marker.at) return false;
  return jti !== marker.exceptJti || issuedAtMs <= (marker.exceptRevokedUpTo ?? 0);
}
