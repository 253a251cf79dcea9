import { randomUUID } from 'node:crypto';
import { jest } from '@jest/globals';
import pg from 'pg';
import { Logger, type INestApplication } from '@nestjs/common';
import {
  Entity,
  PrimaryGeneratedColumn,
  type DataSource,
  type EntityManager,
  type EntitySubscriberInterface,
  type Repository,
} from 'typeorm';
import { LogOutEverywhereService, REVOCATION_PURPOSE, Token, TokenResourceConfigError, TokenService } from '../lib/index.js';
import { TokenCodec } from '../lib/jwt/token-codec.js';
import { logOutMarkerJti } from '../lib/log-out-everywhere/log-out-marker.js';
import { clockPast } from './support/clock.js';
import { loggedOutAt } from './support/logged-out-at.js';
import { proxyDatabase } from './support/tcp-proxy.js';
import { createTestDatabase, type TestDatabase } from './support/test-database.js';
import { createTokenApp, dataSourceOf } from './support/token-app.js';
import { User } from './support/user.entity.js';
import { waitFor } from './support/wait-for.js';

/**
 * logOutEverywhere.applyOnPasswordChange: a `save` that changes the
 * password revokes the user's tokens in the same transaction.
 */

let db: TestDatabase;
let app: INestApplication;
let tokens: TokenService;
let users: Repository<User>;
let dataSource: DataSource;

beforeAll(async () => {
  db = await createTestDatabase();
  app = await createTokenApp(db.url, {
    options: { storeAllTokens: true, expunge: { enabled: false }, logOutEverywhere: { applyOnPasswordChange: true, userEntity: User } },
    typeOrm: { entities: [Token, User] },
  });
  tokens = app.get(TokenService);
  dataSource = dataSourceOf(app);
  await dataSource.query('CREATE TABLE users (id serial PRIMARY KEY, email text NOT NULL, "hashedPassword" text NOT NULL)');
  users = dataSource.getRepository(User);
  dataSource.subscribers.push(commitHook);
});

afterAll(async () => {
  await app?.close();
  await db?.drop();
});

let counter = 0;
/** A user with two sessions: one stored and one never stored. */
async function userWithSessions(): Promise<{ user: User; stored: string; storedJti: string; unstored: string }> {
  counter += 1;
  const user = await users.save(users.create({ email: `u${counter}@example.com`, hashedPassword: 'old-hash' }));
  const stored = await tokens.issueToken({ subject: String(user.id) });
  const unstoredApp = await createTokenApp(db.url, { options: { expunge: { enabled: false } } });
  try {
    const unstored = await unstoredApp.get(TokenService).issueToken({ subject: String(user.id) });
    return { user, stored: stored.token, storedJti: stored.jti, unstored: unstored.token };
  } finally {
    await unstoredApp.close();
  }
}

async function purposeOf(jti: string): Promise<string> {
  return (await dataSource.query('SELECT purpose FROM tokens WHERE jti = $1', [jti]))[0].purpose;
}

/**
 * A login on another connection while a password change is written but not committed
 * (`changing` is the change's transaction): it still reads the old hash, and signs its
 * tokens strictly after the log-out the change has recorded so far.
 */
async function racingLogin(user: User, changing: EntityManager): Promise<{ stored: { token: string; jti: string }; unstored: string }> {
  await clockPast(await loggedOutAt(changing, String(user.id)));
  expect((await users.findOneByOrFail({ id: user.id })).hashedPassword).toBe('old-hash');
  const stored = await tokens.issueToken({ subject: String(user.id) });
  const iat = Date.now() / 1000;
  const unstored = await app.get(TokenCodec).sign({ sub: String(user.id), jti: randomUUID(), iat, exp: Math.floor(iat) + 3600 });
  return { stored, unstored };
}

/** Work to run in the next transaction of the data source just before it commits; see {@link beforeNextCommit}. */
let nextCommitWork: ((manager: EntityManager) => Promise<void>) | undefined;

