import { randomUUID } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import type { INestApplication } from '@nestjs/common';
import request from 'supertest';
import { DataSource } from 'typeorm';
import {
  ExpungerService,
  LogOutEverywhereService,
  RefreshTokenReusedError,
  RevocationCache,
  SessionService,
  TokenService,
} from '../lib/index.js';
import { createGuardApp } from './support/guard-app.js';
import { GuardedSubjectController } from './support/guarded-controller.js';
import { signToken, uniqueSubject } from './support/jwt-fixtures.js';
import { recordMetrics, type RecordedMetrics } from './support/metrics-reader.js';
import { proxyDatabase, type TcpProxy } from './support/tcp-proxy.js';
import { createTestDatabase, type TestDatabase } from './support/test-database.js';
import { waitFor } from './support/wait-for.js';

const CHECKS = 'token_resource.checks';
const CHECK_DURATION = 'token_resource.check.duration';
const REVOCATIONS = 'token_resource.revocations';
const CACHE_LOOKUPS = 'token_resource.cache.lookups';

let db: TestDatabase;
let proxy: TcpProxy;
let recorded: RecordedMetrics;
/** Every token stored, presence required, behind a TCP proxy that can cut the database off. */
let app: INestApplication;
/** The revocation cache on. */
let cached: INestApplication;

beforeAll(async () => {
  db = await createTestDatabase();
  recorded = recordMetrics();
  let url: string;
  ({ proxy, url } = await proxyDatabase(db.url));
  app = await createGuardApp(url, {
    platform: 'express',
    options: { storeAllTokens: true, requireTokenPresenceForAuthentication: true, storeTimeoutMs: 300 },
    controllers: [GuardedSubjectController],
  });
  cached = await createGuardApp(db.url, {
    platform: 'express',
    options: { revocationCache: { enabled: true } },
    controllers: [GuardedSubjectController],
  });
});

afterAll(async () => {
  await app?.close();
  await cached?.close();
  await recorded?.stop();
  await proxy?.close();
  await db?.drop();
});

/** How much `read()` grew while `work` ran. */
async function growth(read: () => Promise<number>, work: () => Promise<unknown>): Promise<number> {
  const before = await read();
  await work();
  return (await read()) - before;
}

function get(target: INestApplication, token?: string) {
  const call = request(target.getHttpServer()).get('/guarded').timeout(5000);
  return token === undefined ? call : call.set('Authorization', `Bearer ${token}`);
}

