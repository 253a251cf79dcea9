import { generateKeyPairSync, randomUUID } from 'node:crypto';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { INestApplication } from '@nestjs/common';
import { errors as joseErrors, SignJWT } from 'jose';
import { InvalidTokenError, TokenResourceConfigError, TokenService, type TokenResourceJwtOptions } from '../lib/index.js';
import { TokenCodec } from '../lib/jwt/token-codec.js';
import { MAX_REMEMBERED_TOKEN_LENGTH } from '../lib/jwt/verified-tokens.js';
import { resolveJwtOptions } from '../lib/options/validate-jwt.js';
import { createGuardApp, PLATFORMS } from './support/guard-app.js';
import { guardAnswer } from './support/guard-answer.js';
import { GuardedSubjectController } from './support/guarded-controller.js';
import { nowSeconds, signToken, sleep, unsignedToken } from './support/jwt-fixtures.js';
import { createTestDatabase, type TestDatabase } from './support/test-database.js';
import { createTokenApp, TEST_SECRET } from './support/token-app.js';

/**
 * Remembered verifications (`revocationCache.maxVerifiedTokens`): a token verified once is
 * answered from memory, and nothing else is: not a sibling that differs in one character,
 * nor the token itself once its time claims fail.
 */

function codec(jwt: TokenResourceJwtOptions, maxVerifiedTokens = 100): TokenCodec {
  return new TokenCodec(resolveJwtOptions(jwt), maxVerifiedTokens);
}

/** `token` with the character at `index` replaced by another base64url character. */
function withCharChanged(token: string, index: number): string {
  const replacement = token[index] === 'A' ? 'B' : 'A';
  return token.slice(0, index) + replacement + token.slice(index + 1);
}

/** Strings that differ from a validly signed `token` and must each be verified on their own. */
async function siblingsOf(token: string): Promise<Record<string, string>> {
  const [header, payload, signature] = token.split('.');
  const claims = JSON.parse(Buffer.from(payload, 'base64url').toString()) as Record<string, unknown>;
  const encode = (value: unknown) => Buffer.from(JSON.stringify(value)).toString('base64url');
  return {
    'payload edited, signature kept': `${header}.${encode({ ...claims, sub: 'admin' })}.${signature}`,
    'one signature character changed': withCharChanged(token, header.length + payload.length + 2 + Math.floor(signature.length / 2)),
    'signature cut short': `${header}.${payload}.${signature.slice(0, -4)}`,
    'signature dropped': `${header}.${payload}.`,
    'same claims unsigned (alg none)': `${encode({ alg: 'none', typ: 'JWT' })}.${payload}.`,
    'same claims, another secret': await new SignJWT(claims)
      .setProtectedHeader({ alg: 'HS256', typ: 'JWT' })
      .sign(new TextEncoder().encode(`${TEST_SECRET}-but-another-one`)),
    'a fourth segment': `${token}.${signature}`,
    'a character appended': `${token}A`,
  };
}

