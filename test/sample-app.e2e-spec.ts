import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import type { INestApplication } from '@nestjs/common';
import { SchedulerRegistry } from '@nestjs/schedule';
import { Test } from '@nestjs/testing';
import request from 'supertest';
import { EXPUNGE_JOB_NAME, ExpungerService, SessionService } from '../lib/index.js';
import { AppModule } from '../sample-app/app.module.js';
import { DEMO_USER } from '../sample-app/users/demo-user.js';
import { createTestDatabase, type TestDatabase } from './support/test-database.js';

/**
 * The sample app's walkthrough over HTTP: the real AppModule (migrations, seeding, guard,
 * log-out-everywhere, password-change subscriber) on a database of this file's own.
 */

let db: TestDatabase;
let app: INestApplication;
let http: ReturnType<INestApplication['getHttpServer']>;

const bearer = (token: string) => ({ authorization: `Bearer ${token}` });

/** What login and refresh answer: a session's pair of tokens. */
const SESSION_BODY = {
  sessionId: expect.any(String),
  accessToken: expect.any(String),
  tokenType: 'Bearer',
  expiresAt: expect.any(String),
  refreshToken: expect.any(String),
  refreshExpiresAt: expect.any(String),
};

interface SessionBody {
  sessionId: string;
  accessToken: string;
  refreshToken: string;
}

async function startSession(email: string = DEMO_USER.email, password: string = DEMO_USER.password): Promise<SessionBody> {
  const res = await request(http).post('/auth/login').send({ email, password }).expect(200);
  expect(res.body).toEqual(SESSION_BODY);
  return res.body as SessionBody;
}

async function login(email?: string, password?: string): Promise<string> {
  return (await startSession(email, password)).accessToken;
}

function refresh(refreshToken: unknown) {
  return request(http).post('/auth/refresh').send({ refreshToken });
}

function me(token: string) {
  return request(http).get('/me').set(bearer(token));
}

beforeAll(async () => {
  db = await createTestDatabase();
  const moduleRef = await Test.createTestingModule({
    imports: [AppModule.forRoot({ databaseUrl: db.url, env: { NODE_ENV: 'test', TOKEN_TTL: '1h' } })],
  }).compile();
  app = moduleRef.createNestApplication({ logger: false });
  await app.init();
  http = app.getHttpServer();
});

afterAll(async () => {
  await app?.close();
  await db?.drop();
});

describe('public routes', () => {
  it('GET /health answers without a token', async () => {
    const res = await request(http).get('/health').expect(200);
    expect(res.body).toMatchObject({ status: 'ok', info: { tokenStore: { status: 'up' } } });
  });

  it('GET /me without a token, or with garbage, is 401', async () => {
    await request(http).get('/me').expect(401);
    await request(http).get('/me').set('authorization', 'Bearer not.a.jwt').expect(401);
    await request(http).get('/me').set('authorization', 'Basic Zm9vOmJhcg==').expect(401);
  });
});

describe('POST /auth/login', () => {
  it('refuses wrong credentials with 401, the same for an unknown account', async () => {
    const wrong = await request(http).post('/auth/login').send({ email: DEMO_USER.email, password: 'nope' }).expect(401);
    const unknown = await request(http).post('/auth/login').send({ email: 'nobody@example.com', password: 'nope' }).expect(401);
    expect(unknown.body.message).toBe(wrong.body.message);
  });

  it.each([
    ['no body', undefined, /email is required/],
    ['an array', [1, 2], /JSON object/],
    ['a non-string password', { email: DEMO_USER.email, password: 42 }, /password must be a string/],
    ['a bad e-mail address', { email: 'demo', password: 'x' }, /e-mail address/],
    ['an unknown field', { email: DEMO_USER.email, password: 'x', admin: true }, /unexpected field "admin"/],
  ])('answers 400 for %s', async (_case, body, message) => {
    const req = request(http).post('/auth/login');
    const res = await (body === undefined ? req : req.send(body as object)).expect(400);
    expect(res.body.message).toMatch(message);
  });

  it('answers 400 for malformed JSON and for a JSON string body', async () => {
    await request(http).post('/auth/login').set('content-type', 'application/json').send('{"email":').expect(400);
    await request(http).post('/auth/login').set('content-type', 'application/json').send('"just a string"').expect(400);
  });

  it('accepts the e-mail address in any case', async () => {
    await login(DEMO_USER.email.toUpperCase());
  });
});

