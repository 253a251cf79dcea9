import { randomUUID, generateKeyPairSync } from 'node:crypto';
import { createServer, type Server } from 'node:http';
import { afterAll, beforeAll, describe, expect, it, jest } from '@jest/globals';
import {
  Controller,
  Get,
  Injectable,
  Logger,
  UnauthorizedException,
  UseGuards,
  type ExecutionContext,
  type INestApplication,
} from '@nestjs/common';
import { APP_GUARD } from '@nestjs/core';
import { JwtService } from '@nestjs/jwt';
import { exportJWK, SignJWT, type JWTPayload } from 'jose';
import pg from 'pg';
import request from 'supertest';
import { RevokedTokenGuard, SkipTokenCheck, TokenClaims, TokenService, type TokenClaimsPayload } from '../lib/index.js';
import { createGuardApp, PLATFORMS, type Platform } from './support/guard-app.js';
import { subjectController } from './support/guarded-controller.js';
import { nowSeconds, unsignedTokenVariants } from './support/jwt-fixtures.js';
import { createTestDatabase, type TestDatabase } from './support/test-database.js';
import { TEST_SECRET } from './support/token-app.js';

const ISSUER = 'https://issuer.test';
const AUDIENCE = 'api.test';
const JWT = { issuer: ISSUER, audience: AUDIENCE };

@Controller('guarded')
@UseGuards(RevokedTokenGuard)
class GuardedController {
  @Get()
  get(@TokenClaims() claims: TokenClaimsPayload, @TokenClaims('sub') sub: string) {
    return { claims, sub };
  }

  @Get('open')
  @SkipTokenCheck()
  open(@TokenClaims() claims?: TokenClaimsPayload) {
    return { open: true, claims: claims ?? null };
  }
}

@Controller('public')
@UseGuards(RevokedTokenGuard)
@SkipTokenCheck()
class PublicController {
  @Get()
  get() {
    return { open: true };
  }

  @Get('closed')
  @SkipTokenCheck(false)
  closed(@TokenClaims('sub') sub: string) {
    return { sub };
  }
}

/** The documented way to read the token from a cookie: override the protected hook. */
@Injectable()
class CookieTokenGuard extends RevokedTokenGuard {
  protected override extractToken(request: Record<string, any>): string | undefined {
    const cookie: unknown = request.headers?.cookie;
    return typeof cookie === 'string' ? /(?:^|;\s*)access_token=([^;\s]+)/.exec(cookie)?.[1] : undefined;
  }
}

const CookieController = subjectController('cookie', CookieTokenGuard);

/** Names a realm, with characters that must be escaped in a quoted-string. */
@Injectable()
class RealmTokenGuard extends RevokedTokenGuard {
  protected override readonly realm = 'the "inner" api\\v2';
}

const RealmController = subjectController('realm', RealmTokenGuard);

/** Shapes every 401 in its one override: a body of its own with the guard's reason, and the challenge. */
@Injectable()
class OwnRefusalGuard extends RevokedTokenGuard {
  protected override throwUnauthorized(context: ExecutionContext, reason: string, error?: string): never {
    this.setChallenge(context, error, error && 'please sign in again');
    throw new UnauthorizedException({ statusCode: 401, code: 'SESSION_INVALID', message: 'please sign in again', reason });
  }
}

const OwnRefusalController = subjectController('own-refusal', OwnRefusalGuard);

/** Not decorated with the guard: only APP_GUARD protects it. */
@Controller('global')
class GlobalController {
  @Get()
  get(@TokenClaims('sub') sub: string) {
    return { sub };
  }

  @Get('open')
  @SkipTokenCheck()
  open() {
    return { open: true };
  }
}

interface SignOpts {
  secret?: string;
  alg?: string;
  omit?: string[];
}

/** Signs like another service would with jose: valid for the test app unless told otherwise. */
async function sign(claims: JWTPayload = {}, opts: SignOpts = {}): Promise<string> {
  const payload: Record<string, unknown> = {
    jti: randomUUID(),
    sub: `user-${randomUUID()}`,
    iss: ISSUER,
    aud: AUDIENCE,
    iat: nowSeconds(),
    exp: nowSeconds() + 3600,
    ...claims,
  };
  for (const claim of opts.omit ?? []) delete payload[claim];
  return new SignJWT(payload)
    .setProtectedHeader({ alg: opts.alg ?? 'HS256', typ: 'JWT' })
    .sign(new TextEncoder().encode(opts.secret ?? TEST_SECRET));
}

