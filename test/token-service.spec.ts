import type { INestApplication } from '@nestjs/common';
import { decodeJwt, decodeProtectedHeader, jwtVerify } from 'jose';
import type { Pool } from 'pg';
import type { DataSource, Repository } from 'typeorm';
import {
  InvalidTokenError,
  LogOutEverywhereService,
  REVOCATION_PURPOSE,
  Token,
  TokenAlreadyRevokedError,
  TokenResourceUnavailableError,
  TokenService,
  type TokenResourceModuleOptions,
} from '../lib/index.js';
import { LOG_OUT_EVERYWHERE_PURPOSE, TOKEN_REPOSITORY } from '../lib/token-resource.internal-constants.js';
import { TokenStore } from '../lib/token.store.js';
import { countRows, nowSeconds, signToken, sleep, uniqueSubject } from './support/jwt-fixtures.js';
import { preparedStatementRuns } from './support/prepared-statements.js';
import { createTestDatabase, type TestDatabase } from './support/test-database.js';
import { createTokenApp, dataSourceOf, TEST_SECRET } from './support/token-app.js';

/** Core semantics of TokenService, against real PostgreSQL. */

let db: TestDatabase;
let app: INestApplication;
let tokens: TokenService;
let repo: Repository<Token>;
let dataSource: DataSource;
const extraApps: INestApplication[] = [];

/** Another application on the same database, with other module options. */
async function appWith(options: Partial<TokenResourceModuleOptions>): Promise<TokenService> {
  const other = await createTokenApp(db.url, { options: { expunge: { enabled: false }, ...options } });
  extraApps.push(other);
  return other.get(TokenService);
}

beforeAll(async () => {
  db = await createTestDatabase();
  app = await createTokenApp(db.url, { options: { expunge: { enabled: false } } });
  tokens = app.get(TokenService);
  repo = app.get(TOKEN_REPOSITORY);
  dataSource = dataSourceOf(app);
});

afterAll(async () => {
  for (const other of extraApps) await other.close();
  await app?.close();
  await db?.drop();
});