describe('the walkthrough', () => {
  it('me, sessions, logout, and the revoked token refused', async () => {
    const laptop = await login();
    const phone = await login();

    const mine = await me(laptop).expect(200);
    expect(mine.body.user).toEqual({ id: expect.any(String), email: DEMO_USER.email });
    expect(mine.body.claims).toMatchObject({ sub: mine.body.user.id, jti: expect.any(String), iss: 'nestjs-token-resource-sample' });

    const sessions = await request(http).get('/auth/sessions').set(bearer(laptop)).expect(200);
    const current = sessions.body.filter((s: { current: boolean }) => s.current);
    expect(current).toEqual([expect.objectContaining({ sessionId: mine.body.claims.sid })]);
    expect(sessions.body.length).toBeGreaterThanOrEqual(2);
    for (const session of sessions.body) {
      expect(Object.keys(session).sort()).toEqual(['createdAt', 'current', 'expiresAt', 'lastRefreshedAt', 'sessionId']);
    }

    await request(http).post('/auth/logout').set(bearer(laptop)).expect(204);
    const refused = await me(laptop).expect(401);
    expect(refused.body.message).toBe('token revoked');
    await request(http).post('/auth/logout').set(bearer(laptop)).expect(401);
    await me(phone).expect(200);

    const after = await request(http).get('/auth/sessions').set(bearer(phone)).expect(200);
    expect(after.body.map((s: { sessionId: string }) => s.sessionId)).not.toContain(mine.body.claims.sid);
  });

  it('logout-everywhere with keepCurrent keeps this token and revokes the others', async () => {
    const others = [await login(), await login()];
    const current = await login();
    await request(http).post('/auth/logout-everywhere').set(bearer(current)).send({ keepCurrent: 'yes' }).expect(400);

    const res = await request(http).post('/auth/logout-everywhere').set(bearer(current)).send({ keepCurrent: true }).expect(200);
    expect(res.body).toEqual({ revoked: expect.any(Number), keptCurrent: true });
    expect(res.body.revoked).toBeGreaterThanOrEqual(2);
    await me(current).expect(200);
    for (const token of others) await me(token).expect(401);

    const sessions = await request(http).get('/auth/sessions').set(bearer(current)).expect(200);
    expect(sessions.body).toEqual([expect.objectContaining({ current: true })]);

    // Without a body: every token, this one included.
    const all = await request(http).post('/auth/logout-everywhere').set(bearer(current)).expect(200);
    expect(all.body).toEqual({ revoked: expect.any(Number), keptCurrent: false });
    await me(current).expect(401);
    await me(await login()).expect(200);
  });

  it('a password change revokes every older token and hands back a fresh one', async () => {
    const other = await login();
    const current = await login();
    const newPassword = 'a much longer new password';

    await request(http).post('/auth/password').set(bearer(current)).send({ currentPassword: 'wrong', newPassword }).expect(403);
    await request(http)
      .post('/auth/password')
      .set(bearer(current))
      .send({ currentPassword: DEMO_USER.password, newPassword: 'short' })
      .expect(400);
    await request(http).post('/auth/password').set(bearer(current)).send({ currentPassword: DEMO_USER.password }).expect(400);
    await me(other).expect(200); // refused changes revoke nothing

    const res = await request(http)
      .post('/auth/password')
      .set(bearer(current))
      .send({ currentPassword: DEMO_USER.password, newPassword })
      .expect(200);
    expect(res.body).toEqual(SESSION_BODY);
    await me(other).expect(401);
    await me(current).expect(401);
    await me(res.body.accessToken).expect(200);

    await request(http).post('/auth/login').send({ email: DEMO_USER.email, password: DEMO_USER.password }).expect(401);
    await login(DEMO_USER.email, newPassword);

    // Change it back, so that the other tests can log in with the demo password.
    const back = await request(http)
      .post('/auth/password')
      .set(bearer(res.body.accessToken))
      .send({ currentPassword: newPassword, newPassword: DEMO_USER.password })
      .expect(200);
    await me(back.body.accessToken).expect(200);
  });
});