describe('TokenCodec with remembered verifications', () => {
  it('answers a verified token again with a fresh copy of its claims', async () => {
    const jwt = codec({ secret: TEST_SECRET });
    const token = await signToken({ sub: 'alice', roles: ['reader'] });
    const first = await jwt.verify(token);
    expect(jwt.verifiedTokenCount).toBe(1);
    (first.roles as string[]).push('admin');
    first.sub = 'mallory';
    const second = await jwt.verify(token);
    expect(second).not.toBe(first);
    expect(second).toMatchObject({ sub: 'alice', roles: ['reader'] });
    expect(jwt.verifiedTokenCount).toBe(1);
  });

  it('refuses every altered sibling of a remembered token, and remembers none of them', async () => {
    const jwt = codec({ secret: TEST_SECRET });
    const token = await signToken({ sub: 'alice' });
    await jwt.verify(token);
    await jwt.verify(token);
    for (const [label, sibling] of Object.entries(await siblingsOf(token))) {
      await expect(jwt.verify(sibling).then(() => `${label}: admitted`)).rejects.toBeInstanceOf(InvalidTokenError);
    }
    await expect(jwt.verify(unsignedToken({ sub: 'alice' }))).rejects.toBeInstanceOf(InvalidTokenError);
    expect(jwt.verifiedTokenCount).toBe(1);
    expect((await jwt.verify(token)).sub).toBe('alice');
  });

  it('refuses a token for another audience after one for its own was remembered', async () => {
    const jwt = codec({ secret: TEST_SECRET, audience: 'api' });
    await jwt.verify(await signToken({ sub: 'alice', aud: 'api' }));
    await expect(jwt.verify(await signToken({ sub: 'alice', aud: 'other' }))).rejects.toBeInstanceOf(InvalidTokenError);
    expect(jwt.verifiedTokenCount).toBe(1);
  });

  it('judges exp, nbf and the clock tolerance again on every hit', async () => {
    const strict = codec({ secret: TEST_SECRET });
    const tolerant = codec({ secret: TEST_SECRET, clockToleranceSeconds: 60 });
    // Two seconds: signed late in a second, a token one second from expiry may be gone at once.
    const expiring = await signToken({ sub: 'alice', exp: nowSeconds() + 2 });
    const notYet = await signToken({ sub: 'bob', nbf: nowSeconds() + 2 });
    await strict.verify(expiring);
    await tolerant.verify(expiring);
    // A verification that fails is not remembered, not even for a token that becomes valid later.
    await expect(strict.verify(notYet)).rejects.toBeInstanceOf(InvalidTokenError);
    expect(strict.verifiedTokenCount).toBe(1);

    while (nowSeconds() < JSON.parse(Buffer.from(expiring.split('.')[1], 'base64url').toString()).exp) await sleep(50);

    const expired = await strict.verify(expiring).catch((error: unknown) => error);
    expect(expired).toBeInstanceOf(InvalidTokenError);
    expect((expired as InvalidTokenError).cause).toBeInstanceOf(joseErrors.JWTExpired);
    expect(strict.verifiedTokenCount).toBe(0);
    // Where an expired token is accepted (tokenRevoked, revoke), it still is, and is still not remembered.
    expect((await strict.verify(expiring, true)).sub).toBe('alice');
    expect(strict.verifiedTokenCount).toBe(0);
    expect((await tolerant.verify(expiring)).sub).toBe('alice');

    expect((await strict.verify(notYet)).sub).toBe('bob');
    expect(strict.verifiedTokenCount).toBe(1);
  });

  it('keeps at most maxVerifiedTokens, and no token longer than the limit', async () => {
    const jwt = codec({ secret: TEST_SECRET }, 3);
    for (let k = 0; k < 5; k++) await jwt.verify(await signToken());
    expect(jwt.verifiedTokenCount).toBe(3);
    const long = await signToken({ padding: 'x'.repeat(MAX_REMEMBERED_TOKEN_LENGTH) });
    const small = codec({ secret: TEST_SECRET });
    expect((await small.verify(long)).padding).toHaveLength(MAX_REMEMBERED_TOKEN_LENGTH);
    expect(small.verifiedTokenCount).toBe(0);
  });

  it('remembers nothing when off', async () => {
    const jwt = codec({ secret: TEST_SECRET }, 0);
    await jwt.verify(await signToken());
    expect(jwt.verifiedTokenCount).toBe(0);
  });

  it('remembers tokens verified with a public key, and refuses their siblings', async () => {
    const { publicKey, privateKey } = generateKeyPairSync('ec', { namedCurve: 'prime256v1' });
    const pem = (key: typeof publicKey, type: 'spki' | 'pkcs8') => key.export({ type, format: 'pem' }) as string;
    const jwt = codec({ publicKey: pem(publicKey, 'spki'), privateKey: pem(privateKey, 'pkcs8') });
    const token = await jwt.sign({ sub: 'alice', jti: randomUUID(), iat: nowSeconds(), exp: nowSeconds() + 600 });
    await jwt.verify(token);
    expect(jwt.verifiedTokenCount).toBe(1);
    for (const sibling of Object.values(await siblingsOf(token))) {
      await expect(jwt.verify(sibling)).rejects.toBeInstanceOf(InvalidTokenError);
    }
    expect(jwt.verifiedTokenCount).toBe(1);
  });

  describe('with a remote JWKS', () => {
    const { publicKey, privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
    let server: Server;
    let uri: string;

    beforeAll(async () => {
      server = createServer((_req, res) => {
        res.writeHead(200, { 'content-type': 'application/json' });
        res.end(JSON.stringify({ keys: [{ ...publicKey.export({ format: 'jwk' }), kid: 'k1', alg: 'RS256', use: 'sig' }] }));
      });
      await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
      uri = `http://127.0.0.1:${(server.address() as AddressInfo).port}/jwks.json`;
    });

    afterAll(async () => {
      await new Promise((resolve) => server.close(resolve));
    });

    it('remembers nothing: a key the JWKS withdraws must stop verifying its tokens', async () => {
      const jwt = codec({ jwksUri: uri });
      const token = await new SignJWT({ sub: 'alice', jti: randomUUID(), exp: nowSeconds() + 600 })
        .setProtectedHeader({ alg: 'RS256', kid: 'k1' })
        .sign(privateKey);
      expect((await jwt.verify(token)).sub).toBe('alice');
      expect((await jwt.verify(token)).sub).toBe('alice');
      expect(jwt.verifiedTokenCount).toBe(0);
    });
  });
});

describe('revocationCache.maxVerifiedTokens in the module', () => {
  let db: TestDatabase;
  const apps: INestApplication[] = [];

  beforeAll(async () => {
    db = await createTestDatabase();
  });

  afterAll(async () => {
    await Promise.all(apps.map((app) => app.close()));
    await db.drop();
  });

  async function app(options: object): Promise<INestApplication> {
    const created = await createTokenApp(db.url, { options: { expunge: { enabled: false }, ...options } });
    apps.push(created);
    return created;
  }

  it('is on with the revocation cache (by default), off without it or at 0, and must be a whole number', async () => {
    const counts = [];
    for (const options of [{ revocationCache: { enabled: true } }, {}, { revocationCache: { enabled: true, maxVerifiedTokens: 0 } }]) {
      const instance = await app(options);
      await instance.get(TokenService).tokenRevoked(await signToken());
      counts.push(instance.get(TokenCodec).verifiedTokenCount);
    }
    expect(counts).toEqual([1, 0, 0]);
    for (const maxVerifiedTokens of [-1, 1.5, '10']) {
      await expect(app({ revocationCache: { enabled: true, maxVerifiedTokens } })).rejects.toThrow(TokenResourceConfigError);
    }
  });

  it('tokenRevoked still refuses a forged sibling of a remembered token, and still sees its revocation', async () => {
    const instance = await app({ revocationCache: { enabled: true } });
    const tokens = instance.get(TokenService);
    const { token } = await tokens.issueToken({ subject: 'alice' });
    expect(await tokens.tokenRevoked(token)).toBe(false);
    expect(await tokens.tokenRevoked(token)).toBe(false);
    expect(instance.get(TokenCodec).verifiedTokenCount).toBe(1);
    for (const sibling of Object.values(await siblingsOf(token))) {
      await expect(tokens.tokenRevoked(sibling)).rejects.toBeInstanceOf(InvalidTokenError);
      await expect(tokens.revoke(sibling)).rejects.toBeInstanceOf(InvalidTokenError);
    }
    await tokens.revoke(token);
    expect(await tokens.tokenRevoked(token)).toBe(true);
  });
});

describe.each(PLATFORMS)('RevokedTokenGuard with remembered verifications on %s', (platform) => {
  let db: TestDatabase;
  let guarded: INestApplication;

  beforeAll(async () => {
    db = await createTestDatabase();
    guarded = await createGuardApp(db.url, {
      platform,
      options: { revocationCache: { enabled: true } },
      controllers: [GuardedSubjectController],
    });
  });

  afterAll(async () => {
    await guarded?.close();
    await db.drop();
  });

  it('admits a remembered token, refuses its forged siblings and, once revoked, the token itself', async () => {
    const tokens = guarded.get(TokenService);
    const { token } = await tokens.issueToken({ subject: 'alice' });
    expect(await guardAnswer(guarded, token)).toEqual({ status: 200 });
    expect(await guardAnswer(guarded, token)).toEqual({ status: 200 });
    expect(guarded.get(TokenCodec).verifiedTokenCount).toBe(1);
    for (const sibling of Object.values(await siblingsOf(token))) {
      expect((await guardAnswer(guarded, sibling)).status).toBe(401);
    }
    await tokens.revoke(token);
    expect(await guardAnswer(guarded, token)).toEqual({ status: 401, message: 'token revoked' });
  });
});
