import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import { Controller, Get, Injectable, Req, UseGuards, type INestApplication } from '@nestjs/common';
import { AuthGuard, PassportModule, PassportStrategy } from '@nestjs/passport';
import { ExtractJwt, Strategy } from 'passport-jwt';
import request from 'supertest';
import { LogOutEverywhereService, RevokedTokenCheck, TokenService } from '../lib/index.js';
import { createGuardApp } from './support/guard-app.js';
import { signToken, uniqueSubject } from './support/jwt-fixtures.js';
import { proxyDatabase, type TcpProxy } from './support/tcp-proxy.js';
import { createTestDatabase, type TestDatabase } from './support/test-database.js';
import { TEST_SECRET } from './support/token-app.js';
import { waitFor } from './support/wait-for.js';

/** An existing passport-jwt strategy: it keeps verifying tokens itself and only adds the revocation check. */
@Injectable()
class JwtStrategy extends PassportStrategy(Strategy) {
  constructor(private readonly revokedTokens: RevokedTokenCheck) {
    super({ jwtFromRequest: ExtractJwt.fromAuthHeaderAsBearerToken(), secretOrKey: TEST_SECRET, algorithms: ['HS256'] });
  }

  validate(payload: { sub: string; jti: string }) {
    return this.revokedTokens.validate(payload);
  }
}

@Controller('profile')
@UseGuards(AuthGuard('jwt'))
class ProfileController {
  @Get()
  get(@Req() req: { user: { sub: string } }) {
    return { sub: req.user.sub };
  }
}

describe('RevokedTokenCheck in a @nestjs/passport + passport-jwt strategy', () => {
  let db: TestDatabase;
  let proxy: TcpProxy;
  let app: INestApplication;

  beforeAll(async () => {
    db = await createTestDatabase();
    let url: string;
    ({ proxy, url } = await proxyDatabase(db.url));
    app = await createGuardApp(url, {
      platform: 'express',
      options: { storeTimeoutMs: 300 },
      imports: [PassportModule],
      providers: [JwtStrategy],
      controllers: [ProfileController],
    });
  });

  afterAll(async () => {
    await app?.close();
    await proxy?.close();
    await db?.drop();
  });

  const profile = (token: string) => request(app.getHttpServer()).get('/profile').set('Authorization', `Bearer ${token}`).timeout(5000);

  it('admits a valid token and hands the payload on as the user', async () => {
    const subject = uniqueSubject();
    const { token } = await app.get(TokenService).issueToken({ subject });
    const res = await profile(token);
    expect(res.status).toBe(200);
    expect(res.body).toEqual({ sub: subject });
  });

  it('refuses a revoked token, and every token of a subject logged out everywhere, with 401', async () => {
    const tokens = app.get(TokenService);
    const { token } = await tokens.issueToken({ subject: uniqueSubject() });
    await tokens.revoke(token);
    const revoked = await profile(token);
    expect(revoked.status).toBe(401);
    expect(revoked.body.message).toBe('token revoked');

    const subject = uniqueSubject();
    const { token: unstored } = await tokens.issueToken({ subject });
    expect((await profile(unstored)).status).toBe(200);
    await app.get(LogOutEverywhereService).logOutEverywhere(subject);
    expect((await profile(unstored)).status).toBe(401);
  });

  it('refuses a token of another purpose, or without jti, with 401', async () => {
    const { token: confirm } = await app.get(TokenService).issueToken({ subject: uniqueSubject(), purpose: 'confirm' });
    expect((await profile(confirm)).status).toBe(401);
    expect((await profile(await signToken({}, { omit: ['jti'] }))).status).toBe(401);
  });

  it('fails closed with 503 while the store is down, never admitting, and admits again once it is back', async () => {
    const { token } = await app.get(TokenService).issueToken({ subject: uniqueSubject() });
    proxy.setMode('reset');
    proxy.cut();
    try {
      const down = await profile(token);
      expect(down.status).toBe(503);
      expect(down.body).toMatchObject({ statusCode: 503, message: 'token store unavailable' });
    } finally {
      proxy.setMode('forward');
    }
    await waitFor(async () => (await profile(token)).status === 200, 10_000, 'the store to answer again');
  });
});

describe('RevokedTokenCheck with requireTokenPresenceForAuthentication', () => {
  let db: TestDatabase;
  let app: INestApplication;

  beforeAll(async () => {
    db = await createTestDatabase();
    app = await createGuardApp(db.url, {
      platform: 'express',
      options: { storeAllTokens: true, requireTokenPresenceForAuthentication: true },
      imports: [PassportModule],
      providers: [JwtStrategy],
      controllers: [ProfileController],
    });
  });

  afterAll(async () => {
    await app?.close();
    await db?.drop();
  });

  it('admits a stored token and refuses a valid one that was never stored', async () => {
    const { token } = await app.get(TokenService).issueToken({ subject: uniqueSubject() });
    const server = app.getHttpServer();
    expect((await request(server).get('/profile').set('Authorization', `Bearer ${token}`)).status).toBe(200);
    const unstored = await request(server)
      .get('/profile')
      .set('Authorization', `Bearer ${await signToken()}`);
    expect(unstored.status).toBe(401);
    expect(unstored.body.message).toBe('token not recognised');
  });
});
