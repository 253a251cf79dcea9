import { randomUUID } from 'node:crypto';
import { afterAll, afterEach, beforeAll, describe, expect, it } from '@jest/globals';
import type { INestApplication } from '@nestjs/common';
import pg from 'pg';
import type { DataSource } from 'typeorm';
import { InvalidTokenError, LogOutEverywhereService, TokenAlreadyRevokedError, TokenService } from '../lib/index.js';
import { TOKEN_GUARD_MESSAGES } from '../lib/guard/token-guard.constants.js';
import { createGuardApp } from './support/guard-app.js';
import { GuardedSubjectController } from './support/guarded-controller.js';
import { guardAnswer } from './support/guard-answer.js';
import { countRows, nowSeconds, signToken, sleep } from './support/jwt-fixtures.js';
import { createTestDatabase, type TestDatabase } from './support/test-database.js';
import { dataSourceOf } from './support/token-app.js';

/**
 * Values PostgreSQL cannot keep as given (a lone UTF-16 surrogate becomes U+FFFD, NUL is
 * refused, keys have a size limit, timestamps a range) and claims from another clock: each
 * is refused with a library error before anything is written, and the guard answers 401 for
 * a token carrying one, never 200 for a token that could not be revoked, never 503.
 */

let db: TestDatabase;
let app: INestApplication;
let admin: pg.Client;
let dataSource: DataSource;
let tokens: TokenService;
let logOut: LogOutEverywhereService;

beforeAll(async () => {
  db = await createTestDatabase();
  app = await createGuardApp(db.url, { platform: 'express', options: { storeAllTokens: true }, controllers: [GuardedSubjectController] });
  dataSource = dataSourceOf(app);
  tokens = app.get(TokenService);
  logOut = app.get(LogOutEverywhereService);
  admin = new pg.Client({ connectionString: db.url });
  await admin.connect();
});

afterEach(async () => {
  await admin.query('TRUNCATE tokens');
});

afterAll(async () => {
  await app?.close();
  await admin?.end();
  await db?.drop();
});

const invalid = { status: 401, message: TOKEN_GUARD_MESSAGES.invalidToken };
const revoked = { status: 401, message: TOKEN_GUARD_MESSAGES.revoked };

/** A string `bytes` long in UTF-8, of two-byte characters where it can. */
function utf8OfBytes(bytes: number): string {
  return 'é'.repeat(Math.floor(bytes / 2)) + 'a'.repeat(bytes % 2);
}

describe('a lone UTF-16 surrogate', () => {
  it('in a jti: the token is refused, not revoked in name only', async () => {
    const token = await signToken({ jti: `half-\ud800-${randomUUID()}` });
    await expect(tokens.revoke(token)).rejects.toBeInstanceOf(InvalidTokenError);
    await expect(tokens.tokenRevoked(token)).rejects.toBeInstanceOf(InvalidTokenError);
    await expect(tokens.revokeJti('half-\ud800', 'alice')).rejects.toThrow(TypeError);
    expect(await guardAnswer(app, token)).toEqual(invalid);
    expect(await countRows(dataSource)).toBe(0);
  });

  it('in a subject: log out everywhere refuses it, and the guard refuses its tokens', async () => {
    const sub = `half-\udc00-${randomUUID()}`;
    const token = await signToken({ sub });
    await expect(logOut.logOutEverywhere(sub)).rejects.toThrow(TypeError);
    await expect(tokens.revokeJti(randomUUID(), sub)).rejects.toThrow(TypeError);
    await expect(tokens.issueToken({ subject: sub })).rejects.toThrow(TypeError);
    expect(await guardAnswer(app, token)).toEqual(invalid);
    expect(await countRows(dataSource)).toBe(0);
  });
});

