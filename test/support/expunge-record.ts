import type pg from 'pg';
import { EXPUNGE_RECORD_JTI, EXPUNGE_RECORD_PURPOSE } from '../../lib/token-resource.internal-constants.js';

/** The expunger's run record, as the tests read it. */
export interface RunRecord {
  completedAt: Date | null;
  leaseUntil: Date | null;
  holder: string | null;
  /** The rows the last completed run deleted. */
  deleted: number | null;
  expiresAt: Date;
}

/** The run record in `table`, or `undefined` when no run has taken a lease there yet. */
export async function readRunRecord(admin: pg.Client, table = 'tokens'): Promise<RunRecord | undefined> {
  const { rows } = await admin.query<RunRecord>(
    `SELECT (extra_data->>'completedAt')::timestamptz AS "completedAt", (extra_data->>'leaseUntil')::timestamptz AS "leaseUntil",
            extra_data->>'holder' AS holder, (extra_data->>'deleted')::int AS deleted, expires_at AS "expiresAt"
       FROM ${table} WHERE jti = $1`,
    [EXPUNGE_RECORD_JTI],
  );
  return rows[0];
}

/**
 * Writes the run record as another instance would have left it: a run completed at
 * `completedAt`, and a lease held by `holder` until `leaseUntil` (say, of a crashed one).
 */
export async function writeRunRecord(
  admin: pg.Client,
  state: { completedAt?: Date; leaseUntil?: Date; holder?: string },
  table = 'tokens',
): Promise<void> {
  const extraData = {
    holder: state.holder ?? 'another instance',
    completedAt: state.completedAt?.toISOString(),
    leaseUntil: state.leaseUntil?.toISOString(),
  };
  await admin.query(
    `INSERT INTO ${table} (jti, subject, expires_at, purpose, extra_data) VALUES ($1, '', now() + interval '1 year', $2, $3)
     ON CONFLICT (jti) DO UPDATE SET extra_data = EXCLUDED.extra_data`,
    [EXPUNGE_RECORD_JTI, EXPUNGE_RECORD_PURPOSE, JSON.stringify(extraData)],
  );
}