/** Runs `work` inside the next transaction that commits, after everything else it did. */
function beforeNextCommit(work: (manager: EntityManager) => Promise<void>): void {
  nextCommitWork = work;
}

const commitHook: EntitySubscriberInterface = {
  beforeTransactionCommit({ manager }) {
    const work = nextCommitWork;
    nextCommitWork = undefined;
    return work?.(manager);
  },
};

/** A login after the password change, and after the clock moved past its log-out: valid. */
async function expectLaterLoginValid(user: User): Promise<void> {
  await clockPast(await loggedOutAt(dataSource, String(user.id)));
  const later = await tokens.issueToken({ subject: String(user.id) });
  expect(await tokens.tokenRevoked(later.token)).toBe(false);
}

it("a password change by save inside a transaction revokes the user's tokens, stored and unstored", async () => {
  const { user, stored, storedJti, unstored } = await userWithSessions();
  const bystander = await userWithSessions();
  await dataSource.transaction(async (manager) => {
    user.hashedPassword = 'new-hash';
    await manager.save(user);
    // Revoked inside the transaction, invisible outside until it commits.
    expect((await manager.query('SELECT purpose FROM tokens WHERE jti = $1', [storedJti]))[0].purpose).toBe(REVOCATION_PURPOSE);
    expect(await purposeOf(storedJti)).toBe('user');
  });
  expect(await purposeOf(storedJti)).toBe(REVOCATION_PURPOSE);
  expect(await tokens.tokenRevoked(stored)).toBe(true);
  expect(await tokens.tokenRevoked(unstored)).toBe(true);
  expect(await tokens.tokenRevoked(bystander.stored)).toBe(false);
  expect(await tokens.tokenRevoked(bystander.unstored)).toBe(false);
});

it('the same change rolled back revokes nothing, and the password is unchanged', async () => {
  const { user, stored, storedJti, unstored } = await userWithSessions();
  await expect(
    dataSource.transaction(async (manager) => {
      user.hashedPassword = 'new-hash';
      await manager.save(user);
      throw new Error('roll back');
    }),
  ).rejects.toThrow('roll back');
  expect((await users.findOneByOrFail({ id: user.id })).hashedPassword).toBe('old-hash');
  expect(await purposeOf(storedJti)).toBe('user');
  expect(await tokens.tokenRevoked(stored)).toBe(false);
  expect(await tokens.tokenRevoked(unstored)).toBe(false);
  expect(await dataSource.query(`SELECT 1 FROM tokens WHERE purpose = 'log_out_everywhere' AND subject = $1`, [String(user.id)])).toEqual(
    [],
  );
});

it('saving another field, or the same password again, revokes nothing', async () => {
  const { user, stored, storedJti, unstored } = await userWithSessions();
  user.email = `changed-${user.id}@example.com`;
  await users.save(user);
  const reloaded = await users.findOneByOrFail({ id: user.id });
  expect(reloaded.email).toBe(user.email);
  reloaded.hashedPassword = 'old-hash';
  await users.save(reloaded);
  expect(await purposeOf(storedJti)).toBe('user');
  expect(await tokens.tokenRevoked(stored)).toBe(false);
  expect(await tokens.tokenRevoked(unstored)).toBe(false);
});

it("a plain repository.save (TypeORM's own transaction) revokes", async () => {
  const { user, stored, unstored } = await userWithSessions();
  await users.save({ id: user.id, hashedPassword: 'another-hash' });
  expect(await tokens.tokenRevoked(stored)).toBe(true);
  expect(await tokens.tokenRevoked(unstored)).toBe(true);
});

it('a change whose own UPDATE fails revokes nothing', async () => {
  const { user, stored } = await userWithSessions();
  await dataSource.query('ALTER TABLE users ADD CONSTRAINT short_hash CHECK (length("hashedPassword") < 20)');
  try {
    await expect(users.save({ id: user.id, hashedPassword: 'x'.repeat(40) })).rejects.toThrow(/short_hash/);
  } finally {
    await dataSource.query('ALTER TABLE users DROP CONSTRAINT short_hash');
  }
  expect(await tokens.tokenRevoked(stored)).toBe(false);
});

