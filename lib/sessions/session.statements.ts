import { REVOCATION_PURPOSE } from '../token-resource.constants.js';
import { REFRESH_PURPOSE, SESSION_JTI_PREFIX, SESSION_PURPOSE } from '../token-resource.internal-constants.js';
import type { Statement, TokenStore } from '../token.store.js';

/**
 * The SQL of sessions, each one statement so that it is atomic in autocommit too. The
 * tokens of a session are rows of the token table: the session's own row (`session:<sid>`,
 * purpose `'session'`, `'revocation'` once revoked), its refresh tokens (purpose
 * `'refresh'`) and, with `storeAllTokens`, its access tokens; every token `jti` starts with
 * `<sid>.`.
 */
export class SessionStatements {
  /**
   * Inserts a session's row (`$1` jti, `$2` subject, `$3` expiry in s, `$4` state) and its
   * refresh token's (`$5`), with its access token's (`$6`, expiry `$7`, purpose `$8`) when
   * `$9`. Returns the state as stored, so that tokens are signed from what a re-derivation
   * would read. New random keys: no cache can know them yet.
   */
  readonly start: Statement;

  /**
   * The rotation: one conditional UPDATE of the session row (`$1`, of subject `$2`) from
   * generation `$4` to the state patch `$5`. Concurrent rotations of one generation queue on
   * the row lock and re-check the condition on the winner's version, so exactly one matches;
   * the presented refresh token must still be stored unrevoked (a log-out may have revoked
   * it alone). Only if it rotated is the presented refresh token (`$3`) revoked and the successors inserted
   * (refresh `$7` expiring `$6`; access `$8` expiring `$9` of purpose `$10` when `$11`).
   * Returns the new state only if it rotated. Every row it writes is stamped for the revocation caches.
   */
  readonly rotate: Statement;

  /** Reads a session row (`$1`), live or not. */
  readonly read: Statement;

  /**
   * Revokes a live session (row `$1`) and every stored token of it (`jti` prefix `$2`); returns
   * its subject only if it revoked. The rows it flips are stamped for the revocation caches; the
   * caller forgets the subject here at once, whose log-out state
   * every cached answer about the session's tokens is kept under.
   */
  readonly end: Statement;

  /** The live sessions of subject `$1`, newest first. */
  readonly list: Statement;

  constructor(store: TokenStore) {
    const table = store.table;
    this.start = store.statement(
      'session_start',
      `
      WITH session AS (
        INSERT INTO ${table} (jti, subject, expires_at, purpose, extra_data)
        VALUES ($1, $2, to_timestamp($3::float8), '${SESSION_PURPOSE}', $4::jsonb)
        RETURNING extra_data
      ), tokens AS (
        INSERT INTO ${table} (jti, subject, expires_at, purpose)
        SELECT v.jti, $2, to_timestamp(v.exp), v.purpose
          FROM (VALUES ($5::text, $3::float8, '${REFRESH_PURPOSE}'), ($6::text, $7::float8, $8::text)) AS v (jti, exp, purpose)
         WHERE v.purpose = '${REFRESH_PURPOSE}' OR $9::boolean
        RETURNING 1
      )
      SELECT extra_data AS state FROM session`,
    );
    this.rotate = store.statement(
      'session_rotate',
      `
      WITH rotated AS (
        UPDATE ${table} AS t
           SET extra_data = t.extra_data || $5::jsonb, expires_at = GREATEST(t.expires_at, to_timestamp($6::float8)), updated_at = now(), ${store.changeStamp}
         WHERE t.jti = $1 AND t.subject = $2 AND t.purpose = '${SESSION_PURPOSE}' AND t.expires_at > now()
           AND t.extra_data->'generation' = to_jsonb($4::int)
           AND EXISTS (SELECT FROM ${table} AS r WHERE r.jti = $3 AND r.purpose = '${REFRESH_PURPOSE}')
        RETURNING t.extra_data
      ), spent AS (
        UPDATE ${table} SET purpose = '${REVOCATION_PURPOSE}', updated_at = now(), ${store.changeStamp}
         WHERE jti = $3 AND purpose = '${REFRESH_PURPOSE}' AND EXISTS (SELECT FROM rotated)
        RETURNING 1
      ), issued AS (
        INSERT INTO ${table} (jti, subject, expires_at, purpose)
        SELECT v.jti, $2, to_timestamp(v.exp), v.purpose
          FROM rotated, (VALUES ($7::text, $6::float8, '${REFRESH_PURPOSE}'), ($8::text, $9::float8, $10::text)) AS v (jti, exp, purpose)
         WHERE v.purpose = '${REFRESH_PURPOSE}' OR $11::boolean
        ON CONFLICT (jti) DO NOTHING
        RETURNING 1
      )
      SELECT extra_data AS state FROM rotated`,
    );
    this.read = store.statement(
      'session_read',
      `
      SELECT purpose, subject, extra_data AS state FROM ${table} WHERE jti = $1`,
    );
    this.end = store.statement(
      'session_end',
      `
      WITH ended AS (
        UPDATE ${table} SET purpose = '${REVOCATION_PURPOSE}', updated_at = now(), ${store.changeStamp}
         WHERE jti = $1 AND purpose = '${SESSION_PURPOSE}'
        RETURNING subject
      ), tokens AS (
        UPDATE ${table} SET purpose = '${REVOCATION_PURPOSE}', updated_at = now(), ${store.changeStamp}
         WHERE subject = (SELECT subject FROM ended) AND starts_with(jti, $2::text) AND purpose <> '${REVOCATION_PURPOSE}'
        RETURNING 1
      )
      SELECT subject FROM ended`,
    );
    this.list = store.statement(
      'session_list',
      `
      SELECT substr(jti, ${SESSION_JTI_PREFIX.length + 1}) AS sid, extra_data AS state, expires_at
        FROM ${table}
       WHERE subject = $1 AND purpose = '${SESSION_PURPOSE}' AND expires_at > now()
       ORDER BY created_at DESC, jti`,
    );
  }
}
