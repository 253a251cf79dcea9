import { jest } from '@jest/globals';
import { Logger, type INestApplication } from '@nestjs/common';
import type { Pool } from 'pg';
import type { DataSource, Repository } from 'typeorm';
import {
  LogOutEverywhereService,
  RevocationCache,
  REVOCATION_PURPOSE,
  Token,
  TokenAlreadyRevokedError,
  TokenService,
} from '../lib/index.js';
import { clockPast } from './support/clock.js';
import { loggedOutAt } from './support/logged-out-at.js';
import { createGuardApp } from './support/guard-app.js';
import { GuardedSubjectController } from './support/guarded-controller.js';
import { startPgBouncer, type PgBouncer } from './support/pgbouncer.js';
import { raceCalls } from './support/race.js';
import { createTestDatabase, type TestDatabase } from './support/test-database.js';
import { createTokenApp, dataSourceOf } from './support/token-app.js';
import { TokenStore } from '../lib/token.store.js';
import { User } from './support/user.entity.js';
import { waitFor } from './support/wait-for.js';

/**
 * Every feature through a real PgBouncer in `pool_mode = transaction`, as managed poolers
 * run it: a session spans several server connections, so a statement prepared on one is
 * missing (or already there) on the next, and `LISTEN` hears nothing. The application's
 * pool opens far more client connections than the pooler has server connections, so
 * that they are shuffled on every transaction.
 */

const SERVER_CONNECTIONS = 10;
const CALLERS = 100;
const HTTP_CLIENTS = 50;
const POOLER_WARNING = /rejected a named prepared statement/;

let db: TestDatabase;
let bouncer: PgBouncer;
let url: string;
let app: INestApplication;
let tokens: TokenService;
let logOut: LogOutEverywhereService;
let dataSource: DataSource;
let users: Repository<User>;
let warn: jest.SpiedFunction<Logger['warn']>;
let error: jest.SpiedFunction<Logger['error']>;

beforeAll(async () => {
  db = await createTestDatabase();
  bouncer = await startPgBouncer(process.env.DATABASE_URL!, SERVER_CONNECTIONS);
  url = bouncer.urlFor(db.url);
  warn = jest.spyOn(Logger.prototype, 'warn');
  error = jest.spyOn(Logger.prototype, 'error');
  app = await createGuardApp(url, {
    platform: 'express',
    options: { logOutEverywhere: { applyOnPasswordChange: true, userEntity: User } },
    typeOrm: { entities: [Token, User], extra: { max: CALLERS + 10 } },
    controllers: [GuardedSubjectController],
  });
  tokens = app.get(TokenService);
  logOut = app.get(LogOutEverywhereService);
  dataSource = dataSourceOf(app);
  await dataSource.query('CREATE TABLE users (id serial PRIMARY KEY, email text NOT NULL, "hashedPassword" text NOT NULL)');
  users = dataSource.getRepository(User);
  // Open every client connection up front, so that concurrent calls each get one at once.
  const pool = (dataSource.driver as unknown as { master: Pool }).master;
  const clients = await Promise.all(Array.from({ length: CALLERS }, () => pool.connect()));
  clients.forEach((client) => client.release());
}, 60_000);

afterAll(async () => {
  jest.restoreAllMocks();
  await app?.close();
  await bouncer?.stop();
  await db?.drop();
}, 60_000);

function poolerWarnings(): number {
  return warn.mock.calls.filter(([message]) => POOLER_WARNING.test(String(message))).length;
}