describe('storeToken / getToken', () => {
  it('round-trips: subject from sub, expiresAt from exp, purpose and extraData', async () => {
    const exp = nowSeconds() + 600;
    const token = await signToken({ jti: 'round-trip-1', sub: 'alice', exp });
    await tokens.storeToken({ token, purpose: 'user', extraData: { device: 'phone', n: 2, nested: { list: [1, 2] } } });

    const row = await tokens.getToken({ jti: 'round-trip-1' });
    expect(row).not.toBeNull();
    expect(row!.jti).toBe('round-trip-1');
    expect(row!.subject).toBe('alice');
    expect(row!.purpose).toBe('user');
    expect(row!.expiresAt.getTime()).toBe(exp * 1000);
    expect(row!.extraData).toEqual({ device: 'phone', n: 2, nested: { list: [1, 2] } });
    expect(row!.createdAt).toBeInstanceOf(Date);
    expect(row!.updatedAt).toBeInstanceOf(Date);

    // The same row is found through the token itself.
    const byToken = await tokens.getToken({ token });
    expect(byToken?.jti).toBe('round-trip-1');
  });

  it('never stores the raw token string anywhere', async () => {
    const token = await signToken({ jti: 'no-raw-token' });
    await tokens.storeToken({ token, purpose: 'user', extraData: { a: 1 } });
    const [{ dump }] = await dataSource.query(`SELECT string_agg(t::text, '|') AS dump FROM tokens t`);
    expect(dump).toContain('no-raw-token');
    expect(dump).not.toContain(token.split('.')[2]);
  });

  it('upserts on jti: storing again replaces purpose, expiry and extraData, keeping one row', async () => {
    const sub = uniqueSubject();
    const first = await signToken({ jti: 'upsert-1', sub, exp: nowSeconds() + 100 });
    const second = await signToken({ jti: 'upsert-1', sub, exp: nowSeconds() + 900 });
    await tokens.storeToken({ token: first, purpose: 'user', extraData: { v: 1 } });
    await tokens.storeToken({ token: second, purpose: 'refresh', extraData: { v: 2 } });
    const rows = await repo.find({ where: { jti: 'upsert-1' } });
    expect(rows).toHaveLength(1);
    expect(rows[0].purpose).toBe('refresh');
    expect(rows[0].extraData).toEqual({ v: 2 });
    expect(rows[0].expiresAt.getTime()).toBe(decodeJwt(second).exp! * 1000);
  });

  it('stores extraData as null when none is given', async () => {
    const token = await signToken({ jti: 'no-extra' });
    await tokens.storeToken({ token, purpose: 'user' });
    expect((await tokens.getToken({ jti: 'no-extra' }))!.extraData).toBeNull();
  });

  it('accepts an expired token, but getToken never returns an expired row', async () => {
    const expired = await signToken({ jti: 'expired-store' }, { expiresInSeconds: -30 });
    await tokens.storeToken({ token: expired, purpose: 'user' });
    const raw = await repo.findOneBy({ jti: 'expired-store' });
    expect(raw).not.toBeNull();
    expect(raw!.expiresAt.getTime()).toBeLessThan(Date.now());
    expect(await tokens.getToken({ jti: 'expired-store' })).toBeNull();
    expect(await tokens.getToken({ jti: 'expired-store', purpose: 'user' })).toBeNull();
  });

  it('a row becomes invisible to getToken once its expiresAt passes', async () => {
    const token = await signToken({ jti: 'expiring-soon', exp: nowSeconds() + 2 });
    await tokens.storeToken({ token, purpose: 'user' });
    expect(await tokens.getToken({ jti: 'expiring-soon' })).not.toBeNull();
    await sleep(Math.max(0, decodeJwt(token).exp! * 1000 - Date.now()) + 50);
    expect(await tokens.getToken({ jti: 'expiring-soon' })).toBeNull();
    expect(await repo.findOneBy({ jti: 'expiring-soon' })).not.toBeNull();
  });

  it('filters by purpose', async () => {
    const token = await signToken({ jti: 'purpose-filter' });
    await tokens.storeToken({ token, purpose: 'confirm' });
    expect((await tokens.getToken({ jti: 'purpose-filter', purpose: 'confirm' }))?.purpose).toBe('confirm');
    expect(await tokens.getToken({ jti: 'purpose-filter', purpose: 'user' })).toBeNull();
    expect(await tokens.getToken({ token, purpose: 'user' })).toBeNull();
    expect((await tokens.getToken({ jti: 'purpose-filter' }))?.purpose).toBe('confirm');
  });

  it('returns null for an unknown jti', async () => {
    expect(await tokens.getToken({ jti: 'never-stored' })).toBeNull();
  });

  it('throws with neither jti nor token', async () => {
    await expect(tokens.getToken({})).rejects.toThrow(/jti or a token/);
    await expect(tokens.getToken({ purpose: 'user' })).rejects.toThrow(/jti or a token/);
    await expect(tokens.getToken({ jti: '' })).rejects.toThrow();
  });

  it.each([['jti'], ['sub'], ['exp']] as const)('storeToken rejects a token without %s and writes nothing', async (claim) => {
    const before = await countRows(dataSource);
    const token = await signToken({}, { omit: [claim] });
    await expect(tokens.storeToken({ token, purpose: 'user' })).rejects.toBeInstanceOf(InvalidTokenError);
    await expect(tokens.storeToken({ token, purpose: 'user' })).rejects.toThrow(new RegExp(claim));
    expect(await countRows(dataSource)).toBe(before);
  });

  it('revoke rejects a token without jti, sub or exp and writes nothing', async () => {
    const before = await countRows(dataSource);
    for (const claim of ['jti', 'sub', 'exp'] as const) {
      await expect(tokens.revoke(await signToken({}, { omit: [claim] }))).rejects.toBeInstanceOf(InvalidTokenError);
    }
    expect(await countRows(dataSource)).toBe(before);
  });
});