it("logOutOnPasswordChange: for password changes made without save, in the caller's transaction", async () => {
  const { user, stored, unstored } = await userWithSessions();
  const logOut = app.get(LogOutEverywhereService);
  await expect(
    dataSource.transaction(async (manager) => {
      await manager.update(User, { id: user.id }, { hashedPassword: 'by-update' });
      await logOut.logOutOnPasswordChange(user, manager);
      throw new Error('roll back');
    }),
  ).rejects.toThrow('roll back');
  expect(await tokens.tokenRevoked(stored)).toBe(false);

  const counted = await dataSource.transaction(async (manager) => {
    await manager.update(User, { id: user.id }, { hashedPassword: 'by-update' });
    return logOut.logOutOnPasswordChange(user, manager);
  });
  expect(counted).toBe(1);
  expect(await tokens.tokenRevoked(stored)).toBe(true);
  expect(await tokens.tokenRevoked(unstored)).toBe(true);
});

describe('a login racing an uncommitted password change does not survive its commit', () => {
  it("save inside the caller's transaction: logged out again when the caller commits", async () => {
    const { user } = await userWithSessions();
    const raced = await dataSource.transaction(async (manager) => {
      user.hashedPassword = 'new-hash';
      await manager.save(user);
      return racingLogin(user, manager);
    });
    expect(await tokens.tokenRevoked(raced.stored.token)).toBe(true);
    expect(await purposeOf(raced.stored.jti)).toBe(REVOCATION_PURPOSE);
    expect(await tokens.tokenRevoked(raced.unstored)).toBe(true);
    await expectLaterLoginValid(user);
  });

  it("a plain repository.save: logged out again when TypeORM's own transaction commits", async () => {
    const { user } = await userWithSessions();
    let raced!: Awaited<ReturnType<typeof racingLogin>>;
    beforeNextCommit(async (manager) => {
      raced = await racingLogin(user, manager);
    });
    await users.save({ id: user.id, hashedPassword: 'new-hash' });
    expect(raced).toBeDefined();
    expect(await tokens.tokenRevoked(raced.stored.token)).toBe(true);
    expect(await tokens.tokenRevoked(raced.unstored)).toBe(true);
    await expectLaterLoginValid(user);
  });

  it("logOutOnPasswordChange in the caller's transaction: logged out again after the commit too", async () => {
    const { user } = await userWithSessions();
    const logOut = app.get(LogOutEverywhereService);
    const raced = await dataSource.transaction(async (manager) => {
      await manager.update(User, { id: user.id }, { hashedPassword: 'by-update' });
      await logOut.logOutOnPasswordChange(user, manager);
      return racingLogin(user, manager);
    });
    expect(await tokens.tokenRevoked(raced.stored.token)).toBe(true);
    expect(await tokens.tokenRevoked(raced.unstored)).toBe(true);
    await expectLaterLoginValid(user);
  });

  it('a change in a savepoint: rolled back, nothing is repeated; released, repeated when the outer transaction commits', async () => {
    const rolledBack = await userWithSessions();
    const newSession = await dataSource.transaction(async (manager) => {
      await expect(
        manager.transaction(async (savepoint) => {
          rolledBack.user.hashedPassword = 'new-hash';
          await savepoint.save(rolledBack.user);
          throw new Error('roll back to the savepoint');
        }),
      ).rejects.toThrow('roll back to the savepoint');
      return tokens.issueToken({ subject: String(rolledBack.user.id) });
    });
    expect(await dataSource.query('SELECT 1 FROM tokens WHERE jti = $1', [logOutMarkerJti(String(rolledBack.user.id))])).toEqual([]);
    for (const token of [rolledBack.stored, rolledBack.unstored, newSession.token]) expect(await tokens.tokenRevoked(token)).toBe(false);

    const { user } = await userWithSessions();
    const raced = await dataSource.transaction(async (manager) => {
      await manager.transaction(async (savepoint) => {
        user.hashedPassword = 'new-hash';
        await savepoint.save(user);
      });
      // The savepoint is released, but the change is still not committed.
      return racingLogin(user, manager);
    });
    expect(await tokens.tokenRevoked(raced.stored.token)).toBe(true);
    expect(await tokens.tokenRevoked(raced.unstored)).toBe(true);
  });

  it('a repeat that fails after the commit is logged with the subject; the password change still succeeds', async () => {
    const { proxy, url: proxied } = await proxyDatabase(db.url);
    const viaProxy = await createTokenApp(proxied, {
      options: { storeAllTokens: true, expunge: { enabled: false }, logOutEverywhere: { applyOnPasswordChange: true, userEntity: User } },
      typeOrm: { entities: [Token, User] },
    });
    const logged = jest.spyOn(Logger.prototype, 'error').mockImplementation(() => undefined);
    // Ahead of the module's own subscriber: the database goes away right after the COMMIT.
    const cutAfterCommit: EntitySubscriberInterface = { afterTransactionCommit: () => proxy.cut() };
    const proxiedSubscribers = dataSourceOf(viaProxy).subscribers;
    try {
      const { user, stored } = await userWithSessions();
      proxiedSubscribers.unshift(cutAfterCommit);
      await dataSourceOf(viaProxy).getRepository(User).save({ id: user.id, hashedPassword: 'new-hash' });
      proxiedSubscribers.splice(proxiedSubscribers.indexOf(cutAfterCommit), 1);
      // Committed, with the log-out it made inside the transaction.
      expect((await users.findOneByOrFail({ id: user.id })).hashedPassword).toBe('new-hash');
      expect(await tokens.tokenRevoked(stored)).toBe(true);
      expect(logged).toHaveBeenCalledWith(expect.stringContaining(`subject '${user.id}'`), expect.anything());
    } finally {
      logged.mockRestore();
      await viaProxy.close();
      await proxy.close();
    }
  });
});

