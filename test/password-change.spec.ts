import type { INestApplication } from '@nestjs/common';
import { Column, Entity, PrimaryGeneratedColumn, type DataSource, type Repository } from 'typeorm';
import {
  LogOutEverywhereService,
  REVOCATION_PURPOSE,
  Token,
  TokenResourceConfigError,
  TokenService,
} from '../lib/index.js';
import { createTestDatabase, type TestDatabase } from './support/test-database.js';
import { createTokenApp, dataSourceOf } from './support/token-app.js';

/**
 * logOutEverywhere.applyOnPasswordChange (API.md, issue 5): a `save` that changes the
 * password revokes the user's tokens in the same transaction.
 */

@Entity('users')
class User {
  @PrimaryGeneratedColumn()
  id!: number;

  @Column({ type: 'text' })
  email!: string;

  @Column({ type: 'text' })
  hashedPassword!: string;
}

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

it('a password change by save inside a transaction revokes the user\'s tokens, stored and unstored', async () => {
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
  await expect(dataSource.transaction(async (manager) => {
    user.hashedPassword = 'new-hash';
    await manager.save(user);
    throw new Error('roll back');
  })).rejects.toThrow('roll back');
  expect((await users.findOneByOrFail({ id: user.id })).hashedPassword).toBe('old-hash');
  expect(await purposeOf(storedJti)).toBe('user');
  expect(await tokens.tokenRevoked(stored)).toBe(false);
  expect(await tokens.tokenRevoked(unstored)).toBe(false);
  expect(await dataSource.query(`SELECT 1 FROM tokens WHERE purpose = 'log_out_everywhere' AND subject = $1`, [String(user.id)])).toEqual([]);
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

it('a plain repository.save (TypeORM\'s own transaction) revokes', async () => {
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

it('logOutOnPasswordChange: for password changes made without save, in the caller\'s transaction', async () => {
  const { user, stored, unstored } = await userWithSessions();
  const logOut = app.get(LogOutEverywhereService);
  await expect(dataSource.transaction(async (manager) => {
    await manager.update(User, { id: user.id }, { hashedPassword: 'by-update' });
    await logOut.logOutOnPasswordChange(user, manager);
    throw new Error('roll back');
  })).rejects.toThrow('roll back');
  expect(await tokens.tokenRevoked(stored)).toBe(false);

  const counted = await dataSource.transaction(async (manager) => {
    await manager.update(User, { id: user.id }, { hashedPassword: 'by-update' });
    return logOut.logOutOnPasswordChange(user, manager);
  });
  expect(counted).toBe(1);
  expect(await tokens.tokenRevoked(stored)).toBe(true);
  expect(await tokens.tokenRevoked(unstored)).toBe(true);
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
  await expect(createTokenApp(db.url, {
    options: { expunge: { enabled: false }, logOutEverywhere: { applyOnPasswordChange: true, userEntity: Stranger } },
  })).rejects.toThrow(TokenResourceConfigError);
  await expect(createTokenApp(db.url, {
    options: { expunge: { enabled: false }, logOutEverywhere: { applyOnPasswordChange: true, userEntity: User, passwordField: 'passwordHash' } },
    typeOrm: { entities: [Token, User] },
  })).rejects.toThrow(/passwordField/);
});
