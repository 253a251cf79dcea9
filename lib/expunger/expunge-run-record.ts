import type { QueryRunner } from 'typeorm';
import { EXPUNGE_RECORD_JTI, EXPUNGE_RECORD_PURPOSE } from '../token-resource.internal-constants.js';
import type { Statement, TokenStore } from '../token.store.js';

/**
 * How long a run's lease lasts unless renewed. A run renews it between batches once a
 * third of it has passed; the lease of an instance that died mid-run lapses after this.
 */
export const EXPUNGE_LEASE_MS = 60_000;

/** What the run record says, read with the database's clock. */
export interface ExpungeRecordState {
  /** When a run last completed; `null` before the first. */
  completedAt: Date | null;
  /** Until when the run in progress holds the lease; `null` when none does. */
  leaseUntil: Date | null;
  /** The database's `now()` when this was read. */
  now: Date;
}

/**
 * The expunger's run record: one row of the token table itself (jti `EXPUNGE_RECORD_JTI`,
 * subject `''`), so that no migration is needed. Its `extraData` holds when a run last
 * completed (`completedAt`) and the lease of the run in progress (`holder`, `leaseUntil`).
 * The lease is taken by one atomic conditional upsert, so that of any number of instances,
 * through any pooler, one holds it; a session-level advisory lock would not survive a
 * transaction-mode pooler. The row expires a year after it was last taken, far beyond any
 * run, so the expunger never deletes it while in use.
 */
export class ExpungeRunRecord {
  /**
   * Takes the lease for `$2` when it is free (or lapsed) and, with `$4`, only when no run
   * completed at or after `$4`; returns a row only when it took it.
   */
  private readonly takeStatement: Statement;
  /** Extends the lease while `$2` still holds it; returns a row only then. */
  private readonly renewStatement: Statement;
  /** Frees the lease `$2` holds, and with `$3` records the run as completed now. */
  private readonly releaseStatement: Statement;
  private readonly readStatement: Statement;

  constructor(private readonly store: TokenStore) {
    const table = store.table;
    const leaseUntil = `now() + $3::int * interval '1 millisecond'`;
    this.takeStatement = store.statement(
      'expunge_take',
      `
      INSERT INTO ${table} AS r (jti, subject, expires_at, purpose, extra_data)
      VALUES ($1, '', now() + interval '1 year', '${EXPUNGE_RECORD_PURPOSE}',
              jsonb_build_object('holder', $2::text, 'leaseUntil', ${leaseUntil}))
      ON CONFLICT (jti) DO UPDATE
        SET extra_data = coalesce(r.extra_data, '{}'::jsonb) || EXCLUDED.extra_data,
            subject = '', purpose = EXCLUDED.purpose, expires_at = EXCLUDED.expires_at, updated_at = now()
        WHERE coalesce((r.extra_data->>'leaseUntil')::timestamptz, '-infinity') <= now()
          AND coalesce((r.extra_data->>'completedAt')::timestamptz, '-infinity') < coalesce($4::timestamptz, 'infinity')
      RETURNING 1 AS taken`,
    );
    this.renewStatement = store.statement(
      'expunge_renew',
      `
      UPDATE ${table} SET extra_data = extra_data || jsonb_build_object('leaseUntil', ${leaseUntil}), updated_at = now()
       WHERE jti = $1 AND extra_data->>'holder' = $2
      RETURNING 1 AS renewed`,
    );
    this.releaseStatement = store.statement(
      'expunge_release',
      `
      UPDATE ${table}
         SET extra_data = (extra_data - 'leaseUntil')
               || CASE WHEN $3::boolean THEN jsonb_build_object('completedAt', now(), 'deleted', $4::bigint) ELSE '{}'::jsonb END,
             updated_at = now()
       WHERE jti = $1 AND extra_data->>'holder' = $2`,
    );
    this.readStatement = store.statement(
      'expunge_read',
      `
      SELECT (extra_data->>'completedAt')::timestamptz AS "completedAt",
             (extra_data->>'leaseUntil')::timestamptz AS "leaseUntil", now() AS now
        FROM ${table} WHERE jti = $1`,
    );
  }

  /**
   * Takes the lease for `holder`, unless another run holds it or, given `unlessCompletedSince`,
   * a run completed at or after that moment.
   *
   * @returns whether `holder` now holds the lease.
   */
  async take(session: QueryRunner, holder: string, unlessCompletedSince?: Date): Promise<boolean> {
    const { rows } = await this.store.execute(
      this.takeStatement,
      [EXPUNGE_RECORD_JTI, holder, EXPUNGE_LEASE_MS, unlessCompletedSince ?? null],
      session.manager,
    );
    return rows.length > 0;
  }

  /** Extends `holder`'s lease by {@link EXPUNGE_LEASE_MS}; `false` when another run has taken it over. */
  async renew(session: QueryRunner, holder: string): Promise<boolean> {
    const { rows } = await this.store.execute(this.renewStatement, [EXPUNGE_RECORD_JTI, holder, EXPUNGE_LEASE_MS], session.manager);
    return rows.length > 0;
  }

  /** Frees `holder`'s lease and, when the run `completed`, records it with its count. */
  async release(session: QueryRunner, holder: string, completed: boolean, deleted: number): Promise<void> {
    await this.store.execute(this.releaseStatement, [EXPUNGE_RECORD_JTI, holder, completed, deleted], session.manager);
  }

  /** The record's state; `undefined` before the first run. */
  async read(session: QueryRunner): Promise<ExpungeRecordState | undefined> {
    const { rows } = await this.store.execute<ExpungeRecordState>(this.readStatement, [EXPUNGE_RECORD_JTI], session.manager);
    return rows[0];
  }
}