describe('revoke / tokenRevoked / jtiRevoked', () => {
  it('a fresh token is not revoked', async () => {
    const token = await signToken({ jti: 'fresh' });
    expect(await tokens.tokenRevoked(token)).toBe(false);
    expect(await tokens.jtiRevoked('fresh')).toBe(false);
  });

  it('revoke writes a revocation row (subject from sub, expiresAt from exp) and both checks turn true', async () => {
    const exp = nowSeconds() + 1234;
    const token = await signToken({ jti: 'revoke-unstored', sub: 'bob', exp });
    await tokens.revoke(token);
    expect(await tokens.tokenRevoked(token)).toBe(true);
    expect(await tokens.jtiRevoked('revoke-unstored')).toBe(true);
    const row = await repo.findOneByOrFail({ jti: 'revoke-unstored' });
    expect(row.purpose).toBe(REVOCATION_PURPOSE);
    expect(row.subject).toBe('bob');
    expect(row.expiresAt.getTime()).toBe(exp * 1000);
  });

  it('revoke flips a stored user row into the revocation row (still one row)', async () => {
    const token = await signToken({ jti: 'revoke-stored', sub: 'carol' });
    await tokens.storeToken({ token, purpose: 'user', extraData: { device: 'laptop' } });
    expect(await tokens.tokenRevoked(token)).toBe(false);
    await tokens.revoke(token);
    const rows = await repo.findBy({ jti: 'revoke-stored' });
    expect(rows).toHaveLength(1);
    expect(rows[0].purpose).toBe(REVOCATION_PURPOSE);
    expect(rows[0].subject).toBe('carol');
    expect(await tokens.tokenRevoked(token)).toBe(true);
    expect(await tokens.jtiRevoked('revoke-stored')).toBe(true);
    // A revoked token is no longer found as a stored token of its old purpose.
    expect(await tokens.getToken({ jti: 'revoke-stored', purpose: 'user' })).toBeNull();
  });

  it('a second revoke rejects with TokenAlreadyRevokedError', async () => {
    const token = await signToken({ jti: 'revoke-twice', sub: 'dave' });
    await tokens.revoke(token);
    await expect(tokens.revoke(token)).rejects.toBeInstanceOf(TokenAlreadyRevokedError);
    await expect(tokens.revokeJti('revoke-twice', 'dave')).rejects.toBeInstanceOf(TokenAlreadyRevokedError);
  });

  it('revoke and tokenRevoked accept an expired token', async () => {
    const expired = await signToken({ jti: 'revoke-expired' }, { expiresInSeconds: -3600 });
    expect(await tokens.tokenRevoked(expired)).toBe(false);
    await tokens.revoke(expired);
    expect(await tokens.tokenRevoked(expired)).toBe(true);
    expect((await repo.findOneByOrFail({ jti: 'revoke-expired' })).purpose).toBe(REVOCATION_PURPOSE);
  });

  it('storeToken of a revoked token does not un-revoke it', async () => {
    const token = await signToken({ jti: 'store-after-revoke' });
    await tokens.revoke(token);
    await expect(tokens.storeToken({ token, purpose: 'user', extraData: { x: 1 } })).rejects.toBeInstanceOf(TokenAlreadyRevokedError);
    const row = await repo.findOneByOrFail({ jti: 'store-after-revoke' });
    expect(row.purpose).toBe(REVOCATION_PURPOSE);
    expect(row.extraData).toBeNull();
    expect(await tokens.tokenRevoked(token)).toBe(true);
    // Nor do confirmation changes on its jti.
    await expect(tokens.storeConfirmationChanges({ token, changes: { email: 'x@y' } })).rejects.toBeInstanceOf(TokenAlreadyRevokedError);
    expect(await tokens.tokenRevoked(token)).toBe(true);
  });

  it('storeToken refuses to write a revocation row directly (only revoke does)', async () => {
    const token = await signToken({ jti: 'store-as-revocation' });
    await expect(tokens.storeToken({ token, purpose: REVOCATION_PURPOSE })).rejects.toThrow(/revoke/);
    expect(await repo.findOneBy({ jti: 'store-as-revocation' })).toBeNull();
  });

  it('revoking one token leaves the other tokens of its subject alone', async () => {
    const a = await signToken({ jti: 'sibling-a', sub: 'dave' });
    const b = await signToken({ jti: 'sibling-b', sub: 'dave' });
    await tokens.storeToken({ token: b, purpose: 'user' });
    await tokens.revoke(a);
    expect(await tokens.tokenRevoked(b)).toBe(false);
    expect((await tokens.getToken({ jti: 'sibling-b' }))?.purpose).toBe('user');
  });

  it("revoke with opts.manager joins the caller's transaction: rolled back, nothing is revoked", async () => {
    const token = await signToken({ jti: 'revoke-in-tx' });
    const runner = dataSource.createQueryRunner();
    await runner.connect();
    await runner.startTransaction();
    try {
      await tokens.revoke(token, { manager: runner.manager });
      // Not visible outside the transaction yet.
      expect(await tokens.jtiRevoked('revoke-in-tx')).toBe(false);
      await runner.rollbackTransaction();
    } finally {
      await runner.release();
    }
    expect(await tokens.tokenRevoked(token)).toBe(false);
    // Committed, it is revoked.
    const committer = dataSource.createQueryRunner();
    await committer.connect();
    await committer.startTransaction();
    await tokens.revoke(token, { manager: committer.manager });
    await committer.commitTransaction();
    await committer.release();
    expect(await tokens.tokenRevoked(token)).toBe(true);
  });

  it('jtiRevoked is false for a stored row of another purpose', async () => {
    const token = await signToken({ jti: 'stored-not-revoked' });
    await tokens.storeToken({ token, purpose: 'user' });
    expect(await tokens.jtiRevoked('stored-not-revoked')).toBe(false);
  });

  it('tokenRevoked sees a log-out-everywhere at or after iat, not one before it', async () => {
    const sub = uniqueSubject();
    const iat = nowSeconds() - 100;
    const before = await signToken({ sub, iat: iat - 10 });
    const after = await signToken({ sub, iat: iat + 50 });
    expect(await tokens.tokenRevoked(before)).toBe(false);
    await repo.insert({
      jti: `log-out-everywhere:${sub}`,
      subject: sub,
      purpose: LOG_OUT_EVERYWHERE_PURPOSE,
      expiresAt: new Date(Date.now() + 3_600_000),
      extraData: { levels: { all: { at: iat * 1000 } } },
    });
    expect(await tokens.tokenRevoked(before)).toBe(true);
    expect(await tokens.tokenRevoked(after)).toBe(false);
    // jtiRevoked only knows revocation rows.
    expect(await tokens.jtiRevoked(decodeJwt(before).jti!)).toBe(false);
  });
});

