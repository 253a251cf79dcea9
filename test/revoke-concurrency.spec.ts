import type { INestApplication } from '@nestjs/common';
import type { Pool } from 'pg';
import type { DataSource, EntityManager, QueryRunner } from 'typeorm';
import { REVOCATION_PURPOSE, TokenAlreadyRevokedError, TokenService } from '../lib/index.js';
import { TokenCodec } from '../lib/jwt/token-codec.js';
import { raceCalls, tally, type Tally } from './support/race.js';
import { createRoomyDatabase, type RoomyDatabase } from './support/roomy-server.js';
import { createTokenApp, dataSourceOf } from './support/token-app.js';

/**
 * "revoke is atomic: however many callers revoke one token at once, exactly one resolves
 * and every other rejects with TokenAlreadyRevokedError; inside or outside a caller's
 * transaction." Every caller runs on a connection of its own, all released at once.
 *
 * Each scenario also runs a naive read-then-write revoke through the same harness and
 * expects it to let several callers "succeed": proof that the harness really races, so
 * that the library passing is not an accident of serialised callers.
 */

const CALLERS = 100;
const ROUNDS = 3;

let db: RoomyDatabase;
let app: INestApplication;
let tokens: TokenService;
let dataSource: DataSource;
let pool: Pool;

/** Runs `CALLERS` calls released by one gate, each on its own pooled connection. */
function raceOnPool(call: (i: number) => Promise<void>): Promise<Tally> {
  return raceCalls(CALLERS, call);
}

/**
 * Runs `work` in the open transaction of `runner`, commits it, or rolls it back when `work`
 * threw (rethrowing), and releases the runner either way, as an application would.
 */
async function finishTransaction(runner: QueryRunner, work: (manager: EntityManager) => Promise<void>): Promise<void> {
  try {
    await work(runner.manager);
    await runner.commitTransaction();
  } catch (error) {
    await runner.rollbackTransaction();
    throw error;
  } finally {
    await runner.release();
  }
}

/**
 * Runs `CALLERS` calls, each inside its own transaction on its own QueryRunner, all
 * started before the gate opens. A caller commits when its call resolved and rolls
 * back when it threw, as an application would.
 */
async function raceInTransactions(call: (i: number, manager: EntityManager) => Promise<void>): Promise<Tally> {
  const runners: QueryRunner[] = [];
  for (let i = 0; i < CALLERS; i += 1) {
    const runner = dataSource.createQueryRunner();
    await runner.connect();
    await runner.startTransaction();
    runners.push(runner);
  }
  // Every transaction holds a connection of its own.
  const pids = await Promise.all(runners.map(async (runner) => (await runner.query('SELECT pg_backend_pid() AS pid'))[0].pid));
  expect(new Set(pids).size).toBe(CALLERS);
  let open!: () => void;
  const gate = new Promise<void>((resolve) => {
    open = resolve;
  });
  const calls = runners.map((runner, i) => gate.then(() => finishTransaction(runner, (manager) => call(i, manager))));
  open();
  return tally(await Promise.allSettled(calls));
}

/** Opens `CALLERS` pool connections up front, so the race is not spread out by connecting. */
async function warmPool(): Promise<void> {
  const clients = await Promise.all(Array.from({ length: CALLERS }, () => pool.connect()));
  const pids = await Promise.all(clients.map(async (client) => (await client.query('SELECT pg_backend_pid() AS pid')).rows[0].pid));
  clients.forEach((client) => client.release());
  expect(new Set(pids).size).toBe(CALLERS);
}

/** What a naive implementation does: read whether it is revoked, then write. */
async function naiveRevoke(token: string, run: (sql: string, values: unknown[]) => Promise<{ rows: unknown[] }>): Promise<void> {
  const claims = await app.get(TokenCodec).verify(token, true);
  const { rows } = await run(`SELECT 1 FROM tokens WHERE jti = $1 AND purpose = '${REVOCATION_PURPOSE}'`, [claims.jti]);
  if (rows.length > 0) throw new TokenAlreadyRevokedError('already revoked');
  await run(
    `INSERT INTO tokens (jti, subject, expires_at, purpose) VALUES ($1, $2, $3, '${REVOCATION_PURPOSE}')
     ON CONFLICT (jti) DO UPDATE SET purpose = '${REVOCATION_PURPOSE}'`,
    [claims.jti, claims.sub, new Date(claims.exp! * 1000)],
  );
}

const viaPool = (sql: string, values: unknown[]) => pool.query(sql, values);
const viaManager = (manager: EntityManager) => async (sql: string, values: unknown[]) => ({
  rows: await manager.query<unknown[]>(sql, values),
});

async function expectSingleRevocationRow(jti: string): Promise<void> {
  const rows = await dataSource.query('SELECT purpose FROM tokens WHERE jti = $1', [jti]);
  expect(rows).toEqual([{ purpose: REVOCATION_PURPOSE }]);
}

beforeAll(async () => {
  db = await createRoomyDatabase(CALLERS + 20);
  app = await createTokenApp(db.url, {
    options: { expunge: { enabled: false } },
    typeOrm: { extra: { max: CALLERS + 10 } },
  });
  tokens = app.get(TokenService);
  dataSource = dataSourceOf(app);
  pool = (dataSource.driver as unknown as { master: Pool }).master;
  await warmPool();
}, 120_000);

