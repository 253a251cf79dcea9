import type { INestApplication } from '@nestjs/common';
import { SignJWT } from 'jose';
import type { DataSource } from 'typeorm';
import { LogOutEverywhereService, RevocationCache, REVOCATION_PURPOSE, TokenService } from '../lib/index.js';
import { logOutMarkerJti, logOutMarkerRevokes, type LogOutLevel } from '../lib/log-out-everywhere/log-out-marker.js';
import { LOG_OUT_EVERYWHERE_PURPOSE } from '../lib/token-resource.internal-constants.js';
import { clockPast } from './support/clock.js';
import { uniqueSubject } from './support/jwt-fixtures.js';
import { listenerSocketOf } from './support/revocation-cache-listener.js';
import { createTestDatabase, type TestDatabase } from './support/test-database.js';
import { createTokenApp, dataSourceOf, TEST_SECRET } from './support/token-app.js';
import { waitFor } from './support/wait-for.js';

/** LogOutEverywhereService against real PostgreSQL. */

let db: TestDatabase;
/** storeAllTokens: true — every issued token has a row. */
let storedApp: INestApplication;
/** storeAllTokens: false — tokens are never stored; only the marker can revoke them. */
let unstoredApp: INestApplication;
let stored: { tokens: TokenService; logOut: LogOutEverywhereService };
let unstored: { tokens: TokenService; logOut: LogOutEverywhereService };
let dataSource: DataSource;

async function purposesOf(subject: string): Promise<Record<string, string>> {
  const rows: Array<{ jti: string; purpose: string }> = await dataSource.query('SELECT jti, purpose FROM tokens WHERE subject = $1', [
    subject,
  ]);
  return Object.fromEntries(rows.map((row) => [row.jti, row.purpose]));
}

/** The levels of the subject's marker: one per distinct purpose filter. */
async function levelsOf(subject: string): Promise<LogOutLevel[]> {
  const rows = await dataSource.query('SELECT extra_data FROM tokens WHERE jti = $1', [logOutMarkerJti(subject)]);
  return rows.length === 0 ? [] : Object.values((rows[0].extra_data as { levels: Record<string, LogOutLevel> }).levels);
}