describe('revokeJti', () => {
  it('writes a revocation row that expires after logOutEverywhere.markerLifetime', async () => {
    const before = Date.now();
    await tokens.revokeJti('bare-jti', 'erin');
    expect(await tokens.jtiRevoked('bare-jti')).toBe(true);
    const row = await repo.findOneByOrFail({ jti: 'bare-jti' });
    expect(row.purpose).toBe(REVOCATION_PURPOSE);
    expect(row.subject).toBe('erin');
    // No token issueToken makes outlives it (the default markerLifetime is 365 days), and it is expunged one day.
    const year = 365 * 86_400_000;
    expect(row.expiresAt.getTime()).toBeGreaterThanOrEqual(before + year - 1000);
    expect(row.expiresAt.getTime()).toBeLessThanOrEqual(Date.now() + year + 1000);
    await expect(tokens.revokeJti('bare-jti', 'erin')).rejects.toBeInstanceOf(TokenAlreadyRevokedError);
    // A token carrying that jti is revoked.
    expect(await tokens.tokenRevoked(await signToken({ jti: 'bare-jti', sub: 'erin' }))).toBe(true);
  });

  it('uses expiresAt when given', async () => {
    const expiresAt = new Date(Date.now() + 86_400_000);
    expiresAt.setMilliseconds(0);
    await tokens.revokeJti('bare-jti-expiring', 'erin', { expiresAt });
    expect((await repo.findOneByOrFail({ jti: 'bare-jti-expiring' })).expiresAt.getTime()).toBe(expiresAt.getTime());
  });

  it('flips a stored row and keeps its expiry', async () => {
    const token = await signToken({ jti: 'bare-jti-stored', sub: 'frank' }, { expiresInSeconds: 600 });
    await tokens.storeToken({ token, purpose: 'user' });
    const stored = (await repo.findOneByOrFail({ jti: 'bare-jti-stored' })).expiresAt.getTime();
    await tokens.revokeJti('bare-jti-stored', 'frank');
    expect(await tokens.tokenRevoked(token)).toBe(true);
    expect(await repo.countBy({ jti: 'bare-jti-stored' })).toBe(1);
    expect((await repo.findOneByOrFail({ jti: 'bare-jti-stored' })).expiresAt.getTime()).toBe(stored);
  });

  it("never shortens a stored row's expiry, so the token stays revoked while it lives", async () => {
    const token = await signToken({ jti: 'bare-jti-short', sub: 'frank' }, { expiresInSeconds: 3600 });
    await tokens.storeToken({ token, purpose: 'user' });
    const stored = (await repo.findOneByOrFail({ jti: 'bare-jti-short' })).expiresAt.getTime();
    await tokens.revokeJti('bare-jti-short', 'frank', { expiresAt: new Date(Date.now() - 60_000) });
    expect((await repo.findOneByOrFail({ jti: 'bare-jti-short' })).expiresAt.getTime()).toBe(stored);
    await tokens.expungeExpired();
    expect(await repo.countBy({ jti: 'bare-jti-short' })).toBe(1);
    expect(await tokens.tokenRevoked(token)).toBe(true);
  });

  it("joins the caller's transaction with opts.manager", async () => {
    await expect(
      dataSource.transaction(async (manager) => {
        await tokens.revokeJti('bare-jti-tx', 'frank', { manager });
        throw new Error('roll back');
      }),
    ).rejects.toThrow('roll back');
    expect(await tokens.jtiRevoked('bare-jti-tx')).toBe(false);
    await dataSource.transaction((manager) => tokens.revokeJti('bare-jti-tx', 'frank', { manager }));
    expect(await tokens.jtiRevoked('bare-jti-tx')).toBe(true);
  });

  it('rejects an empty jti or subject and an invalid expiresAt, writing nothing', async () => {
    const before = await countRows(dataSource);
    await expect(tokens.revokeJti('', 'x')).rejects.toThrow();
    await expect(tokens.revokeJti('x', '')).rejects.toThrow();
    await expect(tokens.revokeJti('x', 'y', { expiresAt: new Date('nope') })).rejects.toThrow();
    expect(await countRows(dataSource)).toBe(before);
  });
});

