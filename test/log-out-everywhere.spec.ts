import type { INestApplication } from '@nestjs/common';
import { SignJWT } from 'jose';
import type { DataSource } from 'typeorm';
import {
  LOG_OUT_EVERYWHERE_PURPOSE,
  LogOutEverywhereService,
  REVOCATION_PURPOSE,
  TokenService,
} from '../lib/index.js';
import { logOutMarkerJti, logOutMarkerRevokes } from '../lib/log-out-everywhere/log-out-marker.js';
import { createTestDatabase, type TestDatabase } from './support/test-database.js';
import { createTokenApp, dataSourceOf, TEST_SECRET } from './support/token-app.js';

/** LogOutEverywhereService (API.md, issue 5) against real PostgreSQL. */

let db: TestDatabase;
/** storeAllTokens: true — every issued token has a row. */
let storedApp: INestApplication;
/** storeAllTokens: false — tokens are never stored; only the marker can revoke them. */
let unstoredApp: INestApplication;
let stored: { tokens: TokenService; logOut: LogOutEverywhereService };
let unstored: { tokens: TokenService; logOut: LogOutEverywhereService };
let dataSource: DataSource;

function uniqueSubject(): string {
  return `subject-${Math.random().toString(36).slice(2)}`;
}

/** Spins until the application clock has moved past `ms`, so the next token is issued strictly later. */
async function clockPast(ms: number): Promise<void> {
  while (Date.now() <= ms) await new Promise((resolve) => setImmediate(resolve));
}

async function purposesOf(subject: string): Promise<Record<string, string>> {
  const rows: Array<{ jti: string; purpose: string }> = await dataSource.query('SELECT jti, purpose FROM tokens WHERE subject = $1', [subject]);
  return Object.fromEntries(rows.map((row) => [row.jti, row.purpose]));
}

/** A token signed the way another issuer would: whole-second `iat`. */
async function wholeSecondToken(sub: string, iat: number): Promise<{ token: string; jti: string }> {
  const jti = `ext-${Math.random().toString(36).slice(2)}`;
  const token = await new SignJWT({ sub, jti, iat, exp: iat + 3600 })
    .setProtectedHeader({ alg: 'HS256' })
    .sign(new TextEncoder().encode(TEST_SECRET));
  return { token, jti };
}

beforeAll(async () => {
  db = await createTestDatabase();
  storedApp = await createTokenApp(db.url, { options: { storeAllTokens: true, expunge: { enabled: false } } });
  unstoredApp = await createTokenApp(db.url, { options: { storeAllTokens: false, expunge: { enabled: false } } });
  stored = { tokens: storedApp.get(TokenService), logOut: storedApp.get(LogOutEverywhereService) };
  unstored = { tokens: unstoredApp.get(TokenService), logOut: unstoredApp.get(LogOutEverywhereService) };
  dataSource = dataSourceOf(storedApp);
});

afterAll(async () => {
  await unstoredApp?.close();
  await storedApp?.close();
  await db?.drop();
});