it('keeps the committed connection until its repeat is done, even when another commit subscriber fails', async () => {
  const { user } = await userWithSessions();
  const before = await loggedOutAt(dataSource, String(user.id)).catch(() => 0);
  // TypeORM awaits the commit subscribers together; one that fails makes save() release
  // the connection at once, while the repeat may still be inside its own transaction.
  const failing: EntitySubscriberInterface = { afterTransactionCommit: () => Promise.reject(new Error('audit trail failed')) };
  dataSource.subscribers.push(failing);
  try {
    await expect(users.save({ id: user.id, hashedPassword: 'new-hash' })).rejects.toThrow('audit trail failed');
  } finally {
    dataSource.subscribers.splice(dataSource.subscribers.indexOf(failing), 1);
  }
  expect((await users.findOneByOrFail({ id: user.id })).hashedPassword).toBe('new-hash');
  // The repeat ran to its COMMIT on that connection before the pool got it back.
  expect(await loggedOutAt(dataSource, String(user.id))).toBeGreaterThan(before);
  await new Promise((resolve) => setTimeout(resolve, 100));
  expect(
    await dataSource.query(
      `SELECT pid, state FROM pg_stat_activity WHERE datname = current_database() AND state LIKE 'idle in transaction%'`,
    ),
  ).toEqual([]);
  // And the pool's connections commit what they are given.
  const { jti } = await tokens.issueToken({ subject: 'after-failed-broadcast' });
  await Promise.all(Array.from({ length: 12 }, (_, i) => tokens.revokeJti(`${jti}-${i}`, 'after-failed-broadcast')));
  const other = new pg.Client({ connectionString: db.url });
  await other.connect();
  try {
    const { rows } = await other.query('SELECT count(*)::int AS n FROM tokens WHERE subject = $1 AND purpose = $2', [
      'after-failed-broadcast',
      REVOCATION_PURPOSE,
    ]);
    expect(rows[0].n).toBe(12);
  } finally {
    await other.end();
  }
});

