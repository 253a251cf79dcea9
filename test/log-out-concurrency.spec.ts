import { randomUUID } from 'node:crypto';
import type { INestApplication } from '@nestjs/common';
import type { Pool } from 'pg';
import type { DataSource } from 'typeorm';
import {
  LogOutEverywhereService,
  REVOCATION_PURPOSE,
  TokenAlreadyRevokedError,
  TokenService,
  type LogOutEverywhereOptions,
} from '../lib/index.js';
import { TokenCodec } from '../lib/jwt/token-codec.js';
import type { LogOutLevel } from '../lib/log-out-everywhere/log-out-marker.js';
import { LOG_OUT_EVERYWHERE_PURPOSE } from '../lib/token-resource.internal-constants.js';
import { clockPast } from './support/clock.js';
import { createRoomyDatabase, type RoomyDatabase } from './support/roomy-server.js';
import { sleep } from './support/jwt-fixtures.js';
import { createTokenApp, dataSourceOf } from './support/token-app.js';
import { waitFor } from './support/wait-for.js';

/**
 * "Concurrent log-out-everywhere and revoke on the same tokens: no errors, every token
 * ends revoked exactly once." Every call runs on a connection of its own, released by
 * one gate; the only rejections allowed are the TokenAlreadyRevokedError of a revoke
 * that lost, and the tokens revoked by the winners add up to exactly the tokens there are.
 */

const TOKENS = 150;
const LOG_OUTS = 6;
const CONNECTIONS = 80;

let db: RoomyDatabase;
let app: INestApplication;
let tokens: TokenService;
let logOut: LogOutEverywhereService;
let dataSource: DataSource;
/** Every round's outcome, to check below that the harness really interleaved the two. */
const totals: Outcome[] = [];

beforeAll(async () => {
  db = await createRoomyDatabase(CONNECTIONS + 10);
  app = await createTokenApp(db.url, {
    options: { storeAllTokens: true, expunge: { enabled: false } },
    typeOrm: { extra: { max: CONNECTIONS } },
  });
  tokens = app.get(TokenService);
  logOut = app.get(LogOutEverywhereService);
  dataSource = dataSourceOf(app);
  // Open the connections up front, so that connecting does not spread the race out.
  const pool = (dataSource.driver as unknown as { master: Pool }).master;
  const clients = await Promise.all(Array.from({ length: CONNECTIONS }, () => pool.connect()));
  clients.forEach((client) => client.release());
}, 120_000);

afterAll(async () => {
  await app?.close();
  await db?.close();
}, 60_000);

interface Outcome {
  revokedByLogOuts: number;
  revokesWon: number;
  revokesLost: number;
  unexpected: unknown[];
}

async function race(issued: Array<{ token: string }>, logOutCall: (i: number) => Promise<number>): Promise<Outcome> {
  let open!: () => void;
  const gate = new Promise<void>((resolve) => {
    open = resolve;
  });
  // The log-outs start staggered over a few milliseconds, so that they land in the
  // middle of the revokes rather than all before them.
  const logOuts = Array.from({ length: LOG_OUTS }, (_, i) => gate.then(() => sleep(2 * i)).then(() => logOutCall(i)));
  // Every token is revoked twice, so revoke races revoke as well as the log-outs. The
  // revokes start spread over the same milliseconds: all at once, they could all be done
  // before the first log-out starts.
  const revokes = issued.flatMap(({ token }, i) =>
    [0, 1].map(() => gate.then(() => sleep(i % (2 * LOG_OUTS))).then(() => tokens.revoke(token))),
  );
  open();
  const logOutResults = await Promise.allSettled(logOuts);
  const revokeResults = await Promise.allSettled(revokes);
  const outcome: Outcome = { revokedByLogOuts: 0, revokesWon: 0, revokesLost: 0, unexpected: [] };
  for (const result of logOutResults) {
    if (result.status === 'fulfilled') outcome.revokedByLogOuts += result.value;
    else outcome.unexpected.push(result.reason);
  }
  for (const result of revokeResults) {
    if (result.status === 'fulfilled') outcome.revokesWon += 1;
    else if (result.reason instanceof TokenAlreadyRevokedError) outcome.revokesLost += 1;
    else outcome.unexpected.push(result.reason);
  }
  return outcome;
}

async function expectEveryTokenRevokedOnce(subject: string, issued: Array<{ jti: string; token: string }>): Promise<void> {
  const rows: Array<{ jti: string; purpose: string }> = await dataSource.query('SELECT jti, purpose FROM tokens WHERE subject = $1', [
    subject,
  ]);
  // One row per token (plus the marker), each a revocation.
  expect(rows).toHaveLength(TOKENS + 1);
  const byJti = new Map(rows.map((row) => [row.jti, row.purpose]));
  for (const { jti } of issued) expect(byJti.get(jti)).toBe(REVOCATION_PURPOSE);
  expect(rows.filter((row) => row.purpose === LOG_OUT_EVERYWHERE_PURPOSE)).toHaveLength(1);
  for (const { token } of issued.slice(0, 10)) expect(await tokens.tokenRevoked(token)).toBe(true);
}