function bearer(token: string): Record<string, string> {
  return { Authorization: `Bearer ${token}` };
}

/** The RFC 6750 challenge of a 401 with this reason: no error code when there was no token. */
function challengeFor(message: string): string {
  return message === 'missing bearer token' ? 'Bearer' : `Bearer error="invalid_token", error_description="${message}"`;
}

async function expect401(app: INestApplication, path: string, headers: Record<string, string>, message: string): Promise<void> {
  const res = await request(app.getHttpServer()).get(path).set(headers);
  expect({ status: res.status, body: res.body, challenge: res.headers['www-authenticate'] }).toEqual({
    status: 401,
    body: { statusCode: 401, error: 'Unauthorized', message },
    challenge: challengeFor(message),
  });
}

let db: TestDatabase;

beforeAll(async () => {
  db = await createTestDatabase();
});

afterAll(async () => {
  await db?.drop();
});

describe.each(PLATFORMS)('RevokedTokenGuard over HTTP on %s', (platform: Platform) => {
  let app: INestApplication;
  let tokens: TokenService;

  beforeAll(async () => {
    app = await createGuardApp(db.url, {
      platform,
      options: { jwt: JWT },
      controllers: [GuardedController, PublicController, CookieController, RealmController, OwnRefusalController],
    });
    tokens = app.get(TokenService);
  });

  afterAll(async () => {
    await app?.close();
  });

  it('answers 401 without an Authorization header, or with another scheme or an empty bearer', async () => {
    await expect401(app, '/guarded', {}, 'missing bearer token');
    await expect401(app, '/guarded', { Authorization: `Basic ${Buffer.from('a:b').toString('base64')}` }, 'missing bearer token');
    await expect401(app, '/guarded', { Authorization: 'Bearer' }, 'missing bearer token');
    await expect401(app, '/guarded', { Authorization: 'Bearer    ' }, 'missing bearer token');
    await expect401(app, '/guarded', { Authorization: `Bearer ${await sign()} extra` }, 'missing bearer token');
    await expect401(app, '/guarded', { Authorization: await sign() }, 'missing bearer token');
  });

  it('answers 401 to malformed tokens', async () => {
    for (const token of ['garbage', 'a.b.c', 'eyJhbGciOiJIUzI1NiJ9.e30', 'eyJhbGciOiJIUzI1NiJ9..', '....', '%%%.%%%.%%%']) {
      await expect401(app, '/guarded', bearer(token), 'invalid token');
    }
  });

  it('answers 401 to forged tokens: another key, an edited payload, alg none in any case', async () => {
    await expect401(app, '/guarded', bearer(await sign({}, { secret: 'another-secret-that-is-at-least-32-bytes!' })), 'invalid token');
    const [header, payload, signature] = (await sign({ sub: 'alice' })).split('.');
    const edited = Buffer.from(JSON.stringify({ ...JSON.parse(Buffer.from(payload, 'base64url').toString()), sub: 'admin' })).toString(
      'base64url',
    );
    await expect401(app, '/guarded', bearer(`${header}.${edited}.${signature}`), 'invalid token');
    for (const token of unsignedTokenVariants({ iss: ISSUER, aud: AUDIENCE })) {
      await expect401(app, '/guarded', bearer(token), 'invalid token');
    }
  });

  it('answers 401 to expired and not-yet-valid tokens', async () => {
    await expect401(app, '/guarded', bearer(await sign({ exp: nowSeconds() - 10 })), 'token expired');
    await expect401(app, '/guarded', bearer(await sign({ nbf: nowSeconds() + 600 })), 'token not yet valid');
  });

  it('answers 401 to a wrong or missing issuer and a wrong audience', async () => {
    await expect401(app, '/guarded', bearer(await sign({ iss: 'https://evil.test' })), 'wrong token issuer');
    await expect401(app, '/guarded', bearer(await sign({}, { omit: ['iss'] })), 'wrong token issuer');
    await expect401(app, '/guarded', bearer(await sign({ aud: 'other-api' })), 'wrong token audience');
  });

  it('answers 401 to a verified token without jti or sub', async () => {
    await expect401(app, '/guarded', bearer(await sign({}, { omit: ['jti'] })), 'token lacks jti or sub');
    await expect401(app, '/guarded', bearer(await sign({}, { omit: ['sub'] })), 'token lacks jti or sub');
    await expect401(app, '/guarded', bearer(await sign({ jti: '' })), 'token lacks jti or sub');
  });

  it('admits a valid token and hands its claims to @TokenClaims(), whatever the case of the scheme', async () => {
    const { token, jti } = await tokens.issueToken({ subject: 'alice', claims: { role: 'admin' } });
    for (const scheme of ['Bearer', 'bearer', 'BEARER']) {
      const res = await request(app.getHttpServer()).get('/guarded').set('Authorization', `${scheme} ${token}`);
      expect(res.status).toBe(200);
      expect(res.body.sub).toBe('alice');
      expect(res.body.claims).toMatchObject({ sub: 'alice', jti, role: 'admin', iss: ISSUER, aud: AUDIENCE });
    }
  });

  it('answers 401 to a token issued for another purpose, with no store lookup needed', async () => {
    const confirm = await tokens.issueToken({ subject: 'henry', purpose: 'confirm' });
    await expect401(app, '/guarded', bearer(confirm.token), 'token not for authentication');
    const session = await tokens.issueToken({ subject: 'henry' });
    expect((await request(app.getHttpServer()).get('/guarded').set(bearer(session.token))).status).toBe(200);
  });

  it('answers 401 once the token is revoked (revoke and revokeJti), and keeps admitting others', async () => {
    const first = await tokens.issueToken({ subject: 'bob' });
    const second = await sign({ sub: 'bob' });
    const other = await tokens.issueToken({ subject: 'bob' });
    for (const token of [first.token, second, other.token]) {
      expect((await request(app.getHttpServer()).get('/guarded').set(bearer(token))).status).toBe(200);
    }
    await tokens.revoke(first.token);
    const secondJti = JSON.parse(Buffer.from(second.split('.')[1], 'base64url').toString()).jti;
    await tokens.revokeJti(secondJti, 'bob');
    await expect401(app, '/guarded', bearer(first.token), 'token revoked');
    await expect401(app, '/guarded', bearer(second), 'token revoked');
    expect((await request(app.getHttpServer()).get('/guarded').set(bearer(other.token))).status).toBe(200);
  });

  it('challenges every 401 with WWW-Authenticate (RFC 6750): plain Bearer without a token, invalid_token with the reason otherwise', async () => {
    const challenge = async (headers: Record<string, string>) => {
      const res = await request(app.getHttpServer()).get('/guarded').set(headers);
      expect(res.status).toBe(401);
      return res.headers['www-authenticate'];
    };
    expect(await challenge({})).toBe('Bearer');
    expect(await challenge({ Authorization: 'Basic YTpi' })).toBe('Bearer');
    expect(await challenge(bearer(await sign({}, { secret: 'another-secret-that-is-at-least-32-bytes!' })))).toBe(
      'Bearer error="invalid_token", error_description="invalid token"',
    );
    expect(await challenge(bearer(await sign({ exp: nowSeconds() - 10 })))).toBe(
      'Bearer error="invalid_token", error_description="token expired"',
    );
    const { token } = await tokens.issueToken({ subject: 'walter' });
    const admitted = await request(app.getHttpServer()).get('/guarded').set(bearer(token));
    expect({ status: admitted.status, challenge: admitted.headers['www-authenticate'] }).toEqual({ status: 200, challenge: undefined });
    await tokens.revoke(token);
    expect(await challenge(bearer(token))).toBe('Bearer error="invalid_token", error_description="token revoked"');
  });

  it('puts the realm of a subclass first in the challenge, quote-escaped', async () => {
    const missing = await request(app.getHttpServer()).get('/realm');
    expect({ status: missing.status, challenge: missing.headers['www-authenticate'] }).toEqual({
      status: 401,
      challenge: 'Bearer realm="the \\"inner\\" api\\\\v2"',
    });
    const forged = await request(app.getHttpServer()).get('/realm').set(bearer('garbage'));
    expect({ status: forged.status, challenge: forged.headers['www-authenticate'], message: forged.body.message }).toEqual({
      status: 401,
      challenge: 'Bearer realm="the \\"inner\\" api\\\\v2", error="invalid_token", error_description="invalid token"',
      message: 'invalid token',
    });
    const { token } = await tokens.issueToken({ subject: 'xavier' });
    expect((await request(app.getHttpServer()).get('/realm').set(bearer(token))).body).toEqual({ sub: 'xavier' });
  });

  it('sends the 401 body and challenge a subclass makes in throwUnauthorized(), for every refusal', async () => {
    const expired = await request(app.getHttpServer())
      .get('/own-refusal')
      .set(bearer(await sign({ exp: nowSeconds() - 10 })));
    expect({ status: expired.status, body: expired.body, challenge: expired.headers['www-authenticate'] }).toEqual({
      status: 401,
      body: { statusCode: 401, code: 'SESSION_INVALID', message: 'please sign in again', reason: 'token expired' },
      challenge: 'Bearer error="invalid_token", error_description="please sign in again"',
    });
    const missing = await request(app.getHttpServer()).get('/own-refusal');
    expect({ status: missing.status, body: missing.body, challenge: missing.headers['www-authenticate'] }).toEqual({
      status: 401,
      body: { statusCode: 401, code: 'SESSION_INVALID', message: 'please sign in again', reason: 'missing bearer token' },
      challenge: 'Bearer',
    });
    const { token, jti } = await tokens.issueToken({ subject: 'oscar' });
    expect((await request(app.getHttpServer()).get('/own-refusal').set(bearer(token))).body).toEqual({ sub: 'oscar' });
    await tokens.revokeJti(jti, 'oscar');
    const revoked = await request(app.getHttpServer()).get('/own-refusal').set(bearer(token));
    expect({ status: revoked.status, reason: revoked.body.reason }).toEqual({ status: 401, reason: 'token revoked' });
  });

  it('lets @SkipTokenCheck() handlers through with no token or a bad one, without claims', async () => {
    let res = await request(app.getHttpServer()).get('/guarded/open');
    expect(res.status).toBe(200);
    expect(res.body).toEqual({ open: true, claims: null });
    res = await request(app.getHttpServer()).get('/guarded/open').set(bearer('garbage'));
    expect(res.status).toBe(200);
  });

  it('lets a @SkipTokenCheck() controller through, except a handler marked @SkipTokenCheck(false)', async () => {
    const res = await request(app.getHttpServer()).get('/public');
    expect(res.status).toBe(200);
    expect(res.body).toEqual({ open: true });
    await expect401(app, '/public/closed', {}, 'missing bearer token');
    const { token } = await tokens.issueToken({ subject: 'carol' });
    const closed = await request(app.getHttpServer()).get('/public/closed').set(bearer(token));
    expect(closed.status).toBe(200);
    expect(closed.body).toEqual({ sub: 'carol' });
  });

  it('reads the token from a cookie in a subclass that overrides extractToken, with every other check intact', async () => {
    const { token } = await tokens.issueToken({ subject: 'judy' });
    await expect401(app, '/cookie', bearer(token), 'missing bearer token');
    const res = await request(app.getHttpServer()).get('/cookie').set('Cookie', `theme=dark; access_token=${token}`);
    expect(res.status).toBe(200);
    expect(res.body).toEqual({ sub: 'judy' });
    await expect401(app, '/cookie', { Cookie: 'access_token=garbage' }, 'invalid token');
    await tokens.revoke(token);
    await expect401(app, '/cookie', { Cookie: `access_token=${token}` }, 'token revoked');
  });
});

