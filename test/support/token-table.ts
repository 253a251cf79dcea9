import { afterAll, afterEach, beforeAll, jest } from '@jest/globals';
import type { INestApplication } from '@nestjs/common';
import pg from 'pg';
import { createTestDatabase, type TestDatabase } from './test-database.js';
import { createTokenApp } from './token-app.js';

/** What {@link useTokenTable} sets up; `db` and `admin` are there from `beforeAll` on. */
export interface TokenTable {
  db: TestDatabase;
  /** A plain `pg` client on the database, outside any application, to seed and inspect. */
  admin: pg.Client;
  /**
   * Applications to close: the first (it ran the migration) lives for the whole file, any
   * pushed after it are closed after each test.
   */
  apps: INestApplication[];
  /** `count(*)` of the `tokens` table, optionally `WHERE` an SQL condition. */
  countRows: (where?: string) => Promise<number>;
  /**
   * The advisory locks held in this test's database. `pg_locks` spans the whole cluster, and
   * other spec files (other databases) run their expungers at the same time.
   */
  advisoryLocks(): Promise<Array<{ pid: number; key: string }>>;
}

/** `pg_locks` rows of advisory locks granted in the current database, with the 64-bit key. */
export const ADVISORY_LOCKS_SQL = `
  SELECT pid, ((classid::bigint << 32) | objid::bigint)::text AS key FROM pg_locks
   WHERE locktype = 'advisory' AND granted AND database = (SELECT oid FROM pg_database WHERE datname = current_database())`;

/**
 * Registers the hooks of a spec file that works on the `tokens` table directly: a database
 * of its own, migrated by a first application (expunger off), and after each test mocks
 * restored, the test's applications closed and the table emptied, so that no test sees
 * another's rows or jobs.
 */
export function useTokenTable(): TokenTable {
  const table = { apps: [] as INestApplication[] } as TokenTable;
  table.countRows = async (where = 'true') => {
    const { rows } = await table.admin.query<{ n: number }>(`SELECT count(*)::int AS n FROM tokens WHERE ${where}`);
    return rows[0].n;
  };
  table.advisoryLocks = async () => (await table.admin.query<{ pid: number; key: string }>(ADVISORY_LOCKS_SQL)).rows;

  beforeAll(async () => {
    table.db = await createTestDatabase();
    table.apps.push(await createTokenApp(table.db.url, { options: { expunge: { enabled: false } } }));
    table.admin = new pg.Client({ connectionString: table.db.url });
    await table.admin.connect();
  });

  afterEach(async () => {
    jest.restoreAllMocks();
    await Promise.all(table.apps.splice(1).map((app) => app.close().catch(() => undefined)));
    await table.admin.query('TRUNCATE tokens');
  });

  afterAll(async () => {
    await Promise.all(table.apps.splice(0).map((app) => app.close().catch(() => undefined)));
    await table.admin?.end();
    await table.db?.drop();
  });

  return table;
}