describe('through a transaction pooler', () => {
  it(`the guarded route under ${HTTP_CLIENTS} concurrent clients: every valid token 200, every revoked one 401`, async () => {
    const issued = await Promise.all(Array.from({ length: HTTP_CLIENTS }, (_, i) => tokens.issueToken({ subject: `client-${i}` })));
    const revoked = new Set(issued.filter((_, i) => i % 5 === 0).map(({ token }) => token));
    for (const token of revoked) await tokens.revoke(token);
    const base = await app.getUrl();
    const statuses = { ok: 0, unauthorized: 0, other: [] as number[], wrongAnswer: 0 };
    for (let round = 0; round < 4; round += 1) {
      await Promise.all(
        issued.map(async ({ token }, i) => {
          const response = await fetch(`${base}/guarded`, { headers: { authorization: `Bearer ${token}` } });
          const expected = revoked.has(token) ? 401 : 200;
          if (response.status !== expected) statuses.other.push(response.status);
          else if (expected === 200) {
            statuses.ok += 1;
            if (((await response.json()) as { sub: string }).sub !== `client-${i}`) statuses.wrongAnswer += 1;
          } else statuses.unauthorized += 1;
        }),
      );
    }
    expect(statuses).toEqual({ ok: 4 * (HTTP_CLIENTS - revoked.size), unauthorized: 4 * revoked.size, other: [], wrongAnswer: 0 });
  });

  it(`${CALLERS} concurrent revokes of one token: exactly one resolves, the rest TokenAlreadyRevokedError`, async () => {
    for (const stored of [false, true]) {
      const { token, jti } = await tokens.issueToken({ subject: 'racer' });
      if (stored) await tokens.storeToken({ token, purpose: 'user' });
      expect(await raceCalls(CALLERS, () => tokens.revoke(token))).toEqual({ succeeded: 1, alreadyRevoked: CALLERS - 1, other: [] });
      expect(await dataSource.query('SELECT purpose FROM tokens WHERE jti = $1', [jti])).toEqual([{ purpose: REVOCATION_PURPOSE }]);
      expect(await tokens.tokenRevoked(token)).toBe(true);
    }
  });

  it(`${CALLERS} concurrent revokeJti of one jti: exactly one resolves; jtiRevoked and tokenRevoked see it`, async () => {
    const { token, jti } = await tokens.issueToken({ subject: 'jti-racer' });
    expect(await tokens.jtiRevoked(jti)).toBe(false);
    expect(await tokens.tokenRevoked(token)).toBe(false);
    expect(await raceCalls(CALLERS, () => tokens.revokeJti(jti, 'jti-racer'))).toEqual({
      succeeded: 1,
      alreadyRevoked: CALLERS - 1,
      other: [],
    });
    expect(await tokens.jtiRevoked(jti)).toBe(true);
    expect(await tokens.tokenRevoked(token)).toBe(true);
    await expect(tokens.revokeJti(jti, 'jti-racer')).rejects.toBeInstanceOf(TokenAlreadyRevokedError);
  });

  it('logOutEverywhere, alone and from many callers at once: every stored and unstored token revoked once, later logins valid', async () => {
    const stored = await Promise.all(
      Array.from({ length: 20 }, async () => {
        const issued = await tokens.issueToken({ subject: 'everywhere' });
        await tokens.storeToken({ token: issued.token, purpose: 'user' });
        return issued.token;
      }),
    );
    const unstored = (await tokens.issueToken({ subject: 'everywhere' })).token;
    const counts: number[] = [];
    const outcome = await raceCalls(CALLERS, async () => counts.push(await logOut.logOutEverywhere('everywhere')));
    expect(outcome).toEqual({ succeeded: CALLERS, alreadyRevoked: 0, other: [] });
    expect(counts.reduce((sum, count) => sum + count, 0)).toBe(stored.length);
    for (const token of [...stored, unstored]) expect(await tokens.tokenRevoked(token)).toBe(true);

    await clockPast(await loggedOutAt(dataSource, 'everywhere'));
    const later = await tokens.issueToken({ subject: 'everywhere' });
    expect(await tokens.tokenRevoked(later.token)).toBe(false);
    expect(await logOut.logOutEverywhere('everywhere')).toBe(0);
    expect(await tokens.tokenRevoked(later.token)).toBe(true);
  });

  it('a password change by save logs the user out, and its repeat after the commit (BEGIN; SET LOCAL) revokes a login made meanwhile', async () => {
    const user = await users.save(users.create({ email: 'pw@example.com', hashedPassword: 'old-hash' }));
    const subject = String(user.id);
    const before = await tokens.issueToken({ subject });
    let inside = 0;
    let meanwhile = '';
    await dataSource.transaction(async (manager) => {
      user.hashedPassword = 'new-hash';
      await manager.save(user);
      inside = await loggedOutAt(manager, subject);
      // A login on another connection after the log-out's statement, before its commit.
      await clockPast(inside);
      meanwhile = (await tokens.issueToken({ subject })).token;
    });
    expect(await tokens.tokenRevoked(before.token)).toBe(true);
    expect(await loggedOutAt(dataSource, subject)).toBeGreaterThan(inside);
    expect(await tokens.tokenRevoked(meanwhile)).toBe(true);
    expect(error).not.toHaveBeenCalled();
  });

  it(`confirmation changes of ${HTTP_CLIENTS} users at once: each stored and read back`, async () => {
    const issued = await Promise.all(
      Array.from({ length: HTTP_CLIENTS }, (_, i) => tokens.issueToken({ subject: `confirming-${i}`, purpose: 'confirm' })),
    );
    await Promise.all(issued.map(({ token }, i) => tokens.storeConfirmationChanges({ token, changes: { email: `new-${i}@example.com` } })));
    const read = await Promise.all(issued.map(({ jti }) => tokens.getConfirmationChanges(jti)));
    expect(read).toEqual(issued.map((_, i) => ({ email: `new-${i}@example.com` })));
    expect(await tokens.getConfirmationChanges('absent-jti')).toBeNull();
  });

  it('after all of the above, the pooler was reported by a single warning', () => {
    expect(poolerWarnings()).toBe(1);
    const message = String(warn.mock.calls.find(([logged]) => POOLER_WARNING.test(String(logged)))![0]);
    expect(message).toMatch(/"tokens"/);
    expect(message).toMatch(/max_prepared_statements/);
  });
});