describe.each(PLATFORMS)('RevokedTokenGuard as APP_GUARD on %s', (platform: Platform) => {
  let app: INestApplication;

  beforeAll(async () => {
    app = await createGuardApp(db.url, {
      platform,
      controllers: [GlobalController],
      providers: [{ provide: APP_GUARD, useClass: RevokedTokenGuard }],
    });
  });

  afterAll(async () => {
    await app?.close();
  });

  it('guards every route of the application and honours @SkipTokenCheck()', async () => {
    await expect401(app, '/global', {}, 'missing bearer token');
    const { token } = await app.get(TokenService).issueToken({ subject: 'dave' });
    const res = await request(app.getHttpServer()).get('/global').set(bearer(token));
    expect(res.status).toBe(200);
    expect(res.body).toEqual({ sub: 'dave' });
    await app.get(TokenService).revoke(token);
    await expect401(app, '/global', bearer(token), 'token revoked');
    expect((await request(app.getHttpServer()).get('/global/open')).status).toBe(200);
  });
});

describe.each(PLATFORMS)('RevokedTokenGuard with requireTokenPresenceForAuthentication on %s', (platform: Platform) => {
  let app: INestApplication;
  let tokens: TokenService;

  beforeAll(async () => {
    app = await createGuardApp(db.url, {
      platform,
      options: { storeAllTokens: true, requireTokenPresenceForAuthentication: true },
      controllers: [GuardedController],
    });
    tokens = app.get(TokenService);
  });

  afterAll(async () => {
    await app?.close();
  });

  it('admits a stored token of the authentication purpose', async () => {
    const { token } = await tokens.issueToken({ subject: 'erin' });
    const res = await request(app.getHttpServer()).get('/guarded').set(bearer(token));
    expect(res.status).toBe(200);
    expect(res.body.sub).toBe('erin');
  });

  it('answers 401 to a valid token that was never stored, until it is stored', async () => {
    const token = await sign({ sub: 'frank' }, { omit: ['iss', 'aud'] });
    await expect401(app, '/guarded', bearer(token), 'token not recognised');
    await tokens.storeToken({ token, purpose: 'user' });
    expect((await request(app.getHttpServer()).get('/guarded').set(bearer(token))).status).toBe(200);
  });

  it("answers 401 to a token stored for another purpose, such as 'confirm'", async () => {
    // No purpose claim, so only the stored row can tell it is no session.
    const token = await sign({ sub: 'grace' }, { omit: ['iss', 'aud'] });
    await tokens.storeToken({ token, purpose: 'confirm' });
    expect(await tokens.getToken({ token, purpose: 'confirm' })).not.toBeNull();
    await expect401(app, '/guarded', bearer(token), 'token not recognised');
  });

  it('answers 401 to a stored token once revoked', async () => {
    const { token } = await tokens.issueToken({ subject: 'heidi' });
    await tokens.revoke(token);
    await expect401(app, '/guarded', bearer(token), 'token revoked');
  });
});

