import { Logger, type INestApplication } from '@nestjs/common';
import { jest } from '@jest/globals';
import pg from 'pg';
import { LogOutEverywhereService, LogOutMarkerCache, TokenService } from '../lib/index.js';
import { LISTENER_APPLICATION_NAME } from '../lib/marker-cache/log-out-marker.cache.js';
import { TokenStore } from '../lib/token.store.js';
import { uniqueSubject } from './support/jwt-fixtures.js';
import { listenerOf, listenerSocketOf } from './support/marker-cache-listener.js';
import { createTestDatabase, type TestDatabase } from './support/test-database.js';
import { createTokenApp, dataSourceOf } from './support/token-app.js';
import { waitFor } from './support/wait-for.js';

/** LogOutMarkerCache: one-key checks, with a tested bound on how stale a log-out may be. */

/**
 * The tests of the mechanics run with a bound so large that a busy CI machine (GC pauses,
 * parallel test files) never lets the cache go stale under them; the tests of the bound
 * itself run on instances of their own with a short one.
 */
const MAX_STALENESS_MS = 5000;
const CACHED = { logOutMarkerCache: { enabled: true, maxStalenessMs: MAX_STALENESS_MS }, expunge: { enabled: false } };
const SHORT_BOUND_MS = 400;
/** Leeway for timers and polling on a loaded machine; far below what a missing bound would take. */
const MARGIN_MS = 600;

let db: TestDatabase;
/** Two application instances sharing one database, both caching markers. */
let here: INestApplication;
let there: INestApplication;
const apps: INestApplication[] = [];

async function instance(options: object): Promise<INestApplication> {
  const app = await createTokenApp(db.url, { options });
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

async function freshCache(app: INestApplication): Promise<LogOutMarkerCache> {
  const cache = app.get(LogOutMarkerCache);
  await waitFor(() => cache.fresh, 10_000, 'the marker cache to be fresh');
  return cache;
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
  there = await instance(CACHED);
});

afterAll(async () => {
  for (const app of apps) await app.close();
  await db.drop();
});

