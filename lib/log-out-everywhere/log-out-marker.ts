import { LOG_OUT_EVERYWHERE_JTI_PREFIX } from '../token-resource.constants.js';

/**
 * What a subject's log-out-everywhere marker row keeps in `extra_data`. One row per
 * subject, overwritten by each log-out, so the revoked-check reads it with the same
 * primary-key lookup as the token's own row.
 */
export interface LogOutMarker {
  /** Milliseconds since the epoch of the latest log-out everywhere. */
  at: number;
  /** The token kept valid by that log-out (`exceptJti`), if any. */
  exceptJti?: string;
  /**
   * Earlier log-outs already revoked `exceptJti` if it was issued at or before this
   * moment (ms); keeping it now must not un-revoke it. `0` when they did not.
   */
  exceptRevokedUpTo?: number;
}

/** The `jti` of the marker row of `subject`. */
export function logOutMarkerJti(subject: string): string {
  return LOG_OUT_EVERYWHERE_JTI_PREFIX + subject;
}

/**
 * Whether a log-out marker revokes a token. A token issued at or before the log-out is
 * revoked; a whole-second `iat` in the log-out's own second therefore counts as revoked
 * (fail closed), while the fractional `iat` of `issueToken` stays exact. A token without
 * `iat` cannot be placed in time and counts as revoked.
 */
export function logOutMarkerRevokes(marker: LogOutMarker, jti: string, iat: number | undefined): boolean {
  if (typeof iat !== 'number' || !Number.isFinite(iat)) return true;
  const issuedAtMs = iat * 1000;
  if (issuedAtMs > marker.at) return false;
  return jti !== marker.exceptJti || issuedAtMs <= (marker.exceptRevokedUpTo ?? 0);
}
