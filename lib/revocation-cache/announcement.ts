import { isJti, isSubject } from '../validation/token-values.js';

/** The payload prefix of a write that announces a token's `jti`: `j:<jti>`. */
export const TOKEN_ANNOUNCEMENT = 'j:';
/** The payload prefix of a log-out that announces a subject: `s:<subject>`. */
export const SUBJECT_ANNOUNCEMENT = 's:';

/** What an announcement names: every cached answer about that token or subject must be dropped. */
export interface Announcement {
  kind: 'jti' | 'subject';
  key: string;
}

/**
 * What a notification payload announces, or `undefined` for one no write of this library
 * sends. Anyone who may `NOTIFY` can send any payload: only a well-formed announcement of a
 * storable `jti` or subject may make a cache drop anything, never a cheap way to empty it.
 */
export function parseAnnouncement(payload: string): Announcement | undefined {
  const key = payload.slice(2);
  if (payload.startsWith(TOKEN_ANNOUNCEMENT)) return isJti(key) ? { kind: 'jti', key } : undefined;
  if (payload.startsWith(SUBJECT_ANNOUNCEMENT)) return isSubject(key) ? { kind: 'subject', key } : undefined;
  return undefined;
}