describe('LogOutMarkerCache', () => {
  it('is off by default: every check reads both keys and nothing listens', async () => {
    const plain = await instance({ expunge: { enabled: false } });
    const { token } = await plain.get(TokenService).issueToken({ subject: uniqueSubject() });
    const sent = await statementsDuring(plain, async () => {
      for (let i = 0; i < 3; i++) await plain.get(TokenService).tokenRevoked(token);
    });
    expect(sent).toEqual(['ntr_token_state', 'ntr_token_state', 'ntr_token_state']);
    expect(plain.get(LogOutMarkerCache).fresh).toBe(false);
  });

  it('listens on one connection per instance and answers repeat checks with the one-key probe', async () => {
    await freshCache(here);
    const listening = await dataSourceOf(here).query(
      `SELECT count(*)::int AS n FROM pg_stat_activity WHERE datname = current_database() AND application_name = $1`,
      [LISTENER_APPLICATION_NAME],
    );
    expect(listening[0].n).toBe(2);

    const tokens = here.get(TokenService);
    const { token } = await tokens.issueToken({ subject: uniqueSubject() });
    const sent = await statementsDuring(here, async () => {
      expect(await tokens.tokenRevoked(token)).toBe(false);
      expect(await tokens.tokenRevoked(token)).toBe(false);
    });
    expect(sent).toEqual(['ntr_token_state', 'ntr_own_state']);
  });

  it('still reads revocations of single tokens on every check', async () => {
    await freshCache(here);
    const tokens = here.get(TokenService);
    const { token } = await tokens.issueToken({ subject: uniqueSubject() });
    expect(await tokens.tokenRevoked(token)).toBe(false);
    await there.get(TokenService).revoke(token);
    expect(await tokens.tokenRevoked(token)).toBe(true);
  });

  it('sees a log-out on its own instance at once', async () => {
    await freshCache(here);
    const user = uniqueSubject();
    const { token } = await here.get(TokenService).issueToken({ subject: user });
    expect(await here.get(TokenService).tokenRevoked(token)).toBe(false);
    // Its own notification must not be what it relies on: hold the listener's socket.
    const socket = listenerSocketOf(here);
    socket.pause();
    try {
      await here.get(LogOutEverywhereService).logOutEverywhere(user);
      expect(here.get(LogOutMarkerCache).fresh).toBe(true);
      expect(await here.get(TokenService).tokenRevoked(token)).toBe(true);
    } finally {
      socket.resume();
    }
  });

  it('hears of a log-out on another instance through its notification, long before maxStalenessMs', async () => {
    await freshCache(there);
    const user = uniqueSubject();
    const { token } = await there.get(TokenService).issueToken({ subject: user });
    expect(await there.get(TokenService).tokenRevoked(token)).toBe(false);
    expect(there.get(LogOutMarkerCache).lookup(user)).toBeNull();

    await here.get(LogOutEverywhereService).logOutEverywhere(user);
    const committedAt = Date.now();
    await waitFor(async () => there.get(TokenService).tokenRevoked(token), MAX_STALENESS_MS, 'the other instance to see the log-out', 5);
    expect(Date.now() - committedAt).toBeLessThan(MAX_STALENESS_MS / 5);
    expect(there.get(LogOutMarkerCache).fresh).toBe(true);
  });

  it('re-reads the marker when a log-out was announced while the check waited for a connection', async () => {
    await freshCache(there);
    const user = uniqueSubject();
    const tokensThere = there.get(TokenService);
    const { token } = await tokensThere.issueToken({ subject: user });
    expect(await tokensThere.tokenRevoked(token)).toBe(false);
    const cache = there.get(LogOutMarkerCache);
    expect(cache.lookup(user)).toBeNull();

    // The check has looked up "no marker" and now waits for a pooled connection, during
    // which the subject is logged out and the log-out announced.
    const held = holdFirst(there.get(TokenStore), 'ntr_own_state', 'before it is sent');
    try {
      const check = tokensThere.tokenRevoked(token);
      await waitFor(() => held.reached, 5000, 'the check to wait');
      await here.get(LogOutEverywhereService).logOutEverywhere(user);
      await waitFor(() => cache.lookup(user) === undefined, MAX_STALENESS_MS, 'the log-out to be announced');
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
    // The rolled-back log-out left the cached "no marker" in place: still the one-key probe.
    const sent = await statementsDuring(there, async () => expect(await tokensThere.tokenRevoked(a)).toBe(false));
    expect(sent).toEqual(['ntr_own_state']);
  });

  it('does not keep an answer read before a log-out that was announced while the read was in flight', async () => {
    await freshCache(there);
    const user = uniqueSubject();
    const tokensThere = there.get(TokenService);
    const { token } = await tokensThere.issueToken({ subject: user });
    const cache = there.get(LogOutMarkerCache);
    const held = holdFirst(there.get(TokenStore), 'ntr_token_state', 'once it is answered');
    try {
      // The read sees no marker; the log-out commits and is announced before the answer lands.
      const stale = tokensThere.tokenRevoked(token);
      await waitFor(() => held.reached, 5000, 'the read to be answered');
      const ticket = cache.ticket();
      await here.get(LogOutEverywhereService).logOutEverywhere(user);
      await waitFor(() => cache.ticket() !== ticket, MAX_STALENESS_MS, 'the log-out to be announced');
      held.release();
      expect(await stale).toBe(false);
    } finally {
      held.restore();
    }
    expect(cache.lookup(user)).toBeUndefined();
    expect(await tokensThere.tokenRevoked(token)).toBe(true);
  });

  it('announces the log-out of the longest subject (1024 bytes of UTF-8) by name: other subjects stay cached', async () => {
    const cache = await freshCache(there);
    const tokensThere = there.get(TokenService);
    const user = 'é'.repeat(512);
    const bystander = uniqueSubject();
    const { token } = await tokensThere.issueToken({ subject: user });
    expect(await tokensThere.tokenRevoked(token)).toBe(false);
    expect(await tokensThere.tokenRevoked((await tokensThere.issueToken({ subject: bystander })).token)).toBe(false);
    await here.get(LogOutEverywhereService).logOutEverywhere(user);
    await waitFor(async () => tokensThere.tokenRevoked(token), MAX_STALENESS_MS, 'the other instance to see the log-out', 5);
    expect(cache.lookup(bystander)).toBeNull();
  });

  it('ignores announcements no log-out sends (empty, over-long): any session may NOTIFY, and must not empty the caches', async () => {
    const cache = await freshCache(there);
    const tokensThere = there.get(TokenService);
    const [kept, announced] = [uniqueSubject(), uniqueSubject()];
    for (const user of [kept, announced]) {
      expect(await tokensThere.tokenRevoked((await tokensThere.issueToken({ subject: user })).token)).toBe(false);
      expect(cache.lookup(user)).toBeNull();
    }
    // One transaction: delivered in this order, so once the last is heard the others were.
    await dataSourceOf(here).query("SELECT pg_notify($1, ''), pg_notify($1, $2), pg_notify($1, $3)", [
      here.get(TokenStore).logOutChannel,
      'x'.repeat(7000),
      announced,
    ]);
    await waitFor(() => cache.lookup(announced) === undefined, MAX_STALENESS_MS, 'the announcement to be heard');
    expect(cache.lookup(kept)).toBeNull();
  });

  it('stops answering when its listener connection is killed, and listens again', async () => {
    const cache = await freshCache(there);
    const user = uniqueSubject();
    const tokensThere = there.get(TokenService);
    const { token } = await tokensThere.issueToken({ subject: user });
    expect(await tokensThere.tokenRevoked(token)).toBe(false);

    const pid = (listenerOf(there) as unknown as { processID: number }).processID;
    await dataSourceOf(here).query('SELECT pg_terminate_backend($1)', [pid]);
    await waitFor(() => !cache.fresh, 5000, 'the cache to stop answering');
    // Nothing is announced to it now, so it must read the marker from the database.
    await here.get(LogOutEverywhereService).logOutEverywhere(user);
    const sent = await statementsDuring(there, async () => expect(await tokensThere.tokenRevoked(token)).toBe(true));
    expect(sent).toEqual(['ntr_token_state']);

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
    const lines = (spy: typeof warned) => spy.mock.calls.map((args) => String(args[0])).filter((line) => line.includes('log-outs'));
    try {
      await admin.query(`ALTER DATABASE ${db.name} ALLOW_CONNECTIONS false`);
      await admin.query('SELECT pg_terminate_backend($1)', [(listenerOf(app) as unknown as { processID: number }).processID]);
      // Its attempts to listen again, 0.25, 0.75 and 1.75 s after the loss, are refused.
      await waitFor(() => reconnectDelayMs() >= 4000, 10_000, 'three refused attempts to listen again');
      await admin.query(`ALTER DATABASE ${db.name} ALLOW_CONNECTIONS true`);
      await freshCache(app);
      expect(lines(warned)).toEqual([expect.stringMatching(/^stopped listening for log-outs \(/)]);
      expect(lines(logged)).toEqual([expect.stringMatching(/^listening for log-outs again after \d+\.\d s/)]);
    } finally {
      await admin.query(`ALTER DATABASE ${db.name} ALLOW_CONNECTIONS true`);
      await admin.end();
      warned.mockRestore();
      logged.mockRestore();
    }
  });

  it('stops answering within maxStalenessMs when notifications silently stop arriving', async () => {
    const strict = await instance({ ...CACHED, logOutMarkerCache: { enabled: true, maxStalenessMs: SHORT_BOUND_MS } });
    const cache = await freshCache(strict);
    const user = uniqueSubject();
    const tokensThere = strict.get(TokenService);
    const { token } = await tokensThere.issueToken({ subject: user });
    expect(await tokensThere.tokenRevoked(token)).toBe(false);

    // A partition the client cannot see: the listener's socket is simply not read any more.
    const socket = listenerSocketOf(strict);
    socket.pause();
    try {
      await here.get(LogOutEverywhereService).logOutEverywhere(user);
      const committedAt = Date.now();
      await waitFor(
        async () => tokensThere.tokenRevoked(token),
        10 * SHORT_BOUND_MS + MARGIN_MS,
        'the silent instance to see the log-out',
        5,
      );
      expect(Date.now() - committedAt).toBeLessThanOrEqual(SHORT_BOUND_MS + MARGIN_MS);
      expect(cache.fresh).toBe(false);
    } finally {
      socket.resume();
    }
    await freshCache(strict);
  });

  it('trusts what it read about a subject for at most maxEntryAgeMs, which bounds unannounced markers', async () => {
    const aged = await instance({
      ...CACHED,
      logOutMarkerCache: { enabled: true, maxStalenessMs: SHORT_BOUND_MS, maxEntryAgeMs: SHORT_BOUND_MS },
    });
    await freshCache(aged);
    const user = uniqueSubject();
    const tokens = aged.get(TokenService);
    const { token } = await tokens.issueToken({ subject: user });
    expect(await tokens.tokenRevoked(token)).toBe(false);
    // A marker written by raw SQL, without an announcement.
    await dataSourceOf(aged).query(
      `INSERT INTO tokens (jti, subject, expires_at, purpose, extra_data) VALUES ($1, $2, now() + interval '1 day', $3, $4)`,
      [`log-out-everywhere:${user}`, user, 'log_out_everywhere', { levels: { all: { at: Date.now() } } }],
    );
    const writtenAt = Date.now();
    await waitFor(async () => tokens.tokenRevoked(token), 10 * SHORT_BOUND_MS + MARGIN_MS, 'the unannounced marker to be read', 5);
    expect(Date.now() - writtenAt).toBeLessThanOrEqual(SHORT_BOUND_MS + MARGIN_MS);
  });

  it('remembers at most maxSubjects subjects, dropping the oldest answer first', async () => {
    const small = await instance({ ...CACHED, logOutMarkerCache: { ...CACHED.logOutMarkerCache, maxSubjects: 2 } });
    const cache = await freshCache(small);
    const tokens = small.get(TokenService);
    const [first, second, third] = [uniqueSubject(), uniqueSubject(), uniqueSubject()];
    for (const user of [first, second]) await tokens.tokenRevoked((await tokens.issueToken({ subject: user })).token);
    expect(cache.lookup(first)).toBeNull();
    expect(cache.lookup(second)).toBeNull();
    await tokens.tokenRevoked((await tokens.issueToken({ subject: third })).token);
    expect(cache.lookup(first)).toBeUndefined();
    expect(cache.lookup(second)).toBeNull();
    expect(cache.lookup(third)).toBeNull();
  });

  it('rejects a maxStalenessMs below 100 ms, and a maxEntryAgeMs below it, at start-up', async () => {
    await expect(instance({ logOutMarkerCache: { enabled: true, maxStalenessMs: 10 } })).rejects.toThrow(
      /logOutMarkerCache\.maxStalenessMs must be a number >= 100/,
    );
    await expect(instance({ logOutMarkerCache: { enabled: true, maxStalenessMs: 2000, maxEntryAgeMs: 1000 } })).rejects.toThrow(
      /logOutMarkerCache\.maxEntryAgeMs must be a number >= 2000/,
    );
  });

  it('ignores a heartbeat dated in the future, which would pin it fresh', async () => {
    const cache = await freshCache(there);
    const channel = (cache as unknown as { heartbeatChannel: string }).heartbeatChannel;
    await dataSourceOf(here).query('SELECT pg_notify($1, $2)', [channel, String(performance.now() + 3_600_000)]);
    const confirmedAt = () => (cache as unknown as { confirmedAt: number }).confirmedAt;
    await new Promise((resolve) => setTimeout(resolve, 100));
    expect(confirmedAt()).toBeLessThanOrEqual(performance.now());
  });
});