async function issueMany(subject: string): Promise<Array<{ jti: string; token: string }>> {
  const issued = [];
  for (let i = 0; i < TOKENS; i += 1) issued.push(await tokens.issueToken({ subject, purpose: i % 3 === 0 ? 'remember_me' : 'user' }));
  return issued;
}

it.each([1, 2, 3])(
  'log-outs in autocommit racing revokes (round %i): each token revoked exactly once, no errors',
  async (round) => {
    const subject = `racer-autocommit-${round}`;
    const issued = await issueMany(subject);
    const outcome = await race(issued, () => logOut.logOutEverywhere(subject));
    totals.push(outcome);
    expect(outcome.unexpected).toEqual([]);
    // Exactly one winner per token: a revoke, or one of the log-outs.
    expect(outcome.revokedByLogOuts + outcome.revokesWon).toBe(TOKENS);
    expect(outcome.revokesWon + outcome.revokesLost).toBe(2 * TOKENS);
    await expectEveryTokenRevokedOnce(subject, issued);
  },
  60_000,
);

it.each([1, 2, 3])(
  "log-outs inside callers' transactions racing revokes (round %i)",
  async (round) => {
    const subject = `racer-transaction-${round}`;
    const issued = await issueMany(subject);
    const outcome = await race(issued, (i) =>
      dataSource.transaction(async (manager) => {
        // Half the callers hold a lock of their own first, like a password change would.
        if (i % 2 === 0) await manager.query('SELECT pg_advisory_xact_lock(hashtext($1))', [`other-work-${i}`]);
        return logOut.logOutEverywhere(subject, { manager });
      }),
    );
    totals.push(outcome);
    expect(outcome.unexpected).toEqual([]);
    expect(outcome.revokedByLogOuts + outcome.revokesWon).toBe(TOKENS);
    await expectEveryTokenRevokedOnce(subject, issued);
  },
  60_000,
);

it('"log out my other devices" from several devices at once: together they revoke every token', async () => {
  const subject = 'racer-except';
  const issued = await issueMany(subject);
  let open!: () => void;
  const gate = new Promise<void>((resolve) => {
    open = resolve;
  });
  const calls = issued.slice(0, LOG_OUTS).map(({ jti }) => gate.then(() => logOut.logOutEverywhere(subject, { exceptJti: jti })));
  open();
  const counts = await Promise.all(calls);
  // The log-outs queue on the marker row: the first revokes all but its own device, each
  // later one the device the one before it kept. Disjoint sets that cover every token.
  expect(counts.reduce((a, b) => a + b, 0)).toBe(TOKENS);
  await expectEveryTokenRevokedOnce(subject, issued);
  // The marker excepts the last caller's token, but remembers that earlier log-outs
  // revoked it, so it does not come back to life there either.
  const { levels } = (await dataSource.query('SELECT extra_data FROM tokens WHERE jti = $1', [`log-out-everywhere:${subject}`]))[0]
    .extra_data;
  // One purpose filter, so one level.
  expect(Object.keys(levels)).toHaveLength(1);
  const marker: LogOutLevel = Object.values<LogOutLevel>(levels)[0];
  expect(issued.slice(0, LOG_OUTS).map(({ jti }) => jti)).toContain(marker.exceptJti);
  expect(marker.exceptRevokedUpTo).toBeGreaterThan(0);
  expect(marker.exceptRevokedUpTo).toBeLessThanOrEqual(marker.at);
}, 60_000);