describe('sessions', () => {
  it('refresh rotates; a racing repeat gets the same pair; a stolen, replayed refresh token ends the session', async () => {
    const first = await startSession();
    const second = await refresh(first.refreshToken).expect(200);
    expect(second.body).toEqual({ ...SESSION_BODY, sessionId: first.sessionId });
    await me(second.body.accessToken).expect(200);
    // Within the sample's 10 s reuse interval, the same refresh token is a racing tab.
    expect((await refresh(first.refreshToken).expect(200)).body).toEqual(second.body);
    const third = await refresh(second.body.refreshToken).expect(200);
    // Two rotations back is no race: theft. The whole session ends, the newest tokens included.
    const replay = await refresh(first.refreshToken).expect(401);
    expect(replay.body.message).toBe('refresh token reused: the session is revoked');
    expect((await me(third.body.accessToken).expect(401)).body.message).toBe('token revoked');
    expect((await refresh(third.body.refreshToken).expect(401)).body.message).toBe('session revoked');
  });

  it('refuses an access token, garbage or no body as a refresh token', async () => {
    const session = await startSession();
    expect((await refresh(session.accessToken).expect(401)).body.message).toBe('invalid refresh token');
    await refresh('garbage').expect(401);
    await refresh(42).expect(400);
    await request(http).post('/auth/refresh').send({}).expect(400);
    expect((await me(session.refreshToken).expect(401)).body.message).toBe('token not for authentication');
  });

  it("DELETE /auth/sessions/:id logs one of the caller's devices out, and nobody else's", async () => {
    const laptop = await startSession();
    const phone = await startSession();
    await request(http).delete(`/auth/sessions/${phone.sessionId}`).set(bearer(laptop.accessToken)).expect(204);
    await me(phone.accessToken).expect(401);
    await refresh(phone.refreshToken).expect(401);
    await me(laptop.accessToken).expect(200);

    const stranger = await app.get(SessionService).start({ subject: 'someone-else' });
    await request(http).delete(`/auth/sessions/${stranger.sessionId}`).set(bearer(laptop.accessToken)).expect(404);
    await request(http).delete('/auth/sessions/not-a-uuid').set(bearer(laptop.accessToken)).expect(400);
    expect(await app.get(SessionService).list('someone-else')).toHaveLength(1);
  });
});

describe('e-mail confirmation', () => {
  const requestChange = async (token: string, email: string) => {
    const res = await request(http).post('/auth/email').set(bearer(token)).send({ email }).expect(202);
    expect(res.body).toEqual({ confirmationToken: expect.any(String), expiresAt: expect.any(String) });
    return res.body.confirmationToken as string;
  };
  const confirm = (token: unknown) => request(http).post('/auth/email/confirm').send({ token });

  it('applies the change once; a replay is refused', async () => {
    const session = await login();
    const confirmation = await requestChange(session, 'Renamed@Example.com');
    expect((await me(session)).body.user.email).toBe(DEMO_USER.email); // not before confirmation

    await confirm(confirmation).expect(200, { email: 'renamed@example.com' });
    expect((await me(session).expect(200)).body.user.email).toBe('renamed@example.com');
    const replay = await confirm(confirmation).expect(409);
    expect(replay.body.message).toMatch(/already used/);

    await login('renamed@example.com');
    await request(http).post('/auth/login').send({ email: DEMO_USER.email, password: DEMO_USER.password }).expect(401);

    // And back, for the other tests.
    await confirm(await requestChange(session, DEMO_USER.email)).expect(200);
  });

  it('a confirmation token is not a login, and a login token is not a confirmation', async () => {
    const session = await login();
    const confirmation = await requestChange(session, 'other@example.com');
    const refused = await me(confirmation).expect(401);
    expect(refused.body.message).toBe('token not for authentication');
    await confirm(session).expect(400);
    await confirm('garbage').expect(400);
    await confirm(42).expect(400);
    await request(http).post('/auth/email/confirm').send({}).expect(400);
  });

  it('of two concurrent confirmations exactly one applies the change', async () => {
    const session = await login();
    const confirmation = await requestChange(session, 'race@example.com');
    const statuses = (await Promise.all([confirm(confirmation), confirm(confirmation), confirm(confirmation)])).map((r) => r.status).sort();
    expect(statuses).toEqual([200, 409, 409]);
    await confirm(await requestChange(session, DEMO_USER.email)).expect(200);
  });

  it('refuses an address in use, and log-out-everywhere cancels pending confirmations', async () => {
    const session = await login();
    await request(http).post('/auth/email').set(bearer(session)).send({ email: DEMO_USER.email }).expect(409);
    await request(http).post('/auth/email').set(bearer(session)).send({ email: 'not-an-address' }).expect(400);

    const pending = await requestChange(session, 'pending@example.com');
    await request(http).post('/auth/logout-everywhere').set(bearer(session)).send({ keepCurrent: true }).expect(200);
    await confirm(pending).expect(409);
    expect((await me(session).expect(200)).body.user.email).toBe(DEMO_USER.email);
  });
});

describe('housekeeping', () => {
  it("schedules the expunger, which runs against the app's token table", async () => {
    expect(app.get(SchedulerRegistry).doesExist('cron', EXPUNGE_JOB_NAME)).toBe(true);
    const result = await app.get(ExpungerService).run();
    expect(result).toMatchObject({ skipped: false, deleted: expect.any(Number) });
  });
});