describe('confirmation changes', () => {
  it('round-trip on the token jti with purpose confirm by default', async () => {
    const token = await signToken({ jti: 'confirm-1', sub: 'gina' });
    await tokens.storeConfirmationChanges({ token, changes: { email: 'new@example.com' } });
    expect(await tokens.getConfirmationChanges('confirm-1')).toEqual({ email: 'new@example.com' });
    expect(await tokens.getConfirmationChanges('confirm-1', 'confirm')).toEqual({ email: 'new@example.com' });
    expect(await tokens.getConfirmationChanges('confirm-1', 'other')).toBeNull();
    const row = await repo.findOneByOrFail({ jti: 'confirm-1' });
    expect(row.purpose).toBe('confirm');
    expect(row.subject).toBe('gina');
  });

  it('round-trip with another purpose', async () => {
    const token = await signToken({ jti: 'confirm-2' });
    await tokens.storeConfirmationChanges({ token, changes: { phone: '+1' }, purpose: 'phone_change' });
    expect(await tokens.getConfirmationChanges('confirm-2', 'phone_change')).toEqual({ phone: '+1' });
    expect(await tokens.getConfirmationChanges('confirm-2')).toBeNull();
  });

  it('returns null for an unknown jti', async () => {
    expect(await tokens.getConfirmationChanges('confirm-unknown')).toBeNull();
  });

  it('expire with the token', async () => {
    const expired = await signToken({ jti: 'confirm-expired' }, { expiresInSeconds: -5 });
    await tokens.storeConfirmationChanges({ token: expired, changes: { email: 'old@example.com' } });
    expect(await repo.findOneBy({ jti: 'confirm-expired' })).not.toBeNull();
    expect(await tokens.getConfirmationChanges('confirm-expired')).toBeNull();

    const soon = await signToken({ jti: 'confirm-soon', exp: nowSeconds() + 2 });
    await tokens.storeConfirmationChanges({ token: soon, changes: { email: 'soon@example.com' } });
    expect(await tokens.getConfirmationChanges('confirm-soon')).toEqual({ email: 'soon@example.com' });
    await sleep(Math.max(0, decodeJwt(soon).exp! * 1000 - Date.now()) + 50);
    expect(await tokens.getConfirmationChanges('confirm-soon')).toBeNull();
  });
});

describe('listTokens', () => {
  it("lists a subject's unexpired rows, filters by purpose and expiry, and hides log-out markers", async () => {
    const sub = uniqueSubject();
    const stored = async (jti: string, purpose: string, expiresInSeconds = 3600) =>
      tokens.storeToken({ token: await signToken({ jti, sub }, { expiresInSeconds }), purpose });
    await stored(`${sub}-user-1`, 'user');
    await stored(`${sub}-user-2`, 'user');
    await stored(`${sub}-confirm`, 'confirm');
    await stored(`${sub}-old`, 'user', -60);
    await tokens.revoke(await signToken({ jti: `${sub}-revoked`, sub }));
    await tokens.storeToken({ token: await signToken({ jti: `${sub}-someone-else`, sub: `${sub}-x` }), purpose: 'user' });
    await repo.insert({
      jti: `log-out-everywhere:${sub}`,
      subject: sub,
      purpose: LOG_OUT_EVERYWHERE_PURPOSE,
      expiresAt: new Date(Date.now() + 3_600_000),
      extraData: { levels: { all: { at: Date.now() - 1_000_000 } } },
    });

    const jtis = (list: Token[]) => list.map((row) => row.jti).sort();
    expect(jtis(await tokens.listTokens(sub))).toEqual([`${sub}-confirm`, `${sub}-revoked`, `${sub}-user-1`, `${sub}-user-2`].sort());
    expect(jtis(await tokens.listTokens(sub, { purpose: 'user' }))).toEqual([`${sub}-user-1`, `${sub}-user-2`]);
    expect(jtis(await tokens.listTokens(sub, { purpose: 'user', includeExpired: true }))).toEqual([
      `${sub}-old`,
      `${sub}-user-1`,
      `${sub}-user-2`,
    ]);
    expect(jtis(await tokens.listTokens(sub, { includeExpired: true }))).toEqual(
      [`${sub}-confirm`, `${sub}-old`, `${sub}-revoked`, `${sub}-user-1`, `${sub}-user-2`].sort(),
    );
    expect(await tokens.listTokens(`${sub}-nobody`)).toEqual([]);
    const listed = await tokens.listTokens(sub, { purpose: 'confirm' });
    expect(listed[0]).toBeInstanceOf(Token);
    expect(listed[0].subject).toBe(sub);
  });
});

