import type { INestApplication } from '@nestjs/common';
import type { Pool, PoolClient } from 'pg';
import { TokenResourceUnavailableError, TokenService } from '../lib/index.js';
import { preparedStatementRuns } from './support/prepared-statements.js';
import { createTestDatabase, type TestDatabase } from './support/test-database.js';
import { createTokenApp, dataSourceOf } from './support/token-app.js';

/**
 * A revoked-check that times out while waiting for a pooled connection must not run on the
 * database later, when a connection frees up: its caller has its answer, and under
 * saturation the stale checks would only delay the live ones.
 *
 * The pool has one connection, so every check runs on it; PostgreSQL counts the
 * executions of each prepared statement of a session (`pg_prepared_statements`), which
 * shows how many checks reached that connection.
 */

const STORE_TIMEOUT_MS = 200;
const CHECKS = 30;

let db: TestDatabase;
let app: INestApplication;
let tokens: TokenService;
let pool: Pool;

beforeAll(async () => {
  db = await createTestDatabase();
  app = await createTokenApp(db.url, {
    options: { storeTimeoutMs: STORE_TIMEOUT_MS, expunge: { enabled: false } },
    typeOrm: { extra: { max: 1 } },
  });
  tokens = app.get(TokenService);
  pool = (dataSourceOf(app).driver as unknown as { master: Pool }).master;
});

afterAll(async () => {
  await app?.close();
  await db?.drop();
});

/** How many times the pool's one connection has run the jtiRevoked statement. */
function jtiChecksRun(client: PoolClient): Promise<number> {
  return preparedStatementRuns(client, 'ntr_jti_revoked_');
}

it('checks that timed out waiting for a connection are never sent once one frees up', async () => {
  expect(await tokens.jtiRevoked('warm-up')).toBe(false);
  const held = await pool.connect();
  const before = await jtiChecksRun(held);
  expect(before).toBe(1);

  const checks = await Promise.allSettled(Array.from({ length: CHECKS }, (_, i) => tokens.jtiRevoked(`queued-${i}`)));
  expect(checks.every((check) => check.status === 'rejected' && check.reason instanceof TokenResourceUnavailableError)).toBe(true);
  held.release();

  // The pool hands out its connection in request order: this checkout comes after every queued check.
  const after = await pool.connect();
  try {
    expect(await jtiChecksRun(after)).toBe(before);
  } finally {
    after.release();
  }
  // The count does move for a check that is answered.
  expect(await tokens.jtiRevoked('answered')).toBe(false);
  const last = await pool.connect();
  try {
    expect(await jtiChecksRun(last)).toBe(before + 1);
  } finally {
    last.release();
  }
});
