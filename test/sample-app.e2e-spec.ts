import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import type { INestApplication } from '@nestjs/common';
import { SchedulerRegistry } from '@nestjs/schedule';
import { Test } from '@nestjs/testing';
import request from 'supertest';
import { EXPUNGE_JOB_NAME, ExpungerService } from '../lib/index.js';
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

async function login(email: string = DEMO_USER.email, password: string = DEMO_USER.password): Promise<string> {
  const res = await request(http).post('/auth/login').send({ email, password }).expect(200);
  expect(res.body).toEqual({ token: expect.any(String), tokenType: 'Bearer', expiresAt: expect.any(String) });
  return res.body.token;
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
    expect(current).toEqual([expect.objectContaining({ jti: mine.body.claims.jti })]);
    expect(sessions.body.length).toBeGreaterThanOrEqual(2);
    for (const session of sessions.body) expect(Object.keys(session).sort()).toEqual(['createdAt', 'current', 'expiresAt', 'jti']);

    await request(http).post('/auth/logout').set(bearer(laptop)).expect(204);
    const refused = await me(laptop).expect(401);
    expect(refused.body.message).toBe('token revoked');
    await request(http).post('/auth/logout').set(bearer(laptop)).expect(401);
    await me(phone).expect(200);

    const after = await request(http).get('/auth/sessions').set(bearer(phone)).expect(200);
    expect(after.body.map((s: { jti: string }) => s.jti)).not.toContain(mine.body.claims.jti);
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
    await request(http).post('/auth/logout-everywhere').set(bearer(current)).expect(200, { revoked: 1, keptCurrent: false });
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
    expect(res.body).toEqual({ token: expect.any(String), tokenType: 'Bearer', expiresAt: expect.any(String) });
    await me(other).expect(401);
    await me(current).expect(401);
    await me(res.body.token).expect(200);

    await request(http).post('/auth/login').send({ email: DEMO_USER.email, password: DEMO_USER.password }).expect(401);
    await login(DEMO_USER.email, newPassword);

    // Change it back, so that the other tests can log in with the demo password.
    const back = await request(http)
      .post('/auth/password')
      .set(bearer(res.body.token))
      .send({ currentPassword: newPassword, newPassword: DEMO_USER.password })
      .expect(200);
    await me(back.body.token).expect(200);
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