describe('token_resource.checks and token_resource.check.duration (RevokedTokenGuard)', () => {
  /** Expects one request to be answered `status` and counted once, as `outcome` only. */
  async function expectCounted(outcome: string, status: number, send: () => Promise<{ status: number }>): Promise<void> {
    const outcomes = ['admitted', 'revoked', 'not_recognised', 'invalid', 'unavailable'];
    const before = await Promise.all(outcomes.map((o) => recorded.count(CHECKS, { outcome: o })));
    const timedBefore = await recorded.histogram(CHECK_DURATION);
    expect((await send()).status).toBe(status);
    const after = await Promise.all(outcomes.map((o) => recorded.count(CHECKS, { outcome: o })));
    expect(Object.fromEntries(outcomes.map((o, i) => [o, after[i] - before[i]]))).toEqual(
      Object.fromEntries(outcomes.map((o) => [o, o === outcome ? 1 : 0])),
    );
    const timed = await recorded.histogram(CHECK_DURATION);
    expect(timed.count - timedBefore.count).toBe(1);
    expect(timed.sum).toBeGreaterThan(timedBefore.sum);
    // One series for every outcome: the outcome is the counter's attribute, not the histogram's.
    expect(timed.series).toBe(1);
  }

  it('counts an admitted token', async () => {
    const { token } = await app.get(TokenService).issueToken({ subject: uniqueSubject() });
    await expectCounted('admitted', 200, () => get(app, token));
  });

  it('counts a revoked token', async () => {
    const tokens = app.get(TokenService);
    const { token } = await tokens.issueToken({ subject: uniqueSubject() });
    await tokens.revoke(token);
    await expectCounted('revoked', 401, () => get(app, token));
  });

  it('counts a valid token that is not stored as not_recognised', async () => {
    await expectCounted('not_recognised', 401, async () => get(app, await signToken()));
  });

  it('counts a forged token and a missing one as invalid', async () => {
    await expectCounted('invalid', 401, () => get(app, 'garbage'));
    await expectCounted('invalid', 401, async () => get(app, await signToken({}, { secret: 'another-secret-of-at-least-32-bytes!!!!' })));
    await expectCounted('invalid', 401, () => get(app));
  });

  it('adds up the checks of two module instances in one process', async () => {
    const { token } = await app.get(TokenService).issueToken({ subject: uniqueSubject() });
    const { token: other } = await cached.get(TokenService).issueToken({ subject: uniqueSubject() });
    const admitted = () => recorded.count(CHECKS, { outcome: 'admitted' });
    expect(
      await growth(admitted, async () => {
        expect((await get(app, token)).status).toBe(200);
        expect((await get(cached, other)).status).toBe(200);
      }),
    ).toBe(2);
  });

  it('counts a check the store cannot answer as unavailable', async () => {
    const { token } = await app.get(TokenService).issueToken({ subject: uniqueSubject() });
    proxy.setMode('reset');
    proxy.cut();
    try {
      await expectCounted('unavailable', 503, () => get(app, token));
    } finally {
      proxy.setMode('forward');
    }
    await waitFor(async () => (await get(app, token)).status === 200, 10_000, 'the store to answer again');
  });
});

describe('token_resource.revocations', () => {
  const revocations = (kind: string) => () => recorded.count(REVOCATIONS, { kind });

  it('counts each kind once per committed revocation', async () => {
    const tokens = app.get(TokenService);
    const logOut = app.get(LogOutEverywhereService);
    const { token } = await tokens.issueToken({ subject: uniqueSubject() });
    expect(await growth(revocations('token'), () => tokens.revoke(token))).toBe(1);
    // A revocation that changed nothing is not counted.
    expect(await growth(revocations('token'), () => tokens.revoke(token).catch(() => undefined))).toBe(0);
    expect(await growth(revocations('jti'), () => tokens.revokeJti(randomUUID(), uniqueSubject()))).toBe(1);
    expect(await growth(revocations('log_out_everywhere'), () => logOut.logOutEverywhere(uniqueSubject()))).toBe(1);
    expect(await growth(revocations('password_change'), () => logOut.logOutOnPasswordChange({ id: randomUUID() }))).toBe(1);
    // The password change is no log-out everywhere of its own in the figures.
    expect(await growth(revocations('log_out_everywhere'), () => logOut.logOutOnPasswordChange({ id: randomUUID() }))).toBe(0);
    const sessions = app.get(SessionService);
    const { sessionId } = await sessions.start({ subject: uniqueSubject() });
    expect(await growth(revocations('session'), () => sessions.revoke(sessionId))).toBe(1);
    // Revoking a session that is already revoked changes nothing and is not counted.
    expect(await growth(revocations('session'), () => sessions.revoke(sessionId))).toBe(0);
  });

  it('counts a revocation inside a transaction when it commits, and not when it rolls back', async () => {
    const tokens = app.get(TokenService);
    const dataSource = app.get(DataSource);
    const { token } = await tokens.issueToken({ subject: uniqueSubject() });
    const before = await revocations('token')();
    await dataSource.transaction(async (manager) => {
      await tokens.revoke(token, { manager });
      expect(await revocations('token')()).toBe(before);
    });
    expect(await revocations('token')()).toBe(before + 1);

    const { token: rolledBack } = await tokens.issueToken({ subject: uniqueSubject() });
    const rollback = dataSource.transaction(async (manager) => {
      await tokens.revoke(rolledBack, { manager });
      await app.get(LogOutEverywhereService).logOutEverywhere(uniqueSubject(), { manager });
      throw new Error('roll back');
    });
    await expect(rollback).rejects.toThrow('roll back');
    expect(await revocations('token')()).toBe(before + 1);
  });

  it('drops a revocation rolled back to a savepoint and keeps the rest of the transaction', async () => {
    const tokens = app.get(TokenService);
    const runner = app.get(DataSource).createQueryRunner();
    const jti = () => revocations('jti')();
    const before = await jti();
    try {
      await runner.startTransaction();
      await tokens.revokeJti(randomUUID(), uniqueSubject(), { manager: runner.manager });
      await runner.startTransaction(); // a savepoint
      await tokens.revokeJti(randomUUID(), uniqueSubject(), { manager: runner.manager });
      await runner.rollbackTransaction(); // to the savepoint
      await runner.startTransaction();
      await tokens.revokeJti(randomUUID(), uniqueSubject(), { manager: runner.manager });
      await runner.commitTransaction(); // releases the savepoint
      expect(await jti()).toBe(before);
      await runner.commitTransaction();
    } finally {
      await runner.release();
    }
    expect(await jti()).toBe(before + 2);
  });

  it('counts a replayed refresh token once, with the session it revoked', async () => {
    const reuse = () => recorded.count('token_resource.refresh.reuse_detected');
    const sessions = app.get(SessionService);
    const { refreshToken } = await sessions.start({ subject: uniqueSubject() });
    // A rotation is no reuse.
    expect(await growth(reuse, () => sessions.refresh(refreshToken))).toBe(0);
    const before = { reuse: await reuse(), session: await revocations('session')() };
    await expect(sessions.refresh(refreshToken)).rejects.toBeInstanceOf(RefreshTokenReusedError);
    expect(await reuse()).toBe(before.reuse + 1);
    expect(await revocations('session')()).toBe(before.session + 1);
  });
});