describe('the repeats after a commit wait for locks at most storeTimeoutMs in all', () => {
  const STORE_TIMEOUT_MS = 1000;
  /**
   * Leeway for a loaded machine. Far below what an unbounded wait takes here (until the other
   * transaction ends), and below a budget spent once per subject (2 x STORE_TIMEOUT_MS).
   */
  const MARGIN_MS = 800;
  let bounded: INestApplication;

  beforeAll(async () => {
    bounded = await createTokenApp(db.url, {
      options: {
        storeAllTokens: true,
        storeTimeoutMs: STORE_TIMEOUT_MS,
        expunge: { enabled: false },
        logOutEverywhere: { applyOnPasswordChange: true, userEntity: User },
      },
      typeOrm: { entities: [Token, User] },
    });
  });

  afterAll(async () => {
    await bounded?.close();
  });

  /**
   * Commits `change` (password saves of `changed`, through `bounded`) while another, long
   * transaction holds the marker rows of those users, which the repeats need.
   *
   * @returns how long the commit took, from just before the COMMIT until `change` resolved.
   */
  async function commitWhileMarkersLocked(changed: User[], change: (boundedUsers: Repository<User>) => Promise<unknown>): Promise<number> {
    const markers = changed.map((user) => logOutMarkerJti(String(user.id)));
    // The markers must exist, committed, for another transaction to lock them.
    for (const user of changed) await app.get(LogOutEverywhereService).logOutEverywhere(String(user.id));
    const blocker = new pg.Client({ connectionString: db.url });
    await blocker.connect();
    const subscribers = dataSourceOf(bounded).subscribers;
    let committingAt = 0;
    let locked: Promise<pg.QueryResult> | undefined;
    // Just before the change commits, the other transaction asks for the marker rows, which
    // the change's first log-outs hold: it gets them at the COMMIT and keeps them.
    const lockWhileCommitting: EntitySubscriberInterface = {
      async beforeTransactionCommit() {
        const [{ pid }] = ((await blocker.query('BEGIN; SELECT pg_backend_pid() AS pid')) as unknown as pg.QueryResult[])[1].rows;
        locked = blocker.query('SELECT 1 FROM tokens WHERE jti = ANY ($1) ORDER BY jti FOR UPDATE', [markers]);
        await waitFor(
          async () => (await dataSource.query('SELECT cardinality(pg_blocking_pids($1)) > 0 AS waiting', [pid]))[0].waiting,
          5000,
          'the other transaction to wait for the marker rows',
        );
        committingAt = Date.now();
      },
      // Ahead of the module's own subscriber, on the committed connection: the repeats queue
      // behind this, so the other transaction takes the rows (their new versions) first.
      afterTransactionCommit({ queryRunner }) {
        return queryRunner.query('SELECT pg_sleep(0.3)');
      },
    };
    subscribers.unshift(lockWhileCommitting);
    let timer!: NodeJS.Timeout;
    try {
      const tooLate = new Promise((_, reject) => {
        timer = setTimeout(() => reject(new Error('the commit still waits for the repeats')), 5000 + STORE_TIMEOUT_MS + 3 * MARGIN_MS);
      });
      await Promise.race([change(dataSourceOf(bounded).getRepository(User)), tooLate]);
      const took = Date.now() - committingAt;
      expect(committingAt).toBeGreaterThan(0);
      // The other transaction holds every row, and still does.
      expect((await locked!).rowCount).toBe(changed.length);
      return took;
    } finally {
      clearTimeout(timer);
      subscribers.splice(subscribers.indexOf(lockWhileCommitting), 1);
      await blocker.query('ROLLBACK').catch(() => undefined);
      await blocker.end();
    }
  }

  /** No connection was given back to the pool inside a transaction (a failed repeat must roll back). */
  async function expectNoTransactionLeftOpen(): Promise<void> {
    expect(
      await dataSource.query(
        `SELECT pid, state FROM pg_stat_activity WHERE datname = current_database() AND state LIKE 'idle in transaction%'`,
      ),
    ).toEqual([]);
  }

  it('a plain repository.save: the committed save resolves in time, and the failed repeat is logged with the subject', async () => {
    const logged = jest.spyOn(Logger.prototype, 'error').mockImplementation(() => undefined);
    try {
      const { user, stored } = await userWithSessions();
      const took = await commitWhileMarkersLocked([user], (boundedUsers) => boundedUsers.save({ id: user.id, hashedPassword: 'new-hash' }));
      expect(took).toBeLessThan(STORE_TIMEOUT_MS + MARGIN_MS);
      expect(logged).toHaveBeenCalledWith(expect.stringMatching(new RegExp(`subject '${user.id}'.*lock timeout`)), expect.anything());
      // Committed, with the log-out made inside the transaction.
      expect((await users.findOneByOrFail({ id: user.id })).hashedPassword).toBe('new-hash');
      expect(await tokens.tokenRevoked(stored)).toBe(true);
    } finally {
      logged.mockRestore();
    }
    await expectNoTransactionLeftOpen();
  });

  it("two users' passwords changed in one transaction: one budget for both repeats, each failure logged with its subject", async () => {
    const logged = jest.spyOn(Logger.prototype, 'error').mockImplementation(() => undefined);
    try {
      const [first, second] = [await userWithSessions(), await userWithSessions()];
      const took = await commitWhileMarkersLocked([first.user, second.user], (boundedUsers) =>
        boundedUsers.manager.transaction(async (manager) => {
          await manager.save(User, { id: first.user.id, hashedPassword: 'new-hash' });
          await manager.save(User, { id: second.user.id, hashedPassword: 'new-hash' });
        }),
      );
      expect(took).toBeLessThan(STORE_TIMEOUT_MS + MARGIN_MS);
      for (const { user, stored } of [first, second]) {
        expect(logged).toHaveBeenCalledWith(expect.stringMatching(new RegExp(`subject '${user.id}'.*lock timeout`)), expect.anything());
        expect(await tokens.tokenRevoked(stored)).toBe(true);
      }
    } finally {
      logged.mockRestore();
    }
    await expectNoTransactionLeftOpen();
  });
});