describe('tokens from other issuers', () => {
  const rsa = generateKeyPairSync('rsa', { modulusLength: 2048 });
  const publicPem = rsa.publicKey.export({ type: 'spki', format: 'pem' }).toString();
  const privatePem = rsa.privateKey.export({ type: 'pkcs8', format: 'pem' }).toString();

  describe.each(PLATFORMS)('with an HMAC secret on %s', (platform: Platform) => {
    let app: INestApplication;

    beforeAll(async () => {
      app = await createGuardApp(db.url, { platform, options: { jwt: JWT }, controllers: [GuardedController] });
    });

    afterAll(async () => {
      await app?.close();
    });

    it('admits tokens from TokenService.issueToken, jose SignJWT and @nestjs/jwt JwtService', async () => {
      const fromService = (await app.get(TokenService).issueToken({ subject: 'svc' })).token;
      const fromJose = await new SignJWT({ sub: 'jose', jti: randomUUID() })
        .setProtectedHeader({ alg: 'HS512' })
        .setIssuer(ISSUER)
        .setAudience(AUDIENCE)
        .setIssuedAt()
        .setExpirationTime('5m')
        .sign(new TextEncoder().encode(TEST_SECRET));
      const fromNestJwt = await new JwtService({ secret: TEST_SECRET }).signAsync(
        { sub: 'nestjwt' },
        { jwtid: randomUUID(), issuer: ISSUER, audience: AUDIENCE, expiresIn: '5m' },
      );
      for (const [token, sub] of [
        [fromService, 'svc'],
        [fromJose, 'jose'],
        [fromNestJwt, 'nestjwt'],
      ] as const) {
        const res = await request(app.getHttpServer()).get('/guarded').set(bearer(token));
        expect({ status: res.status, sub: res.body.sub }).toEqual({ status: 200, sub });
      }
      const forgedNestJwt = await new JwtService({ secret: 'not-the-secret-but-32-bytes-long!!!!' }).signAsync(
        { sub: 'nestjwt' },
        { jwtid: randomUUID(), issuer: ISSUER, audience: AUDIENCE, expiresIn: '5m' },
      );
      await expect401(app, '/guarded', bearer(forgedNestJwt), 'invalid token');
    });
  });

  describe.each(PLATFORMS)('with an RSA public key on %s', (platform: Platform) => {
    let app: INestApplication;

    beforeAll(async () => {
      app = await createGuardApp(db.url, {
        platform,
        options: { jwt: { secret: undefined, publicKey: publicPem, privateKey: privatePem } },
        controllers: [GuardedController],
      });
    });

    afterAll(async () => {
      await app?.close();
    });

    it('admits RS256 tokens from all three issuers and refuses HS256 signed with the public key', async () => {
      const fromService = (await app.get(TokenService).issueToken({ subject: 'svc' })).token;
      const fromJose = await new SignJWT({ sub: 'jose', jti: randomUUID() })
        .setProtectedHeader({ alg: 'RS256' })
        .setIssuedAt()
        .setExpirationTime('5m')
        .sign(rsa.privateKey);
      const fromNestJwt = await new JwtService({ privateKey: privatePem, signOptions: { algorithm: 'RS256' } }).signAsync(
        { sub: 'nestjwt' },
        { jwtid: randomUUID(), expiresIn: '5m' },
      );
      for (const [token, sub] of [
        [fromService, 'svc'],
        [fromJose, 'jose'],
        [fromNestJwt, 'nestjwt'],
      ] as const) {
        const res = await request(app.getHttpServer()).get('/guarded').set(bearer(token));
        expect({ status: res.status, sub: res.body.sub }).toEqual({ status: 200, sub });
      }
      const confused = await new SignJWT({ sub: 'mallory', jti: randomUUID() })
        .setProtectedHeader({ alg: 'HS256' })
        .setIssuedAt()
        .setExpirationTime('5m')
        .sign(new TextEncoder().encode(publicPem));
      await expect401(app, '/guarded', bearer(confused), 'invalid token');
    });
  });
});