describe('issueToken', () => {
  it('signs HS256 with sub, random jti, iat and exp 7 days out by default, and stores nothing', async () => {
    const before = await countRows(dataSource);
    const issued = await tokens.issueToken({ subject: 'henry', claims: { role: 'admin' } });
    expect(decodeProtectedHeader(issued.token).alg).toBe('HS256');
    const { payload } = await jwtVerify(issued.token, new TextEncoder().encode(TEST_SECRET), { algorithms: ['HS256'] });
    expect(payload.sub).toBe('henry');
    expect(payload.jti).toBe(issued.jti);
    expect(payload.role).toBe('admin');
    expect(typeof payload.iat).toBe('number');
    expect(Math.abs(payload.iat! - Date.now() / 1000)).toBeLessThan(5);
    expect(payload.exp! - Math.floor(payload.iat!)).toBeGreaterThanOrEqual(7 * 86_400 - 1);
    expect(payload.exp! - payload.iat!).toBeLessThanOrEqual(7 * 86_400);
    expect(issued.expiresAt.getTime()).toBe(payload.exp! * 1000);
    expect(payload.iss).toBeUndefined();
    expect(payload.aud).toBeUndefined();
    expect(await countRows(dataSource)).toBe(before);
    // The issued token works with every method that takes a token.
    expect(await tokens.tokenRevoked(issued.token)).toBe(false);
  });

  it('gives every token a different jti', async () => {
    const jtis = new Set<string>();
    for (let i = 0; i < 20; i += 1) jtis.add((await tokens.issueToken({ subject: 'ivy' })).jti);
    expect(jtis.size).toBe(20);
  });

  it.each([
    [60, 60],
    ['90s', 90],
    ['15m', 900],
    ['2h', 7200],
    ['7d', 7 * 86_400],
    ['1 week', 7 * 86_400],
  ])('expiresIn %p lasts %p seconds', async (expiresIn, seconds) => {
    const started = Date.now() / 1000;
    const issued = await tokens.issueToken({ subject: 'jack', expiresIn });
    const exp = decodeJwt(issued.token).exp!;
    expect(exp).toBeGreaterThanOrEqual(Math.floor(started + seconds) - 1);
    expect(exp).toBeLessThanOrEqual(Date.now() / 1000 + seconds);
  });

  it.each([0, -5, 'soon', '', '10 parsecs', Number.NaN])('rejects expiresIn %p', async (expiresIn) => {
    await expect(tokens.issueToken({ subject: 'kate', expiresIn })).rejects.toThrow(/seconds|duration/);
  });

  it('refuses a lifetime longer than logOutEverywhere.markerLifetime, which would outlive its log-outs', async () => {
    const shortMemory = await appWith({ logOutEverywhere: { markerLifetime: '30d' }, storeAllTokens: true });
    const before = await countRows(dataSource);
    await expect(shortMemory.issueToken({ subject: 'lena', expiresIn: '31d' })).rejects.toThrow(
      /expiresIn \(2678400 s\) exceeds logOutEverywhere.markerLifetime \(2592000 s\)/,
    );
    expect(await countRows(dataSource)).toBe(before);
    await expect(shortMemory.issueToken({ subject: 'lena', expiresIn: '30d' })).resolves.toMatchObject({ jti: expect.any(String) });
    await expect(tokens.issueToken({ subject: 'lena', expiresIn: '366d' })).rejects.toBeInstanceOf(RangeError);
  });

  it('rejects a missing subject', async () => {
    await expect(tokens.issueToken({ subject: '' })).rejects.toThrow(/subject/);
  });

  it('sets iss and aud when configured, and then requires them', async () => {
    const strict = await appWith({ jwt: { secret: TEST_SECRET, issuer: 'https://issuer.test', audience: 'api.test' } });
    const issued = await strict.issueToken({ subject: 'liam' });
    const payload = decodeJwt(issued.token);
    expect(payload.iss).toBe('https://issuer.test');
    expect(payload.aud).toBe('api.test');
    expect(await strict.tokenRevoked(issued.token)).toBe(false);
    // A token of the lax app, without iss/aud, is refused by the strict one.
    const lax = await tokens.issueToken({ subject: 'liam' });
    await expect(strict.tokenRevoked(lax.token)).rejects.toBeInstanceOf(InvalidTokenError);
  });

  it('stores every token with its purpose and extraData when storeAllTokens is on', async () => {
    const storing = await appWith({ storeAllTokens: true });
    const issued = await storing.issueToken({ subject: 'mia', extraData: { ip: '10.0.0.1' } });
    const row = await storing.getToken({ jti: issued.jti });
    expect(row).not.toBeNull();
    expect(row!.purpose).toBe('user');
    expect(row!.subject).toBe('mia');
    expect(row!.extraData).toEqual({ ip: '10.0.0.1' });
    expect(row!.expiresAt.getTime()).toBe(issued.expiresAt.getTime());

    const reset = await storing.issueToken({ subject: 'mia', purpose: 'password_reset', expiresIn: '15m' });
    expect((await storing.getToken({ token: reset.token }))?.purpose).toBe('password_reset');
    expect(await storing.getToken({ jti: reset.jti, purpose: 'user' })).toBeNull();
  });
});