describe('a NUL character', () => {
  it('in a signed sub: 401, not 503', async () => {
    expect(await guardAnswer(app, await signToken({ sub: 'nul\0sub' }))).toEqual(invalid);
    expect(await guardAnswer(app, await signToken({ jti: 'nul\0jti' }))).toEqual(invalid);
  });

  it('in a subject, jti or purpose: a TypeError from every call, and nothing written', async () => {
    await expect(logOut.logOutEverywhere('nul\0sub')).rejects.toThrow(TypeError);
    await expect(logOut.logOutEverywhere('ok', { exceptJti: 'nul\0jti' })).rejects.toThrow(TypeError);
    await expect(logOut.logOutEverywhere('ok', { includePurposes: ['nul\0purpose'] })).rejects.toThrow(TypeError);
    await expect(tokens.revokeJti('jti', 'nul\0sub')).rejects.toThrow(TypeError);
    await expect(tokens.revokeJti('nul\0jti', 'sub')).rejects.toThrow(TypeError);
    await expect(tokens.jtiRevoked('nul\0jti')).rejects.toThrow(TypeError);
    await expect(tokens.getToken({ jti: 'nul\0jti' })).rejects.toThrow(TypeError);
    await expect(tokens.getToken({ jti: 'jti', purpose: 'nul\0purpose' })).rejects.toThrow(TypeError);
    await expect(tokens.getConfirmationChanges('nul\0jti')).rejects.toThrow(TypeError);
    await expect(tokens.listTokens('nul\0sub')).rejects.toThrow(TypeError);
    await expect(tokens.listTokens('sub', { purpose: 'nul\0purpose' })).rejects.toThrow(TypeError);
    await expect(tokens.issueToken({ subject: 'nul\0sub' })).rejects.toThrow(TypeError);
    await expect(tokens.issueToken({ subject: 'sub', purpose: 'nul\0purpose' })).rejects.toThrow(TypeError);
    await expect(tokens.revoke(await signToken({ sub: 'nul\0sub' }))).rejects.toBeInstanceOf(InvalidTokenError);
    expect(await countRows(dataSource)).toBe(0);
  });

  it('or a lone surrogate in stored JSON (extraData, confirmation changes): a TypeError, and nothing written', async () => {
    await expect(tokens.storeToken({ token: await signToken(), purpose: 'user', extraData: { device: 'nul\0' } })).rejects.toThrow(
      TypeError,
    );
    await expect(tokens.storeConfirmationChanges({ token: await signToken(), changes: { 'half-\ud800': 'x' } })).rejects.toThrow(TypeError);
    await expect(tokens.issueToken({ subject: 'sub', extraData: { nested: ['\0'] } })).rejects.toThrow(TypeError);
    expect(await countRows(dataSource)).toBe(0);
  });
});

describe('length limits, in UTF-8 bytes', () => {
  it('a jti of 255 bytes is revoked; 256 bytes and a 3 kB jti are refused', async () => {
    const longest = await signToken({ jti: utf8OfBytes(255) });
    await tokens.revoke(longest);
    expect(await tokens.tokenRevoked(longest)).toBe(true);
    expect(await guardAnswer(app, longest)).toEqual(revoked);

    for (const jti of [utf8OfBytes(256), 'j'.repeat(3000)]) {
      const token = await signToken({ jti });
      await expect(tokens.revoke(token)).rejects.toBeInstanceOf(InvalidTokenError);
      await expect(tokens.revokeJti(jti, 'alice')).rejects.toThrow(/at most 255 bytes/);
      expect(await guardAnswer(app, token)).toEqual(invalid);
    }
    expect(await countRows(dataSource)).toBe(1);
  });

  it('a subject of 1024 bytes is logged out everywhere; 1025 bytes and 3 kB are refused', async () => {
    const longest = utf8OfBytes(1024);
    const token = await signToken({ sub: longest });
    expect(await logOut.logOutEverywhere(longest)).toBe(0);
    expect(await guardAnswer(app, token)).toEqual(revoked);

    for (const sub of [utf8OfBytes(1025), 's'.repeat(3000)]) {
      await expect(logOut.logOutEverywhere(sub)).rejects.toThrow(/at most 1024 bytes/);
      await expect(tokens.issueToken({ subject: sub })).rejects.toThrow(TypeError);
      expect(await guardAnswer(app, await signToken({ sub }))).toEqual(invalid);
    }
    expect(await countRows(dataSource)).toBe(1);
  });
});