describe('with a remote JWKS', () => {
  const rsa = generateKeyPairSync('rsa', { modulusLength: 2048 });
  let jwks: Server;
  let jwksUri: string;
  let jwksRequests = 0;
  /** While set, the JWKS server answers 503. */
  let jwksDown = false;
  let closedUri: string;

  beforeAll(async () => {
    const jwk = { ...(await exportJWK(rsa.publicKey)), kid: 'k1', alg: 'RS256', use: 'sig' };
    jwks = createServer((_req, res) => {
      jwksRequests++;
      if (jwksDown) {
        res.writeHead(503).end();
        return;
      }
      res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ keys: [jwk] }));
    });
    await new Promise<void>((resolve) => jwks.listen(0, '127.0.0.1', resolve));
    jwksUri = `http://127.0.0.1:${(jwks.address() as { port: number }).port}/.well-known/jwks.json`;
    const closed = createServer();
    await new Promise<void>((resolve) => closed.listen(0, '127.0.0.1', resolve));
    closedUri = `http://127.0.0.1:${(closed.address() as { port: number }).port}/jwks.json`;
    await new Promise((resolve) => closed.close(resolve));
  });

  afterAll(async () => {
    jwks.closeAllConnections();
    await new Promise((resolve) => jwks.close(resolve));
  });

  const signRs256 = (kid = 'k1') =>
    new SignJWT({ sub: 'remote', jti: randomUUID() })
      .setProtectedHeader({ alg: 'RS256', kid })
      .setIssuedAt()
      .setExpirationTime('5m')
      .sign(rsa.privateKey);

  it.each(PLATFORMS)('admits tokens signed by a key of the JWKS, fetching it once, on %s', async (platform: Platform) => {
    const app = await createGuardApp(db.url, {
      platform,
      options: { jwt: { secret: undefined, jwksUri } },
      controllers: [GuardedController],
    });
    try {
      const before = jwksRequests;
      for (let i = 0; i < 3; i++) {
        const res = await request(app.getHttpServer())
          .get('/guarded')
          .set(bearer(await signRs256()));
        expect({ status: res.status, sub: res.body.sub }).toEqual({ status: 200, sub: 'remote' });
      }
      expect(jwksRequests - before).toBe(1);
      await expect401(app, '/guarded', bearer(await sign()), 'invalid token');
    } finally {
      await app.close();
    }
  });

  it.each(PLATFORMS)('answers 503 when the JWKS cannot be fetched, on %s', async (platform: Platform) => {
    const app = await createGuardApp(db.url, {
      platform,
      options: { jwt: { secret: undefined, jwksUri: closedUri } },
      controllers: [GuardedController],
    });
    const logged = jest.spyOn(Logger.prototype, 'error');
    try {
      const res = await request(app.getHttpServer())
        .get('/guarded')
        .set(bearer(await signRs256()));
      expect({ status: res.status, body: res.body }).toEqual({
        status: 503,
        body: { statusCode: 503, error: 'Service Unavailable', message: 'token keys unavailable' },
      });
      // The token is not at fault: no challenge asks the client for other credentials.
      expect(res.headers['www-authenticate']).toBeUndefined();
      expect(logged).toHaveBeenCalledTimes(1);
    } finally {
      logged.mockRestore();
      await app.close();
    }
  });

  it('logs a JWKS outage at its first refusal, counts the others, and logs its end once', async () => {
    const app = await createGuardApp(db.url, {
      platform: 'express',
      options: { jwt: { secret: undefined, jwksUri } },
      controllers: [GuardedController],
    });
    const errors = jest.spyOn(Logger.prototype, 'error');
    const infos = jest.spyOn(Logger.prototype, 'log');
    const lines = (spy: typeof errors) => spy.mock.calls.map((args) => String(args[0]));
    jwksDown = true;
    try {
      const token = await signRs256();
      const get = () =>
        request(app.getHttpServer())
          .get('/guarded')
          .set(bearer(token))
          .then((res) => res.status);
      expect(await Promise.all(Array.from({ length: 20 }, get))).toEqual(Array(20).fill(503));
      expect(lines(errors)).toEqual([
        expect.stringMatching(/^token keys unavailable \(.+\), answering 503: TokenResourceUnavailableError: the JWKS at /),
      ]);
      jwksDown = false;
      expect(await get()).toBe(200);
      expect(lines(infos).filter((line) => line.includes('available again'))).toEqual([
        expect.stringMatching(/^token keys available again after \d+\.\d s \(20 requests answered 503\)$/),
      ]);
    } finally {
      jwksDown = false;
      errors.mockRestore();
      infos.mockRestore();
      await app.close();
    }
  });
});

