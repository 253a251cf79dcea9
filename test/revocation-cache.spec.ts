import { Logger, type INestApplication } from '@nestjs/common';
import { jest } from '@jest/globals';
import pg from 'pg';
import { LogOutEverywhereService, RevocationCache, Token, TokenService } from '../lib/index.js';
import { TokenCodec } from '../lib/jwt/token-codec.js';
import { LISTENER_APPLICATION_NAME } from '../lib/revocation-cache/revocation.cache.js';
import { TokenStore } from '../lib/token.store.js';
import { signToken, uniqueSubject } from './support/jwt-fixtures.js';
import { listenerOf, listenerSocketOf } from './support/revocation-cache-listener.js';
import { createTestDatabase, type TestDatabase } from './support/test-database.js';
import { createTokenApp, dataSourceOf } from './support/token-app.js';
import { User } from './support/user.entity.js';
import { waitFor } from './support/wait-for.js';

/** RevocationCache: checks from memory, with a tested bound on how stale a revocation may be. */

/**
 * The tests of the mechanics run with a bound so large that a busy CI machine (GC pauses,
 * parallel test files) never lets the cache go stale under them; the tests of the bound
 * itself run on instances of their own with a short one.
 */
const MAX_STALENESS_MS = 5000;
const CACHED = {
  revocationCache: { enabled: true, maxStalenessMs: MAX_STALENESS_MS },
  storeAllTokens: true,
  requireTokenPresenceForAuthentication: true,
  logOutEverywhere: { applyOnPasswordChange: true, userEntity: User },
  expunge: { enabled: false },
};
const SHORT_BOUND_MS = 400;
/** Leeway for timers and polling on a loaded machine; far below what a missing bound would take. */
const MARGIN_MS = 600;

let db: TestDatabase;
/** Two application instances sharing one database, both caching. */
let here: INestApplication;
let there: INestApplication;
const apps: INestApplication[] = [];

async function instance(options: object): Promise<INestApplication> {
  const app = await createTokenApp(db.url, { options, typeOrm: { entities: [Token, User] } });
  apps.push(app);
  return app;
}

/** The names of the revoked-check statements an instance sends while `work` runs. */
async function statementsDuring(app: INestApplication, work: () => Promise<unknown>): Promise<string[]> {
  const store = app.get(TokenStore);
  const query = jest.spyOn(store, 'query');
  try {
    await work();
    return query.mock.calls.map(([statement]) => statement.name.replace(/_[0-9a-f]+$/, ''));
  } finally {
    query.mockRestore();
  }
}

/**
 * Expects `work` to be answered from memory. A check whose database read raced a poll that
 * applied some other write keeps no answer (it may predate that write), so the first few
 * repeats may still read; a cache that never answers fails.
 */
async function expectAnsweredFromMemory(app: INestApplication, work: () => Promise<unknown>): Promise<void> {
  let statements: string[] = [];
  for (let attempt = 0; attempt < 5; attempt++) {
    statements = await statementsDuring(app, work);
    if (statements.length === 0) return;
  }
  expect(statements).toEqual([]);
}

async function freshCache(app: INestApplication): Promise<RevocationCache> {
  const cache = app.get(RevocationCache);
  await waitFor(() => cache.fresh, 10_000, 'the revocation cache to be fresh');
  return cache;
}

/** What the guard would decide about `token` on `app`: admitted, or refused. */
async function admits(app: INestApplication, token: string): Promise<boolean> {
  const { revoked, presentForAuthentication } = await app.get(TokenService).checkClaims(await app.get(TokenCodec).verify(token, true));
  return !revoked && presentForAuthentication;
}

/**
 * Holds the first statement whose name starts with `name` on its way through the store,
 * either before it is sent (a check waiting for a pooled connection) or once its answer
 * is in (a read in flight), until `release()`.
 */
function holdFirst(store: TokenStore, name: string, where: 'before it is sent' | 'once it is answered') {
  const query = store.query.bind(store);
  let release!: () => void;
  const gate = new Promise<void>((resolve) => {
    release = resolve;
  });
  const state = {
    reached: false,
    release: () => release(),
    restore: () => {
      release();
      spy.mockRestore();
    },
  };
  const spy = jest.spyOn(store, 'query').mockImplementation(async (statement, values) => {
    const mine = statement.name.startsWith(name) && !state.reached;
    if (mine && where === 'before it is sent') {
      state.reached = true;
      await gate;
    }
    const result = await query(statement, values);
    if (mine && where === 'once it is answered') {
      state.reached = true;
      await gate;
    }
    return result;
  });
  return state;
}