describe('stored tokens', () => {
  it('revokes every stored token of the subject, of every purpose, and none of another subject', async () => {
    const alice = uniqueSubject();
    const bob = uniqueSubject();
    const aliceTokens = await Promise.all(['user', 'user', 'remember_me', 'confirm'].map((purpose) => stored.tokens.issueToken({ subject: alice, purpose })));
    const bobTokens = await Promise.all(['user', 'remember_me'].map((purpose) => stored.tokens.issueToken({ subject: bob, purpose })));
    const alreadyRevoked = await stored.tokens.issueToken({ subject: alice });
    await stored.tokens.revoke(alreadyRevoked.token);

    expect(await stored.logOut.logOutEverywhere(alice)).toBe(4);

    const rows = await purposesOf(alice);
    for (const { jti, token } of aliceTokens) {
      expect(rows[jti]).toBe(REVOCATION_PURPOSE);
      expect(await stored.tokens.tokenRevoked(token)).toBe(true);
    }
    expect(rows[alreadyRevoked.jti]).toBe(REVOCATION_PURPOSE);
    expect(rows[logOutMarkerJti(alice)]).toBe(LOG_OUT_EVERYWHERE_PURPOSE);
    expect(Object.keys(rows)).toHaveLength(6);
    const bobRows = await purposesOf(bob);
    for (const { jti, token } of bobTokens) {
      expect(bobRows[jti]).not.toBe(REVOCATION_PURPOSE);
      expect(await stored.tokens.tokenRevoked(token)).toBe(false);
    }
    // A second log-out finds nothing left to revoke.
    expect(await stored.logOut.logOutEverywhere(alice)).toBe(0);
  });

  it('honours excludePurposes: excluded tokens keep their row and stay valid', async () => {
    const subject = uniqueSubject();
    const session = await stored.tokens.issueToken({ subject, purpose: 'user' });
    const confirm = await stored.tokens.issueToken({ subject, purpose: 'confirm' });
    expect(await stored.logOut.logOutEverywhere(subject, { excludePurposes: ['confirm'] })).toBe(1);
    const rows = await purposesOf(subject);
    expect(rows[session.jti]).toBe(REVOCATION_PURPOSE);
    expect(rows[confirm.jti]).toBe('confirm');
    expect(await stored.tokens.tokenRevoked(session.token)).toBe(true);
    // The marker does not revoke it either: its stored purpose was spared.
    expect(await stored.tokens.tokenRevoked(confirm.token)).toBe(false);
  });

  it('honours includePurposes, and a log-out that spares sessions leaves unstored sessions valid', async () => {
    const subject = uniqueSubject();
    const session = await stored.tokens.issueToken({ subject, purpose: 'user' });
    const rememberMe = await stored.tokens.issueToken({ subject, purpose: 'remember_me' });
    const confirm = await stored.tokens.issueToken({ subject, purpose: 'confirm' });
    const unstoredSession = await unstored.tokens.issueToken({ subject });
    expect(await stored.logOut.logOutEverywhere(subject, { includePurposes: ['remember_me', 'confirm'] })).toBe(2);
    const rows = await purposesOf(subject);
    expect(rows).toMatchObject({ [session.jti]: 'user', [rememberMe.jti]: REVOCATION_PURPOSE, [confirm.jti]: REVOCATION_PURPOSE });
    expect(await stored.tokens.tokenRevoked(session.token)).toBe(false);
    expect(await stored.tokens.tokenRevoked(rememberMe.token)).toBe(true);
    expect(await stored.tokens.tokenRevoked(unstoredSession.token)).toBe(false);
    expect(rows[logOutMarkerJti(subject)]).toBeUndefined();
  });

  it('module defaults apply when the call gives no lists', async () => {
    const app = await createTokenApp(db.url, {
      options: { storeAllTokens: true, expunge: { enabled: false }, logOutEverywhere: { excludePurposes: ['revocation', 'api_key'] } },
    });
    try {
      const subject = uniqueSubject();
      const tokens = app.get(TokenService);
      const apiKey = await tokens.issueToken({ subject, purpose: 'api_key' });
      const session = await tokens.issueToken({ subject });
      expect(await app.get(LogOutEverywhereService).logOutEverywhere(subject)).toBe(1);
      expect(await purposesOf(subject)).toMatchObject({ [apiKey.jti]: 'api_key', [session.jti]: REVOCATION_PURPOSE });
      expect(await tokens.tokenRevoked(apiKey.token)).toBe(false);
    } finally {
      await app.close();
    }
  });

  it('never touches revocation or marker rows, even when asked to include them', async () => {
    const subject = uniqueSubject();
    await stored.logOut.logOutEverywhere(subject);
    const revoked = await stored.tokens.issueToken({ subject });
    await stored.tokens.revoke(revoked.token);
    const count = await stored.logOut.logOutEverywhere(subject, { includePurposes: [REVOCATION_PURPOSE, LOG_OUT_EVERYWHERE_PURPOSE], excludePurposes: [] });
    expect(count).toBe(0);
    expect(await purposesOf(subject)).toEqual({ [revoked.jti]: REVOCATION_PURPOSE, [logOutMarkerJti(subject)]: LOG_OUT_EVERYWHERE_PURPOSE });
  });

  it('exceptJti keeps the current token valid and revokes the others', async () => {
    const subject = uniqueSubject();
    const current = await stored.tokens.issueToken({ subject });
    const others = await Promise.all([1, 2, 3].map(() => stored.tokens.issueToken({ subject })));
    expect(await stored.logOut.logOutEverywhere(subject, { exceptJti: current.jti })).toBe(3);
    expect((await purposesOf(subject))[current.jti]).toBe('user');
    expect(await stored.tokens.tokenRevoked(current.token)).toBe(false);
    for (const other of others) expect(await stored.tokens.tokenRevoked(other.token)).toBe(true);
  });

  it('joins the caller\'s transaction: rolled back, nothing is revoked', async () => {
    const subject = uniqueSubject();
    const token = await stored.tokens.issueToken({ subject });
    await dataSource.transaction(async (manager) => {
      expect(await stored.logOut.logOutEverywhere(subject, { manager })).toBe(1);
      // Inside the transaction the change is visible; outside it is not yet.
      expect((await manager.query('SELECT purpose FROM tokens WHERE jti = $1', [token.jti]))[0].purpose).toBe(REVOCATION_PURPOSE);
      expect(await stored.tokens.tokenRevoked(token.token)).toBe(false);
    });
    // Committed: revoked. Now roll one back.
    expect(await stored.tokens.tokenRevoked(token.token)).toBe(true);

    const secondSubject = uniqueSubject();
    const second = await stored.tokens.issueToken({ subject: secondSubject });
    await expect(dataSource.transaction(async (manager) => {
      await stored.logOut.logOutEverywhere(secondSubject, { manager });
      throw new Error('roll back');
    })).rejects.toThrow('roll back');
    expect((await purposesOf(secondSubject))).toEqual({ [second.jti]: 'user' });
    expect(await stored.tokens.tokenRevoked(second.token)).toBe(false);
  });

  it('rejects an empty subject and malformed lists', async () => {
    await expect(stored.logOut.logOutEverywhere('')).rejects.toThrow(TypeError);
    await expect(stored.logOut.logOutEverywhere('x', { includePurposes: [''] })).rejects.toThrow(TypeError);
    await expect(stored.logOut.logOutEverywhere('x', { excludePurposes: 'user' as unknown as string[] })).rejects.toThrow(TypeError);
  });
});