/** The one level of the subject's marker, after log-outs that all used one purpose filter. */
async function onlyLevelOf(subject: string): Promise<LogOutLevel> {
  const levels = await levelsOf(subject);
  expect(levels).toHaveLength(1);
  return levels[0];
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
    const aliceTokens = await Promise.all(
      ['user', 'user', 'remember_me', 'confirm'].map((purpose) => stored.tokens.issueToken({ subject: alice, purpose })),
    );
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

  it('a purpose in both includePurposes and excludePurposes is excluded', async () => {
    const subject = uniqueSubject();
    const session = await stored.tokens.issueToken({ subject, purpose: 'user' });
    const confirm = await stored.tokens.issueToken({ subject, purpose: 'confirm' });
    expect(await stored.logOut.logOutEverywhere(subject, { includePurposes: ['user', 'confirm'], excludePurposes: ['confirm'] })).toBe(1);
    expect(await purposesOf(subject)).toMatchObject({ [session.jti]: REVOCATION_PURPOSE, [confirm.jti]: 'confirm' });
    expect(await stored.tokens.tokenRevoked(confirm.token)).toBe(false);
    expect(await stored.tokens.tokenRevoked(session.token)).toBe(true);
  });

  it('revokes and counts only unexpired tokens; an expired one keeps its row and is still reported revoked', async () => {
    const subject = uniqueSubject();
    const live = await stored.tokens.issueToken({ subject });
    // Issued two hours ago, expired an hour ago.
    const expired = await wholeSecondToken(subject, Math.floor(Date.now() / 1000) - 7200);
    await stored.tokens.storeToken({ token: expired.token, purpose: 'user' });
    expect(await stored.logOut.logOutEverywhere(subject)).toBe(1);
    expect(await purposesOf(subject)).toMatchObject({ [live.jti]: REVOCATION_PURPOSE, [expired.jti]: 'user' });
    // Issued before the log-out: the subject's marker still answers "revoked" for it.
    expect(await stored.tokens.tokenRevoked(expired.token)).toBe(true);
  });

  it('never touches revocation or marker rows, even when asked to include them', async () => {
    const subject = uniqueSubject();
    await stored.logOut.logOutEverywhere(subject);
    const revoked = await stored.tokens.issueToken({ subject });
    await stored.tokens.revoke(revoked.token);
    const count = await stored.logOut.logOutEverywhere(subject, {
      includePurposes: [REVOCATION_PURPOSE, LOG_OUT_EVERYWHERE_PURPOSE],
      excludePurposes: [],
    });
    expect(count).toBe(0);
    expect(await purposesOf(subject)).toEqual({
      [revoked.jti]: REVOCATION_PURPOSE,
      [logOutMarkerJti(subject)]: LOG_OUT_EVERYWHERE_PURPOSE,
    });
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

  it("joins the caller's transaction: rolled back, nothing is revoked", async () => {
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
    await expect(
      dataSource.transaction(async (manager) => {
        await stored.logOut.logOutEverywhere(secondSubject, { manager });
        throw new Error('roll back');
      }),
    ).rejects.toThrow('roll back');
    expect(await purposesOf(secondSubject)).toEqual({ [second.jti]: 'user' });
    expect(await stored.tokens.tokenRevoked(second.token)).toBe(false);
  });

  it("repeatAfterCommit: logs out again once the caller's transaction commits; by default it does not", async () => {
    for (const repeatAfterCommit of [true, undefined]) {
      const subject = uniqueSubject();
      const pending = await dataSource.transaction(async (manager) => {
        await stored.logOut.logOutEverywhere(subject, { manager, repeatAfterCommit });
        const [{ extra_data: inTransaction }] = await manager.query('SELECT extra_data FROM tokens WHERE jti = $1', [
          logOutMarkerJti(subject),
        ]);
        await clockPast((Object.values(inTransaction.levels)[0] as LogOutLevel).at);
        // Issued on another connection while the log-out is not committed yet.
        return unstored.tokens.issueToken({ subject });
      });
      expect({ repeatAfterCommit, revoked: await unstored.tokens.tokenRevoked(pending.token) }).toEqual({
        repeatAfterCommit,
        revoked: repeatAfterCommit === true,
      });
    }
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
    const marker = await onlyLevelOf(subject);
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

  it("a whole-second iat in the log-out's own second counts as revoked; the next second does not", async () => {
    const subject = uniqueSubject();
    await unstored.logOut.logOutEverywhere(subject);
    const { at } = await onlyLevelOf(subject);
    const sameSecond = await wholeSecondToken(subject, Math.floor(at / 1000));
    const nextSecond = await wholeSecondToken(subject, Math.floor(at / 1000) + 1);
    expect(await unstored.tokens.tokenRevoked(sameSecond.token)).toBe(true);
    // Until that second begins, its iat lies in the future, which no token may claim.
    await clockPast(Math.floor(at / 1000) * 1000 + 999);
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
    const first = await onlyLevelOf(subject);
    expect(first).toMatchObject({ exceptJti: phone.jti, exceptRevokedUpTo: 0 });

    // 2. Again from the phone: same exceptJti, the phone stays valid.
    await clockPast(first.at);
    await unstored.logOut.logOutEverywhere(subject, { exceptJti: phone.jti });
    expect(await unstored.tokens.tokenRevoked(phone.token)).toBe(false);
    const second = await onlyLevelOf(subject);
    expect(second.exceptRevokedUpTo).toBe(0);

    // 3. A new session logs in, then logs out the others "except me". The laptop token,
    // revoked by step 1, must not come back to life because the marker now excepts
    // another jti, and the phone token is now revoked too.
    await clockPast(second.at);
    const tablet = await unstored.tokens.issueToken({ subject });
    await unstored.logOut.logOutEverywhere(subject, { exceptJti: tablet.jti });
    const third = await onlyLevelOf(subject);
    expect(third).toMatchObject({ exceptJti: tablet.jti, exceptRevokedUpTo: second.at });
    expect(await unstored.tokens.tokenRevoked(tablet.token)).toBe(false);
    expect(await unstored.tokens.tokenRevoked(phone.token)).toBe(true);
    expect(await unstored.tokens.tokenRevoked(laptop.token)).toBe(true);

    // 4. Back to excepting the phone: the phone was revoked by step 3 and stays revoked,
    // because exceptRevokedUpTo now carries the step-3 moment.
    await clockPast(third.at);
    await unstored.logOut.logOutEverywhere(subject, { exceptJti: phone.jti });
    const fourth = await onlyLevelOf(subject);
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
      await dataSource.query(
        `
        UPDATE tokens SET extra_data = jsonb_set(extra_data, ARRAY['levels', (SELECT jsonb_object_keys(extra_data->'levels') LIMIT 1), 'at'], to_jsonb($2::float8))
         WHERE jti = $1`,
        [logOutMarkerJti(subject), Date.now() + 60_000],
      );
      await unstored.logOut.logOutEverywhere(subject);
      const marker = await onlyLevelOf(subject);
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

describe('with the revocation cache on, a log-out inside a transaction takes effect on its own instance as soon as it commits', () => {
  let cachedApp: INestApplication;
  let socket: { pause(): void; resume(): void };

  beforeAll(async () => {
    // A bound far longer than the test: the cache stays fresh while its listener is held.
    cachedApp = await createTokenApp(db.url, {
      options: { expunge: { enabled: false }, revocationCache: { enabled: true, maxStalenessMs: 60_000 } },
    });
    const cache = cachedApp.get(RevocationCache);
    await waitFor(() => cache.fresh, 10_000, 'the revocation cache to be fresh');
    // Its own notification must not be what it relies on: stop reading the listener's socket.
    socket = listenerSocketOf(cachedApp);
    socket.pause();
  });

  afterAll(async () => {
    socket?.resume();
    await cachedApp?.close();
  });

  it.each(['the transaction', 'a released savepoint'])(
    'log-out in %s, a check before the commit re-caches "no marker", the commit drops it',
    async (where) => {
      const tokens = cachedApp.get(TokenService);
      const logOut = cachedApp.get(LogOutEverywhereService);
      const subject = uniqueSubject();
      const { token } = await tokens.issueToken({ subject });
      expect(await tokens.tokenRevoked(token)).toBe(false);
      await dataSourceOf(cachedApp).transaction(async (manager) => {
        if (where === 'the transaction') await logOut.logOutEverywhere(subject, { manager });
        else await manager.transaction((savepoint) => logOut.logOutEverywhere(subject, { manager: savepoint }));
        // Not committed: a check on another connection reads the old state, and caches it.
        expect(await tokens.tokenRevoked(token)).toBe(false);
        expect(cachedApp.get(RevocationCache).lookupMarker(subject)).toBeNull();
      });
      expect(cachedApp.get(RevocationCache).fresh).toBe(true);
      expect(await tokens.tokenRevoked(token)).toBe(true);
    },
  );
});

describe('several log-out levels combine, never replace each other', () => {
  it('a later, narrower log-out does not spare a token an earlier, wider one revoked, once it is stored with a purpose only the wider covers', async () => {
    const subject = uniqueSubject();
    const confirm = await unstored.tokens.issueToken({ subject, purpose: 'confirm' });
    // t1: every purpose. The confirmation token was never stored: the marker revokes it.
    await unstored.logOut.logOutEverywhere(subject);
    expect(await unstored.tokens.tokenRevoked(confirm.token)).toBe(true);
    // t2: sessions only.
    await clockPast(Date.now());
    await unstored.logOut.logOutEverywhere(subject, { includePurposes: ['user'] });
    // Storing it now gives it a purpose the t2 log-out spares; the t1 log-out did not.
    await unstored.tokens.storeToken({ token: confirm.token, purpose: 'confirm' });
    expect(await unstored.tokens.tokenRevoked(confirm.token)).toBe(true);
  });

  it('narrower, then wider, then narrower again: each level keeps revoking what it covers', async () => {
    const subject = uniqueSubject();
    const beforeNarrow = await unstored.tokens.issueToken({ subject, purpose: 'confirm' });
    await unstored.logOut.logOutEverywhere(subject, { includePurposes: ['user'] });
    await clockPast(Date.now());
    const beforeWide = await unstored.tokens.issueToken({ subject, purpose: 'confirm' });
    await unstored.logOut.logOutEverywhere(subject);
    await clockPast(Date.now());
    const afterWide = await unstored.tokens.issueToken({ subject, purpose: 'confirm' });
    const sessionAfterWide = await unstored.tokens.issueToken({ subject });
    await unstored.logOut.logOutEverywhere(subject, { includePurposes: ['user'] });
    const levels = await levelsOf(subject);
    expect(levels).toHaveLength(2);
    const narrow = levels.find((level) => level.includePurposes !== undefined)!;
    const wide = levels.find((level) => level.includePurposes === undefined)!;
    expect(narrow.includePurposes).toEqual(['user']);
    expect(narrow.at).toBeGreaterThan(wide.at);
    await clockPast(narrow.at);
    const fresh = await unstored.tokens.issueToken({ subject });

    for (const { token } of [beforeNarrow, beforeWide, afterWide]) await unstored.tokens.storeToken({ token, purpose: 'confirm' });
    // The wide log-out covers 'confirm' up to its moment; the narrow ones never did.
    expect(await unstored.tokens.tokenRevoked(beforeNarrow.token)).toBe(true);
    expect(await unstored.tokens.tokenRevoked(beforeWide.token)).toBe(true);
    expect(await unstored.tokens.tokenRevoked(afterWide.token)).toBe(false);
    expect(await unstored.tokens.tokenRevoked(sessionAfterWide.token)).toBe(true);
    expect(await unstored.tokens.tokenRevoked(fresh.token)).toBe(false);
  });

  it('exceptJti belongs to its level: keeping a token in one level does not un-revoke it in another', async () => {
    const subject = uniqueSubject();
    const phone = await unstored.tokens.issueToken({ subject });
    const laptop = await unstored.tokens.issueToken({ subject, purpose: 'remember_me' });
    // 1. From the phone, every purpose: the laptop is revoked.
    await unstored.logOut.logOutEverywhere(subject, { exceptJti: phone.jti });
    expect(await unstored.tokens.tokenRevoked(phone.token)).toBe(false);
    expect(await unstored.tokens.tokenRevoked(laptop.token)).toBe(true);
    // 2. From the laptop, sessions only: the phone is revoked, and the laptop's own
    // exception does not bring it back, although step 2 does not cover 'remember_me'.
    await clockPast(Date.now());
    await unstored.logOut.logOutEverywhere(subject, { includePurposes: ['user'], exceptJti: laptop.jti });
    await unstored.tokens.storeToken({ token: laptop.token, purpose: 'remember_me' });
    expect(await unstored.tokens.tokenRevoked(laptop.token)).toBe(true);
    expect(await unstored.tokens.tokenRevoked(phone.token)).toBe(true);
    // 3. From the phone again, every purpose: its level still excepts the phone, but the
    // sessions-only level revoked the phone at step 2, so it stays revoked.
    await clockPast(Date.now());
    const tablet = await unstored.tokens.issueToken({ subject });
    await unstored.logOut.logOutEverywhere(subject, { exceptJti: phone.jti });
    expect(await unstored.tokens.tokenRevoked(phone.token)).toBe(true);
    expect(await unstored.tokens.tokenRevoked(laptop.token)).toBe(true);
    expect(await unstored.tokens.tokenRevoked(tablet.token)).toBe(true);
    const levels = await levelsOf(subject);
    expect(levels).toHaveLength(2);
    expect(levels.find((level) => level.includePurposes === undefined)).toMatchObject({ exceptJti: phone.jti, exceptRevokedUpTo: 0 });
    expect(levels.find((level) => level.includePurposes !== undefined)).toMatchObject({ exceptJti: laptop.jti, exceptRevokedUpTo: 0 });
  });

  it('equal filters given in another order, or with duplicates, share one level', async () => {
    const subject = uniqueSubject();
    await unstored.logOut.logOutEverywhere(subject, { excludePurposes: ['revocation', 'api_key'] });
    await unstored.logOut.logOutEverywhere(subject, { excludePurposes: ['api_key', 'revocation', 'api_key'] });
    expect((await onlyLevelOf(subject)).excludePurposes).toEqual(['api_key', 'revocation']);
  });
});

describe('logOutMarkerRevokes', () => {
  const at = 1_763_900_000_123;
  const oneLevel = { levels: { all: { at } } };
  it("is exact to the millisecond for issueToken's fractional iat, despite float rounding", () => {
    expect(logOutMarkerRevokes(oneLevel, 'j', at / 1000)).toBe(true);
    expect(logOutMarkerRevokes(oneLevel, 'j', (at - 1) / 1000)).toBe(true);
    expect(logOutMarkerRevokes(oneLevel, 'j', (at + 1) / 1000)).toBe(false);
    for (let ms = at - 500; ms < at + 500; ms += 1) {
      expect(logOutMarkerRevokes(oneLevel, 'j', ms / 1000)).toBe(ms <= at);
    }
  });
  it('revokes when any level does, each level with its own filter and exceptJti', () => {
    const marker = {
      levels: {
        everything: { at, exceptJti: 'kept', exceptRevokedUpTo: 0, excludePurposes: ['revocation'] },
        confirmations: { at: at - 1000, includePurposes: ['confirm'], excludePurposes: [] },
      },
    };
    // Kept by the wide level, but the narrower, earlier one covers it.
    expect(logOutMarkerRevokes(marker, 'kept', (at - 2000) / 1000, 'confirm')).toBe(true);
    expect(logOutMarkerRevokes(marker, 'kept', (at - 2000) / 1000)).toBe(true);
    // Issued after the narrower one: only the wide level could, and it keeps it.
    expect(logOutMarkerRevokes(marker, 'kept', (at - 500) / 1000, 'confirm')).toBe(false);
    expect(logOutMarkerRevokes(marker, 'kept', (at - 2000) / 1000, 'user')).toBe(false);
    expect(logOutMarkerRevokes(marker, 'other', at / 1000, 'user')).toBe(true);
    expect(logOutMarkerRevokes(marker, 'other', (at + 1) / 1000, 'user')).toBe(false);
  });
  it('counts a whole-second iat in the same second, or a missing iat, as revoked', () => {
    expect(logOutMarkerRevokes(oneLevel, 'j', Math.floor(at / 1000))).toBe(true);
    expect(logOutMarkerRevokes(oneLevel, 'j', Math.floor(at / 1000) + 1)).toBe(false);
    expect(logOutMarkerRevokes(oneLevel, 'j', undefined)).toBe(true);
  });
});