describe('expiries', () => {
  it('an exp no timestamp can hold: refused, and no 200 for a token that could not be revoked', async () => {
    const token = await signToken({ exp: 1e20 });
    await expect(tokens.revoke(token)).rejects.toBeInstanceOf(InvalidTokenError);
    await expect(tokens.storeToken({ token, purpose: 'user' })).rejects.toBeInstanceOf(InvalidTokenError);
    expect(await guardAnswer(app, token)).toEqual(invalid);
    expect(await countRows(dataSource)).toBe(0);
  });

  it("revokeJti's expiresAt: a valid Date up to the end of 9999, kept rounded up to the second", async () => {
    for (const expiresAt of [new Date(Number.NaN), new Date(8.64e15), new Date(-1)]) {
      await expect(tokens.revokeJti(randomUUID(), 'alice', { expiresAt })).rejects.toThrow(/expiresAt must be a valid Date/);
    }
    const jti = randomUUID();
    await tokens.revokeJti(jti, 'alice', { expiresAt: new Date(Date.UTC(2030, 0, 1, 0, 0, 0, 1)) });
    const { rows } = await admin.query('SELECT expires_at FROM tokens WHERE jti = $1', [jti]);
    expect(rows[0].expires_at.toISOString()).toBe('2030-01-01T00:00:01.000Z');
    expect(await countRows(dataSource)).toBe(1);
  });

  it('a fractional exp is kept rounded up: a revoked token stays revoked until jose stops accepting it', async () => {
    // exp a tenth of a second into a second: jose (whole seconds) accepts the token until
    // that second ends, 0.9 s after the fractional moment.
    const exp = nowSeconds() + 2.1;
    const token = await signToken({ exp });
    await tokens.revoke(token);
    const { rows } = await admin.query('SELECT expires_at FROM tokens');
    expect(rows[0].expires_at.getTime()).toBe(Math.ceil(exp) * 1000);

    while (Date.now() < exp * 1000 + 50) await sleep(20);
    await tokens.expungeExpired();
    expect((await guardAnswer(app, token)).status).toBe(401);
  });
});

describe('an iat in the future (an issuer whose clock runs ahead)', () => {
  it('is refused, so no such token outlives a later log out everywhere', async () => {
    const sub = `ahead-${randomUUID()}`;
    const token = await signToken({ sub, iat: nowSeconds() + 3600 });
    await expect(tokens.tokenRevoked(token)).rejects.toThrow(/iat is in the future/);
    await expect(tokens.revoke(token)).rejects.toBeInstanceOf(InvalidTokenError);
    await logOut.logOutEverywhere(sub);
    expect(await guardAnswer(app, token)).toEqual(invalid);
  });

  it('within jwt.clockToleranceSeconds is accepted', async () => {
    const tolerant = await createGuardApp(db.url, {
      platform: 'express',
      options: { jwt: { clockToleranceSeconds: 60 } },
      controllers: [GuardedSubjectController],
    });
    try {
      const token = await signToken({ iat: nowSeconds() + 30 });
      expect(await tolerant.get(TokenService).tokenRevoked(token)).toBe(false);
      await expect(tolerant.get(TokenService).tokenRevoked(await signToken({ iat: nowSeconds() + 120 }))).rejects.toBeInstanceOf(
        InvalidTokenError,
      );
    } finally {
      await tolerant.close();
    }
  });
});

describe('revokeJti is for the owner of the jti', () => {
  it("another subject's stored jti: rejected, and the row is left as it was", async () => {
    const { token, jti } = await tokens.issueToken({ subject: 'alice' });
    await expect(tokens.revokeJti(jti, 'mallory')).rejects.toThrow(InvalidTokenError);
    await expect(tokens.revokeJti(jti, 'mallory')).rejects.toThrow(/belongs to another subject/);
    const { rows } = await admin.query('SELECT subject, purpose FROM tokens WHERE jti = $1', [jti]);
    expect(rows).toEqual([{ subject: 'alice', purpose: 'user' }]);
    expect((await guardAnswer(app, token)).status).toBe(200);

    await tokens.revokeJti(jti, 'alice');
    // Revoked is revoked, whoever asks: TokenAlreadyRevokedError always means the token is refused.
    await expect(tokens.revokeJti(jti, 'alice')).rejects.toBeInstanceOf(TokenAlreadyRevokedError);
    await expect(tokens.revokeJti(jti, 'mallory')).rejects.toBeInstanceOf(TokenAlreadyRevokedError);
    expect((await admin.query('SELECT subject FROM tokens WHERE jti = $1', [jti])).rows).toEqual([{ subject: 'alice' }]);
    expect(await guardAnswer(app, token)).toEqual(revoked);
  });

  it('inside a transaction too, and the transaction can go on', async () => {
    const { jti } = await tokens.issueToken({ subject: 'alice' });
    const runner = dataSource.createQueryRunner();
    await runner.startTransaction();
    try {
      await expect(tokens.revokeJti(jti, 'mallory', { manager: runner.manager })).rejects.toBeInstanceOf(InvalidTokenError);
      await tokens.revokeJti(jti, 'alice', { manager: runner.manager });
      await runner.commitTransaction();
    } finally {
      await runner.release();
    }
    expect(await tokens.jtiRevoked(jti)).toBe(true);
  });
});