describe('expungeExpired', () => {
  beforeEach(async () => {
    await dataSource.query('TRUNCATE tokens');
  });

  async function insertRows(count: number, expiresAt: Date, prefix: string): Promise<void> {
    await repo.insert(Array.from({ length: count }, (_, i) => ({ jti: `${prefix}-${i}`, subject: 'expunge', purpose: 'user', expiresAt })));
  }

  it('deletes only expired rows and returns how many', async () => {
    await insertRows(5, new Date(Date.now() - 60_000), 'dead');
    await insertRows(3, new Date(Date.now() + 60_000), 'alive');
    await tokens.revokeJti('forever', 'expunge');
    expect(await tokens.expungeExpired()).toBe(5);
    const left = (await repo.find()).map((row) => row.jti).sort();
    expect(left).toEqual(['alive-0', 'alive-1', 'alive-2', 'forever']);
    expect(await tokens.expungeExpired()).toBe(0);
  });

  it('deletes expired revocation rows too, but never an unexpired one', async () => {
    await tokens.revoke(await signToken({ jti: 'revoked-expired' }, { expiresInSeconds: -60 }));
    const live = await signToken({ jti: 'revoked-live' });
    await tokens.revoke(live);
    expect(await tokens.expungeExpired()).toBe(1);
    expect(await tokens.tokenRevoked(live)).toBe(true);
    expect(await tokens.jtiRevoked('revoked-expired')).toBe(false);
  });

  it('keeps clockToleranceSeconds of grace after expiry', async () => {
    const tolerant = await appWith({ jwt: { secret: TEST_SECRET, clockToleranceSeconds: 120 } });
    await insertRows(2, new Date(Date.now() - 60_000), 'within-grace');
    await insertRows(3, new Date(Date.now() - 600_000), 'past-grace');
    expect(await tolerant.expungeExpired()).toBe(3);
    expect((await repo.find()).map((row) => row.jti).sort()).toEqual(['within-grace-0', 'within-grace-1']);
    // Without tolerance the same rows are due.
    expect(await tokens.expungeExpired()).toBe(2);
    expect(await countRows(dataSource)).toBe(0);
  });

  it('a revoked token within the tolerance stays revoked after an expunge', async () => {
    const tolerant = await appWith({ jwt: { secret: TEST_SECRET, clockToleranceSeconds: 300 } });
    // Expired 100 s ago: still accepted by a verifier with 300 s of leeway, so its
    // revocation row must survive.
    const token = await signToken({ jti: 'grace-revoked' }, { expiresInSeconds: -100 });
    await tolerant.revoke(token);
    await tolerant.expungeExpired();
    expect(await tolerant.tokenRevoked(token)).toBe(true);
  });

  it('works across several batches of expunge.batchSize', async () => {
    const small = await appWith({ expunge: { enabled: false, batchSize: 3 } });
    await insertRows(10, new Date(Date.now() - 60_000), 'batched');
    await insertRows(2, new Date(Date.now() + 60_000), 'kept');
    const batches: number[] = [];
    expect(await small.expungeExpired({ onBatch: (deleted) => batches.push(deleted) })).toBe(10);
    // At least 3 + 3 + 3 + 1: four batches, each deleting at most batchSize rows.
    expect(batches.filter((deleted) => deleted > 0).length).toBeGreaterThanOrEqual(4);
    for (const deleted of batches) expect(deleted).toBeLessThanOrEqual(3);
    expect(await countRows(dataSource)).toBe(2);
  });

  it('with an exact multiple of batchSize it still deletes everything', async () => {
    const small = await appWith({ expunge: { enabled: false, batchSize: 4 } });
    await insertRows(8, new Date(Date.now() - 60_000), 'exact');
    expect(await small.expungeExpired()).toBe(8);
    expect(await countRows(dataSource)).toBe(0);
  });
});

describe('when the store cannot answer', () => {
  it('revoked-checks and revoke fail closed with TokenResourceUnavailableError, never "not revoked"', async () => {
    const doomed = await createTokenApp(db.url, { options: { expunge: { enabled: false } } });
    extraApps.push(doomed);
    const service = doomed.get(TokenService);
    const token = await signToken();
    expect(await service.tokenRevoked(token)).toBe(false);
    await dataSourceOf(doomed).destroy();
    await expect(service.tokenRevoked(token)).rejects.toBeInstanceOf(TokenResourceUnavailableError);
    await expect(service.jtiRevoked('anything')).rejects.toBeInstanceOf(TokenResourceUnavailableError);
    await expect(service.revoke(token)).rejects.toBeInstanceOf(TokenResourceUnavailableError);
    await expect(service.revokeJti('anything', 'someone')).rejects.toBeInstanceOf(TokenResourceUnavailableError);
    await expect(service.getToken({ jti: 'anything' })).rejects.toBeInstanceOf(TokenResourceUnavailableError);
    await expect(service.listTokens('someone')).rejects.toBeInstanceOf(TokenResourceUnavailableError);
    await expect(service.getConfirmationChanges('anything')).rejects.toBeInstanceOf(TokenResourceUnavailableError);
  });
});

