import type { INestApplication } from '@nestjs/common';
import type { Pool } from 'pg';
import type { DataSource } from 'typeorm';
import {
  LOG_OUT_EVERYWHERE_PURPOSE,
  LogOutEverywhereService,
  REVOCATION_PURPOSE,
  TokenAlreadyRevokedError,
  TokenService,
} from '../lib/index.js';
import { createRoomyDatabase, type RoomyDatabase } from './support/roomy-server.js';
import { sleep } from './support/jwt-fixtures.js';
import { createTokenApp, dataSourceOf } from './support/token-app.js';

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
  const gate = new Promise<void>((resolve) => { open = resolve; });
  // The log-outs start staggered over a few milliseconds, so that they land in the
  // middle of the revokes rather than all before them.
  const logOuts = Array.from({ length: LOG_OUTS }, (_, i) => gate.then(() => sleep(2 * i)).then(() => logOutCall(i)));
  // Every token is revoked twice, so revoke races revoke as well as the log-outs.
  const revokes = issued.flatMap(({ token }) => [0, 1].map(() => gate.then(() => tokens.revoke(token))));
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
  const rows: Array<{ jti: string; purpose: string }> = await dataSource.query('SELECT jti, purpose FROM tokens WHERE subject = $1', [subject]);
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

it.each([1, 2, 3])('log-outs in autocommit racing revokes (round %i): each token revoked exactly once, no errors', async (round) => {
  const subject = `racer-autocommit-${round}`;
  const issued = await issueMany(subject);
  const outcome = await race(issued, () => logOut.logOutEverywhere(subject));
  totals.push(outcome);
  expect(outcome.unexpected).toEqual([]);
  // Exactly one winner per token: a revoke, or one of the log-outs.
  expect(outcome.revokedByLogOuts + outcome.revokesWon).toBe(TOKENS);
  expect(outcome.revokesWon + outcome.revokesLost).toBe(2 * TOKENS);
  await expectEveryTokenRevokedOnce(subject, issued);
}, 60_000);

it.each([1, 2, 3])('log-outs inside callers\' transactions racing revokes (round %i)', async (round) => {
  const subject = `racer-transaction-${round}`;
  const issued = await issueMany(subject);
  const outcome = await race(issued, (i) => dataSource.transaction(async (manager) => {
    // Half the callers hold a lock of their own first, like a password change would.
    if (i % 2 === 0) await manager.query('SELECT pg_advisory_xact_lock(hashtext($1))', [`other-work-${i}`]);
    return logOut.logOutEverywhere(subject, { manager });
  }));
  totals.push(outcome);
  expect(outcome.unexpected).toEqual([]);
  expect(outcome.revokedByLogOuts + outcome.revokesWon).toBe(TOKENS);
  await expectEveryTokenRevokedOnce(subject, issued);
}, 60_000);

it('"log out my other devices" from several devices at once: together they revoke every token', async () => {
  const subject = 'racer-except';
  const issued = await issueMany(subject);
  let open!: () => void;
  const gate = new Promise<void>((resolve) => { open = resolve; });
  const calls = issued.slice(0, LOG_OUTS).map(({ jti }) => gate.then(() => logOut.logOutEverywhere(subject, { exceptJti: jti })));
  open();
  const counts = await Promise.all(calls);
  // The log-outs queue on the marker row: the first revokes all but its own device, each
  // later one the device the one before it kept. Disjoint sets that cover every token.
  expect(counts.reduce((a, b) => a + b, 0)).toBe(TOKENS);
  await expectEveryTokenRevokedOnce(subject, issued);
  // The marker excepts the last caller's token, but remembers that earlier log-outs
  // revoked it, so it does not come back to life there either.
  const marker = (await dataSource.query('SELECT extra_data FROM tokens WHERE jti = $1', [`log-out-everywhere:${subject}`]))[0].extra_data;
  expect(issued.slice(0, LOG_OUTS).map(({ jti }) => jti)).toContain(marker.exceptJti);
  expect(marker.exceptRevokedUpTo).toBeGreaterThan(0);
  expect(marker.exceptRevokedUpTo).toBeLessThanOrEqual(marker.at);
}, 60_000);

it('control: across the rounds, both log-outs and revokes won tokens (the calls really interleaved)', () => {
  expect(totals).toHaveLength(6);
  expect(totals.reduce((sum, o) => sum + o.revokesWon, 0)).toBeGreaterThan(0);
  expect(totals.reduce((sum, o) => sum + o.revokedByLogOuts, 0)).toBeGreaterThan(0);
});
