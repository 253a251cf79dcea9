import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import type { INestApplication } from '@nestjs/common';
import type { Repository } from 'typeorm';
import { LogOutEverywhereService, SessionService, Token, TokenAlreadyRevokedError, TokenService } from '../lib/index.js';
import { guardAnswer } from './support/guard-answer.js';
import { uniqueSubject } from './support/jwt-fixtures.js';
import { createSessionApp, jtiOf } from './support/session-app.js';
import { createTestDatabase, type TestDatabase } from './support/test-database.js';
import { dataSourceOf } from './support/token-app.js';
import { User } from './support/user.entity.js';

let db: TestDatabase;
let app: INestApplication;
let sessions: SessionService;
let users: Repository<User>;

beforeAll(async () => {
  db = await createTestDatabase();
  app = await createSessionApp(db.url, { logOutEverywhere: { applyOnPasswordChange: true, userEntity: User } }, 10, {
    entities: [Token, User],
  });
  sessions = app.get(SessionService);
  await dataSourceOf(app).query('CREATE TABLE users (id serial PRIMARY KEY, email text NOT NULL, "hashedPassword" text NOT NULL)');
  users = dataSourceOf(app).getRepository(User);
});

afterAll(async () => {
  await app?.close();
  await db?.drop();
});

/** Three sessions of `subject`, the first refreshed once (its latest pair is returned). */
async function threeSessions(subject: string) {
  const kept = await sessions.refresh((await sessions.start({ subject })).refreshToken);
  return { kept, others: [await sessions.start({ subject }), await sessions.start({ subject })] };
}

describe('log out everywhere', () => {
  it('ends every session of the subject, and no other subject', async () => {
    const subject = uniqueSubject();
    const { kept, others } = await threeSessions(subject);
    const bystander = await sessions.start({ subject: uniqueSubject() });
    await app.get(LogOutEverywhereService).logOutEverywhere(subject);
    for (const pair of [kept, ...others]) {
      expect(await guardAnswer(app, pair.accessToken)).toEqual({ status: 401, message: 'token revoked' });
      await expect(sessions.refresh(pair.refreshToken)).rejects.toBeInstanceOf(TokenAlreadyRevokedError);
    }
    expect(await sessions.list(subject)).toEqual([]);
    expect(await guardAnswer(app, bystander.accessToken)).toEqual({ status: 200 });
  });

  it('with exceptJti of a session access token keeps that session, which goes on refreshing', async () => {
    const subject = uniqueSubject();
    const { kept, others } = await threeSessions(subject);
    await app.get(LogOutEverywhereService).logOutEverywhere(subject, { exceptJti: jtiOf(kept.accessToken) });
    for (const pair of others) {
      expect(await guardAnswer(app, pair.accessToken)).toEqual({ status: 401, message: 'token revoked' });
      await expect(sessions.refresh(pair.refreshToken)).rejects.toBeInstanceOf(TokenAlreadyRevokedError);
    }
    expect(await guardAnswer(app, kept.accessToken)).toEqual({ status: 200 });
    expect(await app.get(TokenService).tokenRevoked(kept.refreshToken)).toBe(false);
    expect((await sessions.list(subject)).map((s) => s.sessionId)).toEqual([kept.sessionId]);
    const next = await sessions.refresh(kept.refreshToken);
    expect(await guardAnswer(app, next.accessToken)).toEqual({ status: 200 });
  });
});

describe('password change', () => {
  it('ends every session of the user, and a rolled-back change ends none', async () => {
    const user = await users.save(users.create({ email: `${uniqueSubject()}@example.com`, hashedPassword: 'old-hash' }));
    const { kept, others } = await threeSessions(String(user.id));
    await dataSourceOf(app)
      .transaction(async (manager) => {
        await manager.save(Object.assign(user, { hashedPassword: 'rolled-back' }));
        throw new Error('roll back');
      })
      .catch(() => undefined);
    expect(await sessions.list(String(user.id))).toHaveLength(3);
    await users.save(Object.assign(user, { hashedPassword: 'new-hash' }));
    for (const pair of [kept, ...others]) {
      expect(await guardAnswer(app, pair.accessToken)).toEqual({ status: 401, message: 'token revoked' });
      await expect(sessions.refresh(pair.refreshToken)).rejects.toBeInstanceOf(TokenAlreadyRevokedError);
    }
    expect(await sessions.list(String(user.id))).toEqual([]);
  });

  it('logOutOnPasswordChange with exceptJti keeps the session that changed the password', async () => {
    const user = await users.save(users.create({ email: `${uniqueSubject()}@example.com`, hashedPassword: 'old-hash' }));
    const { kept, others } = await threeSessions(String(user.id));
    await dataSourceOf(app).transaction((manager) =>
      app.get(LogOutEverywhereService).logOutOnPasswordChange(user, manager, { exceptJti: jtiOf(kept.accessToken) }),
    );
    expect((await sessions.list(String(user.id))).map((s) => s.sessionId)).toEqual([kept.sessionId]);
    expect(await guardAnswer(app, others[0].accessToken)).toEqual({ status: 401, message: 'token revoked' });
    expect(await guardAnswer(app, (await sessions.refresh(kept.refreshToken)).accessToken)).toEqual({ status: 200 });
  });
});