afterAll(async () => {
  await app?.close();
  await db?.close();
}, 60_000);

describe.each([
  ['without a stored row', false],
  ['with a stored user row', true],
])('100 concurrent revokes of one token %s', (_label, stored) => {
  async function freshToken(): Promise<{ token: string; jti: string }> {
    const { token, jti } = await tokens.issueToken({ subject: 'racer' });
    if (stored) await tokens.storeToken({ token, purpose: 'user' });
    return { token, jti };
  }

  it('outside any transaction: exactly 1 resolves, 99 reject with TokenAlreadyRevokedError', async () => {
    for (let round = 0; round < ROUNDS; round += 1) {
      const { token, jti } = await freshToken();
      const result = await raceOnPool(() => tokens.revoke(token));
      expect(result.other).toEqual([]);
      expect(result).toEqual({ succeeded: 1, alreadyRevoked: CALLERS - 1, other: [] });
      await expectSingleRevocationRow(jti);
      expect(await tokens.tokenRevoked(token)).toBe(true);
    }
  });

  it("inside callers' transactions (opts.manager): exactly 1 resolves, 99 reject", async () => {
    for (let round = 0; round < ROUNDS; round += 1) {
      const { token, jti } = await freshToken();
      const result = await raceInTransactions((_i, manager) => tokens.revoke(token, { manager }));
      expect(result.other).toEqual([]);
      expect(result).toEqual({ succeeded: 1, alreadyRevoked: CALLERS - 1, other: [] });
      await expectSingleRevocationRow(jti);
    }
  });

  it('revoke and revokeJti racing on one jti: exactly 1 resolves', async () => {
    const { token, jti } = await freshToken();
    const result = await raceOnPool((i) => (i % 2 === 0 ? tokens.revoke(token) : tokens.revokeJti(jti, 'racer')));
    expect(result).toEqual({ succeeded: 1, alreadyRevoked: CALLERS - 1, other: [] });
    await expectSingleRevocationRow(jti);
  });

  it('control: a naive read-then-write revoke lets several callers through this same harness', async () => {
    const { token } = await freshToken();
    const onPool = await raceOnPool(() => naiveRevoke(token, viaPool));
    expect(onPool.other).toEqual([]);
    expect(onPool.succeeded).toBeGreaterThan(1);

    const second = await freshToken();
    const inTransactions = await raceInTransactions((_i, manager) => naiveRevoke(second.token, viaManager(manager)));
    expect(inTransactions.other).toEqual([]);
    expect(inTransactions.succeeded).toBeGreaterThan(1);
  });
});

describe('callers at REPEATABLE READ or SERIALIZABLE', () => {
  it.each(['REPEATABLE READ', 'SERIALIZABLE'] as const)(
    '%s: still exactly one succeeds; losers get TokenAlreadyRevokedError or a serialization failure to retry',
    async (level) => {
      const { token, jti } = await tokens.issueToken({ subject: 'racer' });
      const runners: QueryRunner[] = [];
      for (let i = 0; i < 20; i += 1) {
        const runner = dataSource.createQueryRunner();
        await runner.connect();
        await runner.startTransaction(level);
        // Take the snapshot now, as a transaction that did some work first would.
        await runner.query('SELECT 1');
        runners.push(runner);
      }
      const results = await Promise.allSettled(
        runners.map((runner) => finishTransaction(runner, (manager) => tokens.revoke(token, { manager }))),
      );
      const serializationFailures = results.filter(
        (r) => r.status === 'rejected' && (r.reason as { driverError?: { code?: string } }).driverError?.code === '40001',
      ).length;
      const counts = tally(results);
      expect(counts.succeeded).toBe(1);
      expect(counts.alreadyRevoked + serializationFailures).toBe(19);
      expect(counts.other.length).toBe(serializationFailures);
      await expectSingleRevocationRow(jti);
      // A retry of a failed transaction sees the committed revocation.
      await expect(dataSource.transaction(level, (manager) => tokens.revoke(token, { manager }))).rejects.toBeInstanceOf(
        TokenAlreadyRevokedError,
      );
    },
  );
});

describe('a rolled-back revocation does not count', () => {
  it('when the first revoker rolls back, exactly one of the waiting callers takes over', async () => {
    const { token, jti } = await tokens.issueToken({ subject: 'racer' });
    const first = dataSource.createQueryRunner();
    await first.connect();
    await first.startTransaction();
    await tokens.revoke(token, { manager: first.manager });
    // These block on the first transaction's uncommitted row.
    const waiting = Array.from({ length: 10 }, async () => {
      const runner = dataSource.createQueryRunner();
      await runner.connect();
      await runner.startTransaction();
      await finishTransaction(runner, (manager) => tokens.revoke(token, { manager }));
    });
    await new Promise((resolve) => setTimeout(resolve, 200));
    await first.rollbackTransaction();
    await first.release();
    expect(tally(await Promise.allSettled(waiting))).toEqual({ succeeded: 1, alreadyRevoked: 9, other: [] });
    await expectSingleRevocationRow(jti);
  });
});