it('concurrent log-outs with different purpose filters: each filter keeps its own level, and each level revokes what it covers', async () => {
  const subject = 'racer-levels';
  const codec = app.get(TokenCodec);
  /** A token of the subject that is not stored yet, issued now. */
  const unstoredToken = async () => {
    const iat = Date.now() / 1000;
    return codec.sign({ sub: subject, jti: randomUUID(), iat, exp: Math.floor(iat) + 3600 });
  };
  const stored = await Promise.all(
    ['a', 'b', 'user', 'other'].flatMap((purpose) => [1, 2, 3].map(() => tokens.issueToken({ subject, purpose }))),
  );
  const kept = await tokens.issueToken({ subject });
  // Three filters, disjoint on the purposes 'a', 'b' and everything else: a token stored
  // later as 'a' can only be revoked by the first level, and so on.
  const filters: LogOutEverywhereOptions[] = [
    { includePurposes: ['a'], revokeUnstored: true },
    { includePurposes: ['b'], excludePurposes: [], revokeUnstored: true },
    { excludePurposes: ['b', 'revocation', 'a'], exceptJti: kept.jti },
  ];
  const probes = { a: await unstoredToken(), b: await unstoredToken(), user: await unstoredToken(), other: await unstoredToken() };

  // Another transaction inserts the subject's marker row and keeps it uncommitted: every
  // log-out's INSERT ... ON CONFLICT then waits for it inside PostgreSQL, so the calls pile up
  // there, each on a backend of its own, and all start together when it rolls back.
  const blocker = dataSource.createQueryRunner();
  await blocker.connect();
  let counts: number[];
  let openedAt: number;
  try {
    await blocker.startTransaction();
    const [{ pid }] = await blocker.query('SELECT pg_backend_pid() AS pid');
    await blocker.query(`INSERT INTO tokens (jti, subject, expires_at, purpose) VALUES ($1, $2, now() + interval '1 day', 'placeholder')`, [
      `log-out-everywhere:${subject}`,
      subject,
    ]);
    openedAt = Date.now();
    const calls = Array.from({ length: 8 * filters.length }, (_, i) => {
      const options = filters[i % filters.length];
      // Half in autocommit, half inside a caller's transaction.
      return i % 2 === 0
        ? logOut.logOutEverywhere(subject, options)
        : dataSource.transaction((manager) => logOut.logOutEverywhere(subject, { ...options, manager }));
    });
    const waiting = async () =>
      (await dataSource.query('SELECT count(*)::int AS n FROM pg_stat_activity WHERE $1 = ANY (pg_blocking_pids(pid))', [pid]))[0]
        .n as number;
    // Every call is in flight in the database at once, not merely pending in the pool.
    await waitFor(async () => (await waiting()) === calls.length, 10_000, `all ${calls.length} log-outs to wait in PostgreSQL`);
    await blocker.rollbackTransaction();
    counts = await Promise.all(calls);
  } finally {
    if (blocker.isTransactionActive) await blocker.rollbackTransaction();
    await blocker.release();
  }
  const closedAt = Date.now();

  // Every stored token the filters cover was revoked exactly once, the kept one not at all.
  expect(counts.reduce((sum, count) => sum + count, 0)).toBe(stored.length);
  const rows: Array<{ jti: string; purpose: string; extra_data: { levels: Record<string, LogOutLevel> } | null }> = await dataSource.query(
    'SELECT jti, purpose, extra_data FROM tokens WHERE subject = $1',
    [subject],
  );
  const byJti = new Map(rows.map((row) => [row.jti, row.purpose]));
  for (const { jti } of stored) expect(byJti.get(jti)).toBe(REVOCATION_PURPOSE);
  expect(byJti.get(kept.jti)).toBe('user');

  // Tokens issued before the race and stored only now: each revoked by the one level that covers its purpose.
  for (const [purpose, token] of Object.entries(probes)) {
    await tokens.storeToken({ token, purpose });
    expect({ purpose, revoked: await tokens.tokenRevoked(token) }).toEqual({ purpose, revoked: true });
  }
  expect(await tokens.tokenRevoked(kept.token)).toBe(false);

  // One level per filter, none lost to a concurrent log-out with another filter.
  const markers = rows.filter((row) => row.purpose === LOG_OUT_EVERYWHERE_PURPOSE);
  expect(markers).toHaveLength(1);
  const levels = Object.values(markers[0].extra_data!.levels);
  expect(levels.map(({ includePurposes, excludePurposes }) => ({ includePurposes, excludePurposes }))).toEqual(
    expect.arrayContaining([
      { includePurposes: ['a'], excludePurposes: ['revocation'] },
      { includePurposes: ['b'], excludePurposes: [] },
      { includePurposes: undefined, excludePurposes: ['a', 'b', 'revocation'] },
    ]),
  );
  expect(levels).toHaveLength(3);
  for (const level of levels) {
    expect(level.at).toBeGreaterThanOrEqual(openedAt);
    expect(level.at).toBeLessThanOrEqual(closedAt);
  }
  expect(levels.find((level) => level.exceptJti !== undefined)).toMatchObject({ exceptJti: kept.jti, exceptRevokedUpTo: 0 });

  await clockPast(Math.max(...levels.map((level) => level.at)));
  expect(await tokens.tokenRevoked((await tokens.issueToken({ subject })).token)).toBe(false);
}, 60_000);

it('control: across the rounds, both log-outs and revokes won tokens (the calls really interleaved)', () => {
  expect(totals).toHaveLength(6);
  expect(totals.reduce((sum, o) => sum + o.revokesWon, 0)).toBeGreaterThan(0);
  expect(totals.reduce((sum, o) => sum + o.revokedByLogOuts, 0)).toBeGreaterThan(0);
});