describe('token_resource.expunge.deleted and token_resource.expunge.duration', () => {
  it('counts the rows a run deleted and times the run', async () => {
    const tokens = app.get(TokenService);
    for (let i = 0; i < 3; i++) {
      await tokens.storeToken({ token: await signToken({}, { expiresInSeconds: -3600 }), purpose: 'user' });
    }
    const deletedBefore = await recorded.count('token_resource.expunge.deleted');
    const timedBefore = await recorded.histogram('token_resource.expunge.duration');
    const result = await app.get(ExpungerService).run();
    expect(result.skipped).toBe(false);
    expect(result.deleted).toBeGreaterThanOrEqual(3);
    expect((await recorded.count('token_resource.expunge.deleted')) - deletedBefore).toBe(result.deleted);
    const timed = await recorded.histogram('token_resource.expunge.duration');
    expect(timed.count - timedBefore.count).toBe(1);
    expect(timed.sum - timedBefore.sum).toBeCloseTo(result.durationMs / 1000, 6);
  });
});

describe('token_resource.cache.lookups', () => {
  it('counts a check answered by the store as a miss and one answered from memory as a hit', async () => {
    await waitFor(() => cached.get(RevocationCache).fresh, 10_000, 'the revocation cache to be fresh');
    const { token } = await cached.get(TokenService).issueToken({ subject: uniqueSubject() });
    const hits = await recorded.count(CACHE_LOOKUPS, { result: 'hit' });
    const misses = await recorded.count(CACHE_LOOKUPS, { result: 'miss' });
    expect((await get(cached, token)).status).toBe(200);
    expect((await get(cached, token)).status).toBe(200);
    expect((await recorded.count(CACHE_LOOKUPS, { result: 'miss' })) - misses).toBe(1);
    expect((await recorded.count(CACHE_LOOKUPS, { result: 'hit' })) - hits).toBe(1);
  });

  it('counts nothing with the cache off', async () => {
    const lookups = () => recorded.count(CACHE_LOOKUPS);
    const { token } = await app.get(TokenService).issueToken({ subject: uniqueSubject() });
    expect(await growth(lookups, () => get(app, token))).toBe(0);
  });
});