beforeAll(async () => {
  db = await createTestDatabase();
  here = await instance(CACHED);
  await dataSourceOf(here).query('CREATE TABLE users (id serial PRIMARY KEY, email text NOT NULL, "hashedPassword" text NOT NULL)');
  there = await instance(CACHED);
});

afterAll(async () => {
  for (const app of apps) await app.close();
  await db.drop();
});

/** A subject that `logOutEverywhere.subjectOf` gives for a new user, so that its password can change. */
async function newUser(app: INestApplication): Promise<string> {
  const users = dataSourceOf(app).getRepository(User);
  const user = await users.save(users.create({ email: `${uniqueSubject()}@example.com`, hashedPassword: 'old-hash' }));
  return String(user.id);
}

describe('RevocationCache', () => {
  it('is off by default: every check reads both keys and nothing listens', async () => {
    const plain = await instance({ expunge: { enabled: false } });
    const { token } = await plain.get(TokenService).issueToken({ subject: uniqueSubject() });
    const sent = await statementsDuring(plain, async () => {
      for (let i = 0; i < 3; i++) await plain.get(TokenService).tokenRevoked(token);
    });
    expect(sent).toEqual(['ntr_token_state', 'ntr_token_state', 'ntr_token_state']);
    expect(plain.get(RevocationCache).fresh).toBe(false);
  });

  it('listens on one connection per instance, and checks a token it has seen without a statement', async () => {
    await freshCache(here);
    const listening = await dataSourceOf(here).query(
      `SELECT count(*)::int AS n FROM pg_stat_activity WHERE datname = current_database() AND application_name = $1`,
      [LISTENER_APPLICATION_NAME],
    );
    expect(listening[0].n).toBe(2);

    const { token } = await here.get(TokenService).issueToken({ subject: uniqueSubject() });
    const first = await statementsDuring(here, async () => expect(await admits(here, token)).toBe(true));
    expect(first).toEqual(['ntr_token_state']);
    const again = await statementsDuring(here, async () => {
      for (let i = 0; i < 3; i++) expect(await admits(here, token)).toBe(true);
    });
    expect(again).toEqual([]);
  });

  it('reads only the token row for a new token of a subject whose marker it knows', async () => {
    await freshCache(here);
    const subject = uniqueSubject();
    const tokens = here.get(TokenService);
    expect(await admits(here, (await tokens.issueToken({ subject })).token)).toBe(true);
    const { token } = await tokens.issueToken({ subject });
    expect(await statementsDuring(here, async () => expect(await admits(here, token)).toBe(true))).toEqual(['ntr_own_state']);
    await expectAnsweredFromMemory(here, async () => expect(await admits(here, token)).toBe(true));
  });

  const WRITES: Array<[string, (subject: string, token: string, jti: string) => Promise<unknown>]> = [
    ['revoke', (_subject, token) => here.get(TokenService).revoke(token)],
    ['revokeJti', (subject, _token, jti) => here.get(TokenService).revokeJti(jti, subject)],
    ['logOutEverywhere', (subject) => here.get(LogOutEverywhereService).logOutEverywhere(subject)],
    [
      'a password change (applyOnPasswordChange)',
      async (subject) => {
        const users = dataSourceOf(here).getRepository(User);
        const user = await users.findOneByOrFail({ id: Number(subject) });
        user.hashedPassword = 'new-hash';
        await users.save(user);
      },
    ],
  ];

  it.each(WRITES)(
    'a token cached as admitted on one instance is refused within maxStalenessMs after %s on another',
    async (label, write) => {
      await freshCache(there);
      const subject = label.startsWith('a password change') ? await newUser(here) : uniqueSubject();
      const { token, jti } = await there.get(TokenService).issueToken({ subject });
      expect(await admits(there, token)).toBe(true);
      await expectAnsweredFromMemory(there, async () => expect(await admits(there, token)).toBe(true));

      await write(subject, token, jti);
      await waitFor(async () => !(await admits(there, token)), MAX_STALENESS_MS, `the other instance to see the ${label}`, 5);
      expect(there.get(RevocationCache).fresh).toBe(true);
    },
  );

  it('a token cached as not stored on one instance is admitted within maxStalenessMs of its storeToken on another', async () => {
    await freshCache(there);
    const token = await signToken({ sub: uniqueSubject() });
    expect(await admits(there, token)).toBe(false);
    await expectAnsweredFromMemory(there, async () => expect(await admits(there, token)).toBe(false));

    await here.get(TokenService).storeToken({ token, purpose: 'user' });
    await waitFor(async () => admits(there, token), MAX_STALENESS_MS, 'the other instance to see the stored token', 5);
  });

  it('answers jtiRevoked of a jti seen before from memory, stored or not', async () => {
    await freshCache(there);
    const tokensThere = there.get(TokenService);
    const { jti } = await tokensThere.issueToken({ subject: uniqueSubject() });
    for (const seen of [jti, `never-stored-${uniqueSubject()}`]) {
      expect(await tokensThere.jtiRevoked(seen)).toBe(false);
      await expectAnsweredFromMemory(there, async () => expect(await tokensThere.jtiRevoked(seen)).toBe(false));
    }
  });

  it("sees another instance's revokeJti in jtiRevoked within maxStalenessMs, then answers it from memory", async () => {
    await freshCache(there);
    const tokensThere = there.get(TokenService);
    const subject = uniqueSubject();
    const { jti } = await tokensThere.issueToken({ subject });
    const unstored = `never-stored-${uniqueSubject()}`;
    for (const seen of [jti, unstored]) {
      expect(await tokensThere.jtiRevoked(seen)).toBe(false);
      await expectAnsweredFromMemory(there, () => tokensThere.jtiRevoked(seen));
    }
    const revokedAt = Date.now();
    await here.get(TokenService).revokeJti(jti, subject);
    await here.get(TokenService).revokeJti(unstored, subject);
    const bothRevoked = async () => (await tokensThere.jtiRevoked(jti)) && (await tokensThere.jtiRevoked(unstored));
    await waitFor(bothRevoked, MAX_STALENESS_MS, 'the other instance to see the revocations', 5);
    expect(Date.now() - revokedAt).toBeLessThanOrEqual(MAX_STALENESS_MS + MARGIN_MS);
    // A read in flight when an announcement was heard is not kept: the next call may read once more.
    expect(await bothRevoked()).toBe(true);
    await expectAnsweredFromMemory(there, async () => expect(await bothRevoked()).toBe(true));
  });

  it("reads an expired revocation row's jti from the database again in jtiRevoked: the expunger deletes it unannounced", async () => {
    const cache = await freshCache(there);
    const jti = `expiring-${uniqueSubject()}`;
    await there.get(TokenService).revokeJti(jti, uniqueSubject(), { expiresAt: new Date(Date.now() + 1000) });
    // Its own announcement, heard after the first read, may keep that read out of the cache.
    await waitFor(
      async () => (await there.get(TokenService).jtiRevoked(jti)) && cache.lookupToken(jti) !== undefined,
      5000,
      'the row cached',
    );
    const row = cache.lookupToken(jti);
    expect(row?.purpose).toBe('revocation');
    await new Promise((resolve) => setTimeout(resolve, Math.max(0, row!.expiresMs - Date.now()) + 10));
    await dataSourceOf(there).query('DELETE FROM tokens WHERE jti = $1', [jti]);
    expect(await there.get(TokenService).jtiRevoked(jti)).toBe(false);
  });

  it('judges a cached row live when the answer is used, not when it was read', async () => {
    await freshCache(here);
    const { token, jti } = await here.get(TokenService).issueToken({ subject: uniqueSubject(), expiresIn: 2 });
    expect(await admits(here, token)).toBe(true);
    const row = here.get(RevocationCache).lookupToken(jti);
    expect(row).toEqual({ purpose: 'user', expiresMs: expect.any(Number) as number });
    await new Promise((resolve) => setTimeout(resolve, Math.max(0, row!.expiresMs - Date.now()) + 10));
    const sent = await statementsDuring(here, async () => {
      const check = await here.get(TokenService).checkClaims(await here.get(TokenCodec).verify(token, true));
      expect(check).toEqual({ revoked: false, presentForAuthentication: false });
    });
    expect(sent).toEqual([]);
  });

  it('sees its own writes at once, without its own announcements, also when a transaction commits', async () => {
    await freshCache(here);
    const tokens = here.get(TokenService);
    const subject = uniqueSubject();
    const [direct, inTransaction, bystander] = await Promise.all([1, 2, 3].map(() => tokens.issueToken({ subject: uniqueSubject() })));
    const mine = await tokens.issueToken({ subject });
    for (const { token } of [direct, inTransaction, bystander, mine]) expect(await admits(here, token)).toBe(true);
    // Its own notifications must not be what it relies on: hold the listener's socket.
    const socket = listenerSocketOf(here);
    socket.pause();
    try {
      await tokens.revoke(direct.token);
      expect(await admits(here, direct.token)).toBe(false);
      await here.get(LogOutEverywhereService).logOutEverywhere(subject);
      expect(await admits(here, mine.token)).toBe(false);
      await dataSourceOf(here).transaction(async (manager) => {
        await tokens.revoke(inTransaction.token, { manager });
        // Not committed: a check on another connection reads the old state, and caches it.
        expect(await admits(here, inTransaction.token)).toBe(true);
        expect(here.get(RevocationCache).lookupToken(inTransaction.jti)).not.toBeUndefined();
      });
      expect(here.get(RevocationCache).fresh).toBe(true);
      expect(await admits(here, inTransaction.token)).toBe(false);
      expect(await admits(here, bystander.token)).toBe(true);
    } finally {
      socket.resume();
    }
  });

  it('re-reads the marker when a log-out was announced while the check waited for a connection', async () => {
    await freshCache(there);
    const user = uniqueSubject();
    const tokensThere = there.get(TokenService);
    const cache = there.get(RevocationCache);
    const first = (await tokensThere.issueToken({ subject: user })).token;
    // A check caches "no marker" for the subject; a fill that raced a poll applying another
    // suite's write keeps no answer, so check again until one is kept.
    await waitFor(
      async () => !(await tokensThere.tokenRevoked(first)) && cache.lookupMarker(user) === null,
      5000,
      'the cache to hold no marker',
      5,
    );
    const { token } = await tokensThere.issueToken({ subject: user });

    // The check has looked up "no marker" and now waits for a pooled connection, during
    // which the subject is logged out and the log-out announced.
    const held = holdFirst(there.get(TokenStore), 'ntr_own_state', 'before it is sent');
    try {
      const check = tokensThere.tokenRevoked(token);
      await waitFor(() => held.reached, 5000, 'the check to wait');
      await here.get(LogOutEverywhereService).logOutEverywhere(user);
      await waitFor(() => cache.lookupMarker(user) === undefined, MAX_STALENESS_MS, 'the log-out to be announced');
      held.release();
      expect(await check).toBe(true);
    } finally {
      held.restore();
    }
  });

  it('announces a log-out inside a transaction when it commits, and never when it rolls back', async () => {
    await freshCache(there);
    const rolledBack = uniqueSubject();
    const committed = uniqueSubject();
    const tokensThere = there.get(TokenService);
    const a = (await tokensThere.issueToken({ subject: rolledBack })).token;
    const b = (await tokensThere.issueToken({ subject: committed })).token;
    expect(await tokensThere.tokenRevoked(a)).toBe(false);
    expect(await tokensThere.tokenRevoked(b)).toBe(false);

    const logOut = here.get(LogOutEverywhereService);
    await expect(
      dataSourceOf(here).transaction(async (manager) => {
        await logOut.logOutEverywhere(rolledBack, { manager });
        throw new Error('roll back');
      }),
    ).rejects.toThrow('roll back');
    await dataSourceOf(here).transaction(async (manager) => {
      await logOut.logOutEverywhere(committed, { manager });
      // Not committed yet: the other instance must still say "not revoked", from its cache or not.
      expect(await tokensThere.tokenRevoked(b)).toBe(false);
    });
    await waitFor(async () => tokensThere.tokenRevoked(b), MAX_STALENESS_MS, 'the other instance to see the committed log-out', 5);
    // The rolled-back log-out left the cached answers in place: no statement at all.
    const sent = await statementsDuring(there, async () => expect(await tokensThere.tokenRevoked(a)).toBe(false));
    expect(sent).toEqual([]);
  });

  it('forgets at the commit only what the transaction kept: not a revocation rolled back to a savepoint', async () => {
    const cache = await freshCache(here);
    const tokensHere = here.get(TokenService);
    const kept = await tokensHere.issueToken({ subject: uniqueSubject() });
    const undone = await tokensHere.issueToken({ subject: uniqueSubject() });
    await dataSourceOf(here).transaction(async (manager) => {
      await tokensHere.revoke(kept.token, { manager });
      await expect(
        manager.transaction(async (savepoint) => {
          await tokensHere.revoke(undone.token, { manager: savepoint });
          throw new Error('roll back');
        }),
      ).rejects.toThrow('roll back');
      // Checked on another connection while the transaction is open, and cached again: the
      // revocation that was rolled back to the savepoint never happened.
      await waitFor(
        async () => !(await tokensHere.tokenRevoked(undone.token)) && cache.lookupToken(undone.jti) !== undefined,
        5000,
        'the cache to hold an answer about the token',
        5,
      );
    });
    expect(await tokensHere.tokenRevoked(kept.token)).toBe(true);
    const sent = await statementsDuring(here, async () => expect(await tokensHere.tokenRevoked(undone.token)).toBe(false));
    expect(sent).toEqual([]);
  });

  it('announces a revocation inside a transaction when it commits, and never when it rolls back', async () => {
    await freshCache(there);
    const tokensThere = there.get(TokenService);
    const [rolledBack, committed] = await Promise.all([0, 1].map(() => tokensThere.issueToken({ subject: uniqueSubject() })));
    for (const { token } of [rolledBack, committed]) expect(await admits(there, token)).toBe(true);

    const tokensHere = here.get(TokenService);
    await expect(
      dataSourceOf(here).transaction(async (manager) => {
        await tokensHere.revoke(rolledBack.token, { manager });
        throw new Error('roll back');
      }),
    ).rejects.toThrow('roll back');
    await dataSourceOf(here).transaction(async (manager) => {
      await tokensHere.revokeJti(committed.jti, (await there.get(TokenCodec).verify(committed.token, true)).sub!, { manager });
      expect(await admits(there, committed.token)).toBe(true);
    });
    await waitFor(async () => !(await admits(there, committed.token)), MAX_STALENESS_MS, 'the committed revocation to be heard', 5);
    await expectAnsweredFromMemory(there, async () => expect(await admits(there, rolledBack.token)).toBe(true));
  });

  it.each([
    ['a revocation', (_user: string, token: string) => here.get(TokenService).revoke(token)],
    ['a log-out', (user: string) => here.get(LogOutEverywhereService).logOutEverywhere(user)],
  ])('does not keep an answer read before %s that was announced while the read was in flight', async (_label, write) => {
    await freshCache(there);
    const user = uniqueSubject();
    const tokensThere = there.get(TokenService);
    const { token, jti } = await tokensThere.issueToken({ subject: user });
    const cache = there.get(RevocationCache);
    const held = holdFirst(there.get(TokenStore), 'ntr_token_state', 'once it is answered');
    try {
      // The read sees the token unrevoked; the write commits and is announced before the answer lands.
      const stale = tokensThere.tokenRevoked(token);
      await waitFor(() => held.reached, 5000, 'the read to be answered');
      const ticket = cache.ticket();
      await write(user, token);
      await waitFor(() => cache.ticket() !== ticket, MAX_STALENESS_MS, 'the write to be announced');
      held.release();
      expect(await stale).toBe(false);
    } finally {
      held.restore();
    }
    expect(cache.lookupToken(jti)).toBeUndefined();
    expect(cache.lookupMarker(user)).toBeUndefined();
    expect(await tokensThere.tokenRevoked(token)).toBe(true);
  });

  it("sees the log-out of the longest subject (1024 bytes of UTF-8): it drops that subject's tokens, others stay cached", async () => {
    const cache = await freshCache(there);
    const tokensThere = there.get(TokenService);
    const user = 'é'.repeat(512);
    const bystander = uniqueSubject();
    const { token, jti } = await tokensThere.issueToken({ subject: user });
    const other = await tokensThere.issueToken({ subject: bystander });
    expect(await tokensThere.tokenRevoked(token)).toBe(false);
    expect(await tokensThere.tokenRevoked(other.token)).toBe(false);
    await here.get(LogOutEverywhereService).logOutEverywhere(user);
    await waitFor(() => cache.lookupToken(jti) === undefined, MAX_STALENESS_MS, 'the log-out to be polled');
    expect(cache.lookupMarker(user)).toBeUndefined();
    expect(await tokensThere.tokenRevoked(token)).toBe(true);
    expect(cache.lookupMarker(bystander)).toBeNull();
    expect(cache.lookupToken(other.jti)).not.toBeUndefined();
  });

  it("drops a token's answer on a log-out of its row's subject, whatever sub the checked token claims", async () => {
    const cache = await freshCache(there);
    const [owner, claimed, jti] = [uniqueSubject(), uniqueSubject(), `shared-${uniqueSubject()}`];
    await here.get(TokenService).storeToken({ token: await signToken({ jti, sub: owner }), purpose: 'user' });
    // Another token with the same jti: the check reads the owner's row for it.
    const token = await signToken({ jti, sub: claimed });
    // The store's wake-up, heard after the first read, may keep that read out of the cache.
    await waitFor(async () => (await admits(there, token)) && cache.lookupToken(jti) !== undefined, 5000, 'the row cached');
    await here.get(LogOutEverywhereService).logOutEverywhere(owner, { revokeUnstored: false });
    await waitFor(async () => !(await admits(there, token)), MAX_STALENESS_MS, "the log-out of the row's subject to be heard", 5);
    expect(cache.lookupMarker(claimed)).toBeNull();
  });

  it('on a wake-up, drops only the answers it names: any session may NOTIFY, and must not make it answer wrong', async () => {
    const cache = await freshCache(there);
    const tokensThere = there.get(TokenService);
    const [kept, named, written] = await Promise.all([0, 1, 2].map(() => tokensThere.issueToken({ subject: uniqueSubject() })));
    const keptSubject = (await there.get(TokenCodec).verify(kept.token, true)).sub!;
    for (const { token } of [kept, named, written]) expect(await tokensThere.tokenRevoked(token)).toBe(false);
    // A first line names the sender; names follow one a line. Malformed ones drop nothing.
    await dataSourceOf(here).query('SELECT pg_notify($1, $2), pg_notify($1, $3), pg_notify($1, $4)', [
      here.get(TokenStore).revocationChannel,
      `j:${kept.jti}`,
      `someone\nx:${kept.jti}\n${keptSubject}\ns${keptSubject}`,
      `someone\nj:${named.jti}`,
    ]);
    await waitFor(() => cache.lookupToken(named.jti) === undefined, MAX_STALENESS_MS, 'the wake-up to be heard');
    // A write announced by no one at all is still polled.
    await dataSourceOf(here).query(`UPDATE tokens SET purpose = 'revocation', changed_xid = DEFAULT WHERE jti = $1`, [written.jti]);
    await waitFor(async () => tokensThere.tokenRevoked(written.token), MAX_STALENESS_MS, 'the stamped write to be polled', 5);
    expect(cache.lookupToken(kept.jti)).not.toBeUndefined();
    expect(cache.lookupMarker(keptSubject)).toBeNull();
  });

  it('stamps every write that can revoke, with announcements on or off; only with them on (the default with the cache) it wakes the other instances, once per commit at most', async () => {
    const plain = await instance({ storeAllTokens: true, expunge: { enabled: false } });
    const channel = plain.get(TokenStore).revocationChannel;
    const listener = new pg.Client({ connectionString: db.url });
    await listener.connect();
    const heard: string[] = [];
    listener.on('notification', ({ payload }) => heard.push(payload ?? ''));
    try {
      await listener.query(`LISTEN "${channel}"`);
      for (const app of [plain, here]) {
        heard.length = 0;
        const tokens = app.get(TokenService);
        const subject = uniqueSubject();
        const stored = await tokens.issueToken({ subject });
        const stampOf = async (jti: string): Promise<bigint> => {
          const [{ xid }] = await dataSourceOf(app).query('SELECT changed_xid::text AS xid FROM tokens WHERE jti = $1', [jti]);
          return BigInt(xid);
        };
        // A jti issueToken has just drawn: no cache can know it, so its insert is not polled.
        expect(await stampOf(stored.jti)).toBe(0n);
        // Each write stamps what it wrote with its own transaction's id, later than any before.
        await tokens.storeToken({ token: stored.token, purpose: 'user' });
        const storedAt = await stampOf(stored.jti);
        const revoked = await tokens.issueToken({ subject });
        await tokens.revoke(revoked.token);
        const revokedAt = await stampOf(revoked.jti);
        await tokens.revokeJti(`bare-${subject}`, subject);
        const bareAt = await stampOf(`bare-${subject}`);
        await app.get(LogOutEverywhereService).logOutEverywhere(subject);
        const loggedOutAt = await stampOf(`log-out-everywhere:${subject}`);
        expect(storedAt > 0n && storedAt < revokedAt && revokedAt < bareAt && bareAt < loggedOutAt).toBe(true);
        // The log-out stamped every row it flipped, with its marker's id.
        expect(await stampOf(stored.jti)).toBe(loggedOutAt);
        expect(await stampOf(revoked.jti)).toBe(revokedAt);
        // Only the wake-ups about these writes: another instance's late one may come in between.
        const written = [`j:${stored.jti}`, `j:${revoked.jti}`, `j:bare-${subject}`, `s:${subject}`];
        const wakeUps = () => heard.filter((payload) => payload.split('\n').some((name) => written.includes(name)));
        const names = () => wakeUps().flatMap((payload) => payload.split('\n').slice(1));
        if (app === plain) {
          // Wake-ups go out after the commit, paced: a sentinel sent later still lets one through first.
          await new Promise((resolve) => setTimeout(resolve, 100));
          await listener.query(`NOTIFY "${channel}", 'done'`);
          await waitFor(() => heard.includes('done'), 5000, 'the last notification');
          expect(wakeUps()).toEqual([]);
        } else {
          await waitFor(() => written.every((name) => names().includes(name)), 5000, 'wake-ups naming every write');
          // Coalesced: one write at a time here, but a wake-up still on its way carries the next write's too.
          expect(wakeUps().length).toBeLessThanOrEqual(4);
          // Each names the instance that sent it (which does not poll on its own), then what was written, once.
          expect(new Set(wakeUps().map((payload) => payload.split('\n')[0])).size).toBe(1);
          expect(names().sort()).toEqual(written.sort());
        }
      }
    } finally {
      await listener.end();
    }
  });

  it('never skips a transaction that commits late: one that wrote before a poll and committed after it is polled', async () => {
    const cache = await freshCache(there);
    const tokensThere = there.get(TokenService);
    const { token } = await tokensThere.issueToken({ subject: uniqueSubject() });
    expect(await admits(there, token)).toBe(true);
    const polledSince = async (moment: number) =>
      waitFor(() => (cache as unknown as { confirmedAt: number }).confirmedAt > moment, MAX_STALENESS_MS, 'a poll');
    await dataSourceOf(here).transaction(async (manager) => {
      await here.get(TokenService).revoke(token, { manager });
      // Polls that each see the revoking transaction in progress, and later transactions committed.
      for (let i = 0; i < 3; i++) {
        const before = performance.now();
        await here.get(TokenService).revokeJti(`later-${uniqueSubject()}`, uniqueSubject());
        await polledSince(before);
      }
      expect(await admits(there, token)).toBe(true);
    });
    await waitFor(async () => !(await admits(there, token)), MAX_STALENESS_MS, 'the late commit to be polled', 5);
    expect(cache.fresh).toBe(true);
    // Refused from memory: the poll applied the late commit (the database was not asked).
    await expectAnsweredFromMemory(there, async () => expect(await admits(there, token)).toBe(false));
  });

  it('stops answering when its listener connection is killed, and listens again', async () => {
    const cache = await freshCache(there);
    const user = uniqueSubject();
    const tokensThere = there.get(TokenService);
    const { token } = await tokensThere.issueToken({ subject: user });
    const other = await tokensThere.issueToken({ subject: uniqueSubject() });
    expect(await tokensThere.tokenRevoked(token)).toBe(false);
    expect(await tokensThere.tokenRevoked(other.token)).toBe(false);

    const pid = (listenerOf(there) as unknown as { processID: number }).processID;
    await dataSourceOf(here).query('SELECT pg_terminate_backend($1)', [pid]);
    await waitFor(() => !cache.fresh, MAX_STALENESS_MS, 'the cache to stop answering');
    // Nothing is announced to it now, so it must read the database.
    await here.get(LogOutEverywhereService).logOutEverywhere(user);
    await here.get(TokenService).revoke(other.token);
    const sent = await statementsDuring(there, async () => {
      expect(await tokensThere.tokenRevoked(token)).toBe(true);
      expect(await tokensThere.tokenRevoked(other.token)).toBe(true);
    });
    expect(sent).toEqual(['ntr_token_state', 'ntr_token_state']);

    await freshCache(there);
    expect((listenerOf(there) as unknown as { processID: number }).processID).not.toBe(pid);
  });

  it('logs an outage of its listener when it starts and when it ends, not at every attempt to listen again', async () => {
    const app = await instance(CACHED);
    const cache = await freshCache(app);
    const reconnectDelayMs = () => (cache as unknown as { reconnectDelayMs: number }).reconnectDelayMs;
    const admin = new pg.Client({ connectionString: process.env.DATABASE_URL });
    await admin.connect();
    const warned = jest.spyOn(Logger.prototype, 'warn').mockImplementation(() => undefined);
    const logged = jest.spyOn(Logger.prototype, 'log').mockImplementation(() => undefined);
    const lines = (spy: typeof warned) => spy.mock.calls.map((args) => String(args[0])).filter((line) => line.includes('revocations'));
    try {
      await admin.query(`ALTER DATABASE ${db.name} ALLOW_CONNECTIONS false`);
      await admin.query('SELECT pg_terminate_backend($1)', [(listenerOf(app) as unknown as { processID: number }).processID]);
      // Its attempts to listen again, 0.25, 0.75 and 1.75 s after the loss, are refused.
      await waitFor(() => reconnectDelayMs() >= 4000, 10_000, 'three refused attempts to listen again');
      await admin.query(`ALTER DATABASE ${db.name} ALLOW_CONNECTIONS true`);
      await freshCache(app);
      expect(lines(warned)).toEqual([expect.stringMatching(/^stopped polling for revocations \(/)]);
      expect(lines(logged)).toEqual([expect.stringMatching(/^polling for revocations again after \d+\.\d s/)]);
    } finally {
      await admin.query(`ALTER DATABASE ${db.name} ALLOW_CONNECTIONS true`);
      await admin.end();
      warned.mockRestore();
      logged.mockRestore();
    }
  });

  it('stops answering within maxStalenessMs when its polls silently go unanswered, and polls again on a new connection', async () => {
    const strict = await instance({ ...CACHED, revocationCache: { enabled: true, maxStalenessMs: SHORT_BOUND_MS } });
    const cache = await freshCache(strict);
    const tokensThere = strict.get(TokenService);
    const { token } = await tokensThere.issueToken({ subject: uniqueSubject() });
    expect(await tokensThere.tokenRevoked(token)).toBe(false);

    // A partition the client cannot see: the listener's socket is simply not read any more.
    const socket = listenerSocketOf(strict);
    socket.pause();
    try {
      await here.get(TokenService).revoke(token);
      const committedAt = Date.now();
      await waitFor(
        async () => tokensThere.tokenRevoked(token),
        10 * SHORT_BOUND_MS + MARGIN_MS,
        'the silent instance to see the revocation',
        5,
      );
      expect(Date.now() - committedAt).toBeLessThanOrEqual(SHORT_BOUND_MS + MARGIN_MS);
      expect(cache.fresh).toBe(false);
      // The silent connection is dropped, and a new one answers while the old stays silent.
      await freshCache(strict);
      expect(listenerSocketOf(strict)).not.toBe(socket);
      expect(await statementsDuring(strict, async () => expect(await tokensThere.tokenRevoked(token)).toBe(true))).toHaveLength(1);
      await expectAnsweredFromMemory(strict, async () => expect(await tokensThere.tokenRevoked(token)).toBe(true));
    } finally {
      socket.resume();
    }
  });

  it('trusts an answer for at most maxEntryAgeMs, which bounds writes made outside the library', async () => {
    const aged = await instance({
      ...CACHED,
      revocationCache: { enabled: true, maxStalenessMs: SHORT_BOUND_MS, maxEntryAgeMs: SHORT_BOUND_MS },
    });
    await freshCache(aged);
    const user = uniqueSubject();
    const tokens = aged.get(TokenService);
    const loggedOut = await tokens.issueToken({ subject: user });
    const revoked = await tokens.issueToken({ subject: uniqueSubject() });
    expect(await tokens.tokenRevoked(loggedOut.token)).toBe(false);
    expect(await tokens.tokenRevoked(revoked.token)).toBe(false);
    // A marker and a revocation written by raw SQL, without an announcement.
    await dataSourceOf(aged).query(
      `INSERT INTO tokens (jti, subject, expires_at, purpose, extra_data) VALUES ($1, $2, now() + interval '1 day', $3, $4)`,
      [`log-out-everywhere:${user}`, user, 'log_out_everywhere', { levels: { all: { at: Date.now() } } }],
    );
    await dataSourceOf(aged).query(`UPDATE tokens SET purpose = 'revocation' WHERE jti = $1`, [revoked.jti]);
    const writtenAt = Date.now();
    await waitFor(
      async () => (await tokens.tokenRevoked(loggedOut.token)) && (await tokens.tokenRevoked(revoked.token)),
      10 * SHORT_BOUND_MS + MARGIN_MS,
      'the unannounced writes to be read',
      5,
    );
    expect(Date.now() - writtenAt).toBeLessThanOrEqual(SHORT_BOUND_MS + MARGIN_MS);
  });

  it('never holds more than maxEntries answers, tokens and subjects together, dropping the oldest first', async () => {
    const small = await instance({ ...CACHED, revocationCache: { ...CACHED.revocationCache, maxEntries: 3 } });
    const cache = await freshCache(small);
    const tokens = small.get(TokenService);
    const issued = await Promise.all([0, 1, 2, 3].map(() => tokens.issueToken({ subject: uniqueSubject() })));
    for (const { token } of issued) {
      await tokens.tokenRevoked(token);
      expect(cache.size).toBeLessThanOrEqual(3);
    }
    expect(cache.size).toBe(3);
    const last = issued.at(-1)!;
    await expectAnsweredFromMemory(small, async () => expect(await tokens.tokenRevoked(last.token)).toBe(false));
    expect(cache.lookupToken(issued[0].jti)).toBeUndefined();
  });

  it('rejects a maxStalenessMs below 100 ms and a maxEntryAgeMs below it at start-up', async () => {
    await expect(instance({ revocationCache: { enabled: true, maxStalenessMs: 10 } })).rejects.toThrow(
      /revocationCache\.maxStalenessMs must be a number >= 100/,
    );
    await expect(instance({ revocationCache: { enabled: true, maxStalenessMs: 2000, maxEntryAgeMs: 1000 } })).rejects.toThrow(
      /revocationCache\.maxEntryAgeMs must be a number >= 2000/,
    );
  });
});