describe('store round trips', () => {
  let app: INestApplication;
  let presenceApp: INestApplication;

  beforeAll(async () => {
    app = await createGuardApp(db.url, { platform: 'express', options: { jwt: JWT }, controllers: [GuardedController] });
    presenceApp = await createGuardApp(db.url, {
      platform: 'express',
      options: { storeAllTokens: true, requireTokenPresenceForAuthentication: true },
      controllers: [GuardedController],
    });
  });

  afterAll(async () => {
    await app?.close();
    await presenceApp?.close();
  });

  /** Every statement any `pg` client of this process sends while `work` runs. */
  async function statementsDuring(work: () => Promise<unknown>): Promise<string[]> {
    const spy = jest.spyOn(pg.Client.prototype, 'query');
    try {
      await work();
      return spy.mock.calls.map(([query]) =>
        typeof query === 'string' ? query : ((query as { name?: string; text?: string }).name ?? (query as { text: string }).text),
      );
    } finally {
      spy.mockRestore();
    }
  }

  it('answers a guarded request with exactly one query, also when presence is required', async () => {
    const { token } = await app.get(TokenService).issueToken({ subject: 'ivan' });
    await request(app.getHttpServer()).get('/guarded').set(bearer(token)); // warm up the pool
    let res: request.Response | undefined;
    const statements = await statementsDuring(async () => {
      res = await request(app.getHttpServer()).get('/guarded').set(bearer(token));
    });
    expect(res?.status).toBe(200);
    expect(statements).toHaveLength(1);
    expect(statements[0]).toMatch(/^ntr_token_state_/);

    const stored = (await presenceApp.get(TokenService).issueToken({ subject: 'ivan' })).token;
    const presence = await statementsDuring(async () => {
      res = await request(presenceApp.getHttpServer()).get('/guarded').set(bearer(stored));
    });
    expect(res?.status).toBe(200);
    expect(presence).toHaveLength(1);
  });

  it('never queries the store for a token it cannot verify', async () => {
    const statements = await statementsDuring(async () => {
      await expect401(app, '/guarded', bearer(await sign({}, { secret: 'another-secret-that-is-at-least-32-bytes!' })), 'invalid token');
      await expect401(app, '/guarded', bearer(await sign({ exp: nowSeconds() - 10 })), 'token expired');
      await expect401(app, '/guarded', {}, 'missing bearer token');
    });
    expect(statements).toEqual([]);
  });
});