describe('the revocation cache behind a transaction pooler', () => {
  const MAX_STALENESS_MS = 1000;
  const cached = { revocationCache: { enabled: true, maxStalenessMs: MAX_STALENESS_MS }, expunge: { enabled: false } };
  let here: INestApplication;
  let there: INestApplication;
  let logged: jest.SpiedFunction<Logger['log']>;

  beforeAll(async () => {
    logged = jest.spyOn(Logger.prototype, 'log');
    here = await createTokenApp(url, { options: cached });
    there = await createTokenApp(url, { options: cached });
  });

  afterAll(async () => {
    await here?.close();
    await there?.close();
    logged.mockRestore();
  });

  it('caches all the same, polling without wake-ups: writes made through the pooler on another instance are refused within maxStalenessMs', async () => {
    const cache = here.get(RevocationCache);
    await waitFor(() => cache.fresh, 10_000, 'the cache behind the pooler to be fresh');
    const tokensHere = here.get(TokenService);
    const subject = 'cached-behind-pooler';
    const loggedOut = await tokensHere.issueToken({ subject });
    const revoked = await tokensHere.issueToken({ subject: 'revoked-behind-pooler' });
    for (const { token } of [loggedOut, revoked]) expect(await tokensHere.tokenRevoked(token)).toBe(false);
    const query = jest.spyOn(here.get(TokenStore), 'query');
    for (const { token } of [loggedOut, revoked]) expect(await tokensHere.tokenRevoked(token)).toBe(false);
    // Answered from memory: the cache is in use behind the pooler.
    expect(query).not.toHaveBeenCalled();
    query.mockRestore();

    await there.get(LogOutEverywhereService).logOutEverywhere(subject);
    await there.get(TokenService).revoke(revoked.token);
    await waitFor(
      async () => (await tokensHere.tokenRevoked(loggedOut.token)) && (await tokensHere.tokenRevoked(revoked.token)),
      MAX_STALENESS_MS + 10_000,
      'the writes made through the pooler to be seen',
      5,
    );
    expect(cache.fresh).toBe(true);
    // Once per instance, whichever instance connected: it says why no wake-up reaches it.
    await waitFor(() => there.get(RevocationCache).fresh, 10_000, 'the other cache to be fresh');
    expect(logged.mock.calls.filter(([message]) => /polls without wake-ups/.test(String(message)))).toHaveLength(2);
  });
});