it('without applyOnPasswordChange, a password save revokes nothing', async () => {
  await app.close();
  app = await createTokenApp(db.url, {
    options: { storeAllTokens: true, expunge: { enabled: false }, logOutEverywhere: { userEntity: User } },
    typeOrm: { entities: [Token, User] },
  });
  tokens = app.get(TokenService);
  dataSource = dataSourceOf(app);
  users = dataSource.getRepository(User);
  const { user, stored } = await userWithSessions();
  await users.save({ id: user.id, hashedPassword: 'unwatched' });
  expect(await tokens.tokenRevoked(stored)).toBe(false);
});

it('fails at start-up when userEntity is not an entity of the token data source', async () => {
  @Entity('strangers')
  class Stranger {
    @PrimaryGeneratedColumn()
    id!: number;
  }
  await expect(
    createTokenApp(db.url, {
      options: { expunge: { enabled: false }, logOutEverywhere: { applyOnPasswordChange: true, userEntity: Stranger } },
    }),
  ).rejects.toThrow(TokenResourceConfigError);
  await expect(
    createTokenApp(db.url, {
      options: {
        expunge: { enabled: false },
        logOutEverywhere: { applyOnPasswordChange: true, userEntity: User, passwordField: 'passwordHash' },
      },
      typeOrm: { entities: [Token, User] },
    }),
  ).rejects.toThrow(/passwordField/);
});