describe('unstored tokens (storeAllTokens: false): the marker', () => {
  it('revokes tokens issued before the log-out and not one issued after it (millisecond precision)', async () => {
    const subject = uniqueSubject();
    const before = await Promise.all([1, 2].map(() => unstored.tokens.issueToken({ subject })));
    expect(await purposesOf(subject)).toEqual({});
    const started = Date.now();
    expect(await unstored.logOut.logOutEverywhere(subject)).toBe(0);
    const marker = (await dataSource.query('SELECT extra_data FROM tokens WHERE jti = $1', [logOutMarkerJti(subject)]))[0].extra_data;
    expect(marker.at).toBeGreaterThanOrEqual(started);
    await clockPast(marker.at);
    const after = await unstored.tokens.issueToken({ subject });
    // Issued within a few milliseconds of the log-out, in the same second most of the time.
    expect(Date.now() - marker.at).toBeLessThan(1000);
    for (const { token } of before) expect(await unstored.tokens.tokenRevoked(token)).toBe(true);
    expect(await unstored.tokens.tokenRevoked(after.token)).toBe(false);
    // Other subjects are unaffected.
    const other = await unstored.tokens.issueToken({ subject: uniqueSubject() });
    expect(await unstored.tokens.tokenRevoked(other.token)).toBe(false);
  });

  it('a whole-second iat in the log-out\'s own second counts as revoked; the next second does not', async () => {
    const subject = uniqueSubject();
    await unstored.logOut.logOutEverywhere(subject);
    const { at } = (await dataSource.query('SELECT extra_data FROM tokens WHERE jti = $1', [logOutMarkerJti(subject)]))[0].extra_data;
    const sameSecond = await wholeSecondToken(subject, Math.floor(at / 1000));
    const nextSecond = await wholeSecondToken(subject, Math.floor(at / 1000) + 1);
    expect(await unstored.tokens.tokenRevoked(sameSecond.token)).toBe(true);
    expect(await unstored.tokens.tokenRevoked(nextSecond.token)).toBe(false);
  });

  it('a token stored later is still revoked by the marker (stored purpose covered)', async () => {
    const subject = uniqueSubject();
    const token = await unstored.tokens.issueToken({ subject });
    await unstored.logOut.logOutEverywhere(subject);
    await unstored.tokens.storeToken({ token: token.token, purpose: 'user' });
    expect(await unstored.tokens.tokenRevoked(token.token)).toBe(true);
  });

  it('exceptJti keeps the current unstored token valid', async () => {
    const subject = uniqueSubject();
    const current = await unstored.tokens.issueToken({ subject });
    const other = await unstored.tokens.issueToken({ subject });
    await unstored.logOut.logOutEverywhere(subject, { exceptJti: current.jti });
    expect(await unstored.tokens.tokenRevoked(current.token)).toBe(false);
    expect(await unstored.tokens.tokenRevoked(other.token)).toBe(true);
  });

  it('successive log-outs with different exceptJti: a token revoked once stays revoked', async () => {
    const subject = uniqueSubject();
    const phone = await unstored.tokens.issueToken({ subject });
    const laptop = await unstored.tokens.issueToken({ subject });
    // 1. From the phone: log out my other devices.
    await unstored.logOut.logOutEverywhere(subject, { exceptJti: phone.jti });
    expect(await unstored.tokens.tokenRevoked(phone.token)).toBe(false);
    expect(await unstored.tokens.tokenRevoked(laptop.token)).toBe(true);
    const first = (await dataSource.query('SELECT extra_data FROM tokens WHERE jti = $1', [logOutMarkerJti(subject)]))[0].extra_data;
    expect(first).toMatchObject({ exceptJti: phone.jti, exceptRevokedUpTo: 0 });

    // 2. Again from the phone: same exceptJti, the phone stays valid.
    await clockPast(first.at);
    await unstored.logOut.logOutEverywhere(subject, { exceptJti: phone.jti });
    expect(await unstored.tokens.tokenRevoked(phone.token)).toBe(false);
    const second = (await dataSource.query('SELECT extra_data FROM tokens WHERE jti = $1', [logOutMarkerJti(subject)]))[0].extra_data;
    expect(second.exceptRevokedUpTo).toBe(0);

    // 3. A new session logs in, then logs out the others "except me". The laptop token,
    // revoked by step 1, must not come back to life because the marker now excepts
    // another jti, and the phone token is now revoked too.
    await clockPast(second.at);
    const tablet = await unstored.tokens.issueToken({ subject });
    await unstored.logOut.logOutEverywhere(subject, { exceptJti: tablet.jti });
    const third = (await dataSource.query('SELECT extra_data FROM tokens WHERE jti = $1', [logOutMarkerJti(subject)]))[0].extra_data;
    expect(third).toMatchObject({ exceptJti: tablet.jti, exceptRevokedUpTo: second.at });
    expect(await unstored.tokens.tokenRevoked(tablet.token)).toBe(false);
    expect(await unstored.tokens.tokenRevoked(phone.token)).toBe(true);
    expect(await unstored.tokens.tokenRevoked(laptop.token)).toBe(true);

    // 4. Back to excepting the phone: the phone was revoked by step 3 and stays revoked,
    // because exceptRevokedUpTo now carries the step-3 moment.
    await clockPast(third.at);
    await unstored.logOut.logOutEverywhere(subject, { exceptJti: phone.jti });
    const fourth = (await dataSource.query('SELECT extra_data FROM tokens WHERE jti = $1', [logOutMarkerJti(subject)]))[0].extra_data;
    expect(fourth).toMatchObject({ exceptJti: phone.jti, exceptRevokedUpTo: third.at });
    expect(await unstored.tokens.tokenRevoked(phone.token)).toBe(true);
    expect(await unstored.tokens.tokenRevoked(tablet.token)).toBe(true);
  });

  it('the marker lives markerLifetime, never moves back in time, and never expires earlier', async () => {
    const subject = uniqueSubject();
    const app = await createTokenApp(db.url, { options: { expunge: { enabled: false }, logOutEverywhere: { markerLifetime: '1d' } } });
    try {
      await unstored.logOut.logOutEverywhere(subject); // 365 days
      const long = (await dataSource.query('SELECT expires_at, extra_data FROM tokens WHERE jti = $1', [logOutMarkerJti(subject)]))[0];
      expect(new Date(long.expires_at).getTime() - Date.now()).toBeGreaterThan(364 * 86400_000);
      // A later log-out with a shorter lifetime keeps the longer expiry.
      await app.get(LogOutEverywhereService).logOutEverywhere(subject);
      const kept = (await dataSource.query('SELECT expires_at FROM tokens WHERE jti = $1', [logOutMarkerJti(subject)]))[0];
      expect(new Date(kept.expires_at).getTime()).toBe(new Date(long.expires_at).getTime());
      // A marker written by an instance whose clock is behind does not move `at` back.
      await dataSource.query(`UPDATE tokens SET extra_data = jsonb_set(extra_data, '{at}', to_jsonb($2::float8)) WHERE jti = $1`, [logOutMarkerJti(subject), Date.now() + 60_000]);
      await unstored.logOut.logOutEverywhere(subject);
      const marker = (await dataSource.query('SELECT extra_data FROM tokens WHERE jti = $1', [logOutMarkerJti(subject)]))[0].extra_data;
      expect(marker.at).toBeGreaterThan(Date.now() + 50_000);

      const fresh = uniqueSubject();
      await app.get(LogOutEverywhereService).logOutEverywhere(fresh);
      const short = (await dataSource.query('SELECT expires_at FROM tokens WHERE jti = $1', [logOutMarkerJti(fresh)]))[0];
      expect(Math.abs(new Date(short.expires_at).getTime() - Date.now() - 86400_000)).toBeLessThan(60_000);
    } finally {
      await app.close();
    }
  });
});

describe('logOutMarkerRevokes', () => {
  const at = 1_763_900_000_123;
  it('is exact to the millisecond for issueToken\'s fractional iat, despite float rounding', () => {
    expect(logOutMarkerRevokes({ at }, 'j', at / 1000)).toBe(true);
    expect(logOutMarkerRevokes({ at }, 'j', (at - 1) / 1000)).toBe(true);
    expect(logOutMarkerRevokes({ at }, 'j', (at + 1) / 1000)).toBe(false);
    for (let ms = at - 500; ms < at + 500; ms += 1) {
      expect(logOutMarkerRevokes({ at }, 'j', ms / 1000)).toBe(ms <= at);
    }
  });
  it('counts a whole-second iat in the same second, or a missing iat, as revoked', () => {
    expect(logOutMarkerRevokes({ at }, 'j', Math.floor(at / 1000))).toBe(true);
    expect(logOutMarkerRevokes({ at }, 'j', Math.floor(at / 1000) + 1)).toBe(false);
    expect(logOutMarkerRevokes({ at }, 'j', undefined)).toBe(true);
  });
});