describe('each revoked-check is one indexed query', () => {
  it('tokenRevoked and jtiRevoked make one store round trip each, served by the primary key', async () => {
    // A pool of one connection, on which PostgreSQL counts every statement the service runs.
    const single = await createTokenApp(db.url, { options: { expunge: { enabled: false } }, typeOrm: { extra: { max: 1 } } });
    extraApps.push(single);
    const pool = (dataSourceOf(single).driver as unknown as { master: Pool }).master;
    const statementsRun = async () => {
      const client = await pool.connect();
      try {
        return await preparedStatementRuns(client, 'ntr_');
      } finally {
        client.release();
      }
    };
    const service = single.get(TokenService);
    const before = await statementsRun();
    await service.tokenRevoked(await signToken());
    expect(await statementsRun()).toBe(before + 1);
    await service.jtiRevoked('one-query');
    expect(await statementsRun()).toBe(before + 2);
    const store = app.get(TokenStore);
    const runner = dataSource.createQueryRunner();
    await runner.connect();
    try {
      // The test table is tiny, so forbid the sequential scan to see which index serves it.
      await runner.query('SET enable_seqscan = off');
      for (const [statement, values] of [
        [store.tokenStateStatement(), ['a', 'b', 'c']],
        [store.jtiRevokedStatement(), ['a']],
      ] as const) {
        let sql = statement.text;
        values.forEach((value, i) => {
          sql = sql.replace(`$${i + 1}`, Array.isArray(value) ? `ARRAY[${value.map((v) => `'${v}'`).join(',')}]` : `'${value}'`);
        });
        const plan = (await runner.query(`EXPLAIN ${sql}`)).map((row: { 'QUERY PLAN': string }) => row['QUERY PLAN']).join('\n');
        expect(plan).toMatch(/(Index|Index Only|Bitmap Index) Scan on "?PK_\w+"?|Index (Only )?Scan using "?PK_\w+"?/);
        expect(plan).not.toMatch(/Seq Scan/);
      }
    } finally {
      await runner.release();
    }
  });
});

describe('reserved rows and claims', () => {
  it('never lets a token row overwrite a log-out-everywhere marker, which would un-revoke its tokens', async () => {
    const token = await signToken({ jti: 'before-log-out', sub: 'marker-owner' });
    await app.get(LogOutEverywhereService).logOutEverywhere('marker-owner');
    expect(await tokens.tokenRevoked(token)).toBe(true);

    const markerJti = 'log-out-everywhere:marker-owner';
    await expect(tokens.revokeJti(markerJti, 'marker-owner')).rejects.toBeInstanceOf(InvalidTokenError);
    await expect(tokens.revokeJti(markerJti, 'attacker')).rejects.toBeInstanceOf(InvalidTokenError);
    const forged = await signToken({ jti: markerJti, sub: 'marker-owner' });
    await expect(tokens.storeToken({ token: forged, purpose: 'user' })).rejects.toBeInstanceOf(InvalidTokenError);
    await expect(tokens.revoke(forged)).rejects.toBeInstanceOf(InvalidTokenError);
    await expect(tokens.storeToken({ token, purpose: 'log_out_everywhere' })).rejects.toBeInstanceOf(TypeError);

    expect(await tokens.tokenRevoked(token)).toBe(true);
    const marker = await repo.findOneByOrFail({ jti: markerJti });
    expect(marker.purpose).toBe('log_out_everywhere');
    expect(marker.subject).toBe('marker-owner');
  });

  it('refuses a token without exp, which could be admitted but never revoked', async () => {
    const token = await signToken({ jti: 'no-exp', sub: 'someone' }, { omit: ['exp'] });
    expect(decodeJwt(token).exp).toBeUndefined();
    await expect(tokens.tokenRevoked(token)).rejects.toBeInstanceOf(InvalidTokenError);
    await expect(tokens.revoke(token)).rejects.toBeInstanceOf(InvalidTokenError);
  });

  it('writes the purpose into issued tokens', async () => {
    const { token } = await tokens.issueToken({ subject: 'someone', purpose: 'password_reset' });
    expect(decodeJwt(token).purpose).toBe('password_reset');
    expect(decodeJwt((await tokens.issueToken({ subject: 'someone' })).token).purpose).toBe('user');
  });
});
