import { LOG_OUT_EVERYWHERE_JTI_PREFIX } from '../token-resource.internal-constants.js';

/**
 * One level of a subject's log-out marker: what the log-outs with one purpose filter
 * decided. Successive log-outs with the same filter merge into one level; log-outs with
 * another filter get a level of their own.
 */
export interface LogOutLevel {
  /** Milliseconds since the epoch (the application's clock) of the latest log-out with this filter. */
  at: number;
  /** The token kept valid by that log-out (`exceptJti`), if any. */
  exceptJti?: string;
  /**
   * Earlier log-outs of this level already revoked `exceptJti` if it was issued at or
   * before this moment (ms); keeping it now must not un-revoke it. `0` when they did not.
   */
  exceptRevokedUpTo?: number;
  /**
   * The purpose filter of this level. A token whose row is stored with a purpose the
   * filter spares (for example an excluded `'confirm'` token) is not revoked by this
   * level; the level only decides for purposes it covers, and for tokens that were
   * never stored (whose purpose is unknown). Absent: every purpose.
   */
  includePurposes?: string[];
  /** See {@link includePurposes}. Sorted, without duplicates. */
  excludePurposes?: string[];
}

/**
 * What a subject's log-out-everywhere marker row keeps in `extra_data`: one level per
 * distinct purpose filter, keyed by the filter (see `LogOutEverywhereService`). A token
 * is revoked when any level revokes it, so a later log-out with a narrower filter can
 * never spare what an earlier, wider one revoked. One row per subject, updated
 * atomically by each log-out, so the revoked-check reads it with the same primary-key
 * lookup as the token's own row.
 */
export interface LogOutMarker {
  /** The levels, keyed by their purpose filter. */
  levels: Record<string, LogOutLevel>;
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
 * A purpose list in its canonical form, sorted and without duplicates, so that equal
 * filters given in another order share one level of the marker.
 */
export function canonicalPurposes(purposes: string[]): string[];
export function canonicalPurposes(purposes: string[] | undefined): string[] | undefined;
export function canonicalPurposes(purposes: string[] | undefined): string[] | undefined {
  return purposes && [...new Set(purposes)].sort();
}

/**
 * Whether a log-out marker revokes a token: whether any of its levels does. A token
 * issued at or before a level's log-out is revoked by it; a whole-second `iat` in the
 * log-out's own second therefore counts as revoked (fail closed), while the fractional
 * `iat` of `issueToken` stays exact. A token without `iat` cannot be placed in time and
 * counts as revoked.
 *
 * @param storedPurpose the purpose of the token's own stored row, if it has one: a
 *   level whose filter spares that purpose does not revoke the token.
 */
export function logOutMarkerRevokes(marker: LogOutMarker, jti: string, iat: number | undefined, storedPurpose?: string): boolean {
  // A plain loop: this runs on every revoked-check, usually over one or two levels.
  for (const key in marker.levels) {
    if (levelRevokes(marker.levels[key], jti, iat, storedPurpose)) return true;
  }
  return false;
}

function levelRevokes(level: LogOutLevel, jti: string, iat: number | undefined, storedPurpose: string | undefined): boolean {
  if (storedPurpose !== undefined && !purposePasses(storedPurpose, level.includePurposes, level.excludePurposes)) return false;
  if (typeof iat !== 'number' || !Number.isFinite(iat)) return true;
  // `issueToken` writes `Date.now() / 1000`; times 1000 that is the whole millisecond
  // again only up to a float rounding error (…122.99998), so round back to the
  // millisecond: the same millisecond as the log-out then reliably counts as revoked.
  const issuedAtMs = Math.round(iat * 1000);
  if (issuedAtMs > level.at) return false;
  return jti !== level.exceptJti || issuedAtMs <= (level.exceptRevokedUpTo ?? 0);
}
