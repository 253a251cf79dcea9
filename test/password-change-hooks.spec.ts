import type { INestApplication } from '@nestjs/common';
import { Column, Entity, PrimaryColumn, PrimaryGeneratedColumn, type DataSource, type Repository } from 'typeorm';
import { LogOutEverywhereService, Token, TokenResourceConfigError, TokenService, type TokenResourceModuleOptions } from '../lib/index.js';
import { PasswordChangeSubscriber } from '../lib/log-out-everywhere/password-change.subscriber.js';
import { PostCommitLogOuts } from '../lib/log-out-everywhere/post-commit-log-outs.js';
import { clockPast } from './support/clock.js';
import { loggedOutAt } from './support/logged-out-at.js';
import { createTestDatabase, type TestDatabase } from './support/test-database.js';
import { createTokenApp, dataSourceOf } from './support/token-app.js';

/**
 * The TypeORM hooks of log-out everywhere (the password-change subscriber and the
 * post-commit repeat) stay registered when the data source is destroyed and initialised
 * again, go away with the application, and never log out a subject `subjectOf` got wrong.
 */

@Entity('hook_users')
class User {
  @PrimaryGeneratedColumn()
  id!: number;

  @Column({ type: 'text' })
  hashedPassword!: string;
}

@Entity('uuid_users')
class UuidUser {
  @PrimaryColumn({ type: 'text' })
  uuid!: string;

  @Column({ type: 'text' })
  hashedPassword!: string;
}

let db: TestDatabase;

beforeAll(async () => {
  db = await createTestDatabase();
});

afterAll(async () => {
  await db?.drop();
});

async function appWith(logOutEverywhere: TokenResourceModuleOptions['logOutEverywhere']): Promise<INestApplication> {
  const app = await createTokenApp(db.url, {
    options: { storeAllTokens: true, expunge: { enabled: false }, logOutEverywhere },
    typeOrm: { entities: [Token, User, UuidUser] },
  });
  await dataSourceOf(app).query(`
    CREATE TABLE IF NOT EXISTS hook_users (id serial PRIMARY KEY, "hashedPassword" text NOT NULL);
    CREATE TABLE IF NOT EXISTS uuid_users (uuid text PRIMARY KEY, "hashedPassword" text NOT NULL)`);
  return app;
}

describe('after DataSource.destroy() and initialize()', () => {
  let app: INestApplication;
  let dataSource: DataSource;

  beforeAll(async () => {
    app = await appWith({ applyOnPasswordChange: true, userEntity: User });
    dataSource = dataSourceOf(app);
    await dataSource.destroy();
    await dataSource.initialize();
  });

  afterAll(async () => {
    await app?.close();
  });

  it('a password change by save still logs the user out', async () => {
    const users: Repository<User> = dataSource.getRepository(User);
    const user = await users.save(users.create({ hashedPassword: 'old-hash' }));
    const { token } = await app.get(TokenService).issueToken({ subject: String(user.id) });
    await users.save({ id: user.id, hashedPassword: 'new-hash' });
    expect(await app.get(TokenService).tokenRevoked(token)).toBe(true);
  });

  it('a log-out in a transaction is still repeated after its commit', async () => {
    const runner = dataSource.createQueryRunner();
    await runner.startTransaction();
    let before: number;
    try {
      await app.get(LogOutEverywhereService).logOutEverywhere('repeated', { manager: runner.manager, repeatAfterCommit: true });
      before = await loggedOutAt(runner, 'repeated');
      await clockPast(before);
      await runner.commitTransaction();
    } finally {
      await runner.release();
    }
    expect(await loggedOutAt(dataSource, 'repeated')).toBeGreaterThan(before);
  });

  it('each hook is registered once, and none is left behind when the application closes', async () => {
    const hooks = () => dataSource.subscribers.filter((one) => one instanceof PasswordChangeSubscriber || one instanceof PostCommitLogOuts);
    expect(hooks()).toHaveLength(2);
    await dataSource.destroy();
    await dataSource.initialize();
    expect(hooks()).toHaveLength(2);
    await app.close();
    expect(hooks()).toHaveLength(0);
    // A plain property again, as TypeORM made it.
    expect(Object.getOwnPropertyDescriptor(dataSource, 'subscribers')).toMatchObject({ writable: true });
  });
});

describe('subjectOf', () => {
  it('the default, on a user entity without an id column, fails the boot', async () => {
    await expect(appWith({ applyOnPasswordChange: true, userEntity: UuidUser })).rejects.toThrow(TokenResourceConfigError);
    await expect(appWith({ applyOnPasswordChange: true, userEntity: UuidUser })).rejects.toThrow(/subjectOf/);
    const app = await appWith({ applyOnPasswordChange: true, userEntity: UuidUser, subjectOf: (u: UuidUser) => u.uuid });
    await app.close();
  });

  it('the default refuses a user without id rather than log out the subject "undefined"', async () => {
    const app = await appWith({});
    try {
      await expect(app.get(LogOutEverywhereService).logOutOnPasswordChange({ email: 'no-id@example.com' })).rejects.toThrow(TypeError);
      expect(await dataSourceOf(app).query('SELECT jti FROM tokens WHERE subject = $1', ['undefined'])).toEqual([]);
    } finally {
      await app.close();
    }
  });

  it('a result that is no storable subject makes the save reject, and nothing is committed', async () => {
    const app = await appWith({ applyOnPasswordChange: true, userEntity: User, subjectOf: () => 's'.repeat(3000) });
    try {
      const users = dataSourceOf(app).getRepository(User);
      const user = await users.save(users.create({ hashedPassword: 'old-hash' }));
      const rows = async () => (await dataSourceOf(app).query('SELECT count(*)::int AS n FROM tokens'))[0].n;
      const before = await rows();
      await expect(users.save({ id: user.id, hashedPassword: 'new-hash' })).rejects.toThrow(/subjectOf/);
      expect((await users.findOneByOrFail({ id: user.id })).hashedPassword).toBe('old-hash');
      expect(await rows()).toBe(before);
    } finally {
      await app.close();
    }
  });
});
