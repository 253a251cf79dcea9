import { generateKeyPairSync, randomUUID, type KeyObject } from 'node:crypto';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { INestApplication } from '@nestjs/common';
import { JwtService } from '@nestjs/jwt';
import { decodeJwt, decodeProtectedHeader, jwtVerify, SignJWT, type JWK } from 'jose';
import { InvalidTokenError, TokenResourceUnavailableError, TokenService, type TokenResourceJwtOptions } from '../lib/index.js';
import { TokenCodec } from '../lib/jwt/token-codec.js';
import { resolveJwtOptions } from '../lib/options/validate-jwt.js';
import { countRows, nowSeconds, signToken } from './support/jwt-fixtures.js';
import { createTestDatabase, type TestDatabase } from './support/test-database.js';
import { createTokenApp, dataSourceOf, TEST_SECRET } from './support/token-app.js';

/** Signing and verification with jose: every key kind, other libraries' tokens, remote JWKS. */

/** A codec built from jwt options the way the module builds it, checked first. */
function codec(jwt: TokenResourceJwtOptions): TokenCodec {
  return new TokenCodec(resolveJwtOptions(jwt));
}

function claims(): Record<string, unknown> {
  return { sub: 'alice', jti: randomUUID(), iat: nowSeconds(), exp: nowSeconds() + 600 };
}

interface PemPair {
  publicKey: string;
  privateKey: string;
}

function pemPair(type: 'rsa' | 'ec' | 'ed25519'): PemPair {
  const publicKeyEncoding = { type: 'spki', format: 'pem' } as const;
  const privateKeyEncoding = { type: 'pkcs8', format: 'pem' } as const;
  if (type === 'rsa') return generateKeyPairSync('rsa', { modulusLength: 2048, publicKeyEncoding, privateKeyEncoding });
  if (type === 'ec') return generateKeyPairSync('ec', { namedCurve: 'prime256v1', publicKeyEncoding, privateKeyEncoding });
  return generateKeyPairSync('ed25519', { publicKeyEncoding, privateKeyEncoding });
}

function jwkPair(type: 'rsa' | 'ec'): { publicKey: JWK; privateKey: JWK; privateKeyObject: KeyObject } {
  const pair =
    type === 'rsa' ? generateKeyPairSync('rsa', { modulusLength: 2048 }) : generateKeyPairSync('ec', { namedCurve: 'prime256v1' });
  return {
    publicKey: pair.publicKey.export({ format: 'jwk' }),
    privateKey: pair.privateKey.export({ format: 'jwk' }),
    privateKeyObject: pair.privateKey,
  };
}

describe.each([
  ['RS256 with PEM keys', () => pemPair('rsa'), 'RS256'],
  ['ES256 with PEM keys', () => pemPair('ec'), 'ES256'],
  ['EdDSA with PEM keys', () => pemPair('ed25519'), 'EdDSA'],
  ['RS256 with JWKs', () => jwkPair('rsa'), 'RS256'],
  ['ES256 with JWKs', () => jwkPair('ec'), 'ES256'],
] as const)('%s', (_label, makeKeys, alg) => {
  const keys = makeKeys();
  const other = makeKeys();

  it(`signs with ${alg} and verifies its own tokens`, async () => {
    const jwt = codec({ publicKey: keys.publicKey, privateKey: keys.privateKey });
    const payload = claims();
    const token = await jwt.sign(payload);
    expect(decodeProtectedHeader(token).alg).toBe(alg);
    expect(await jwt.verify(token)).toMatchObject(payload);
  });

  it('rejects a token signed by another key of the same kind', async () => {
    const theirs = await codec({ publicKey: other.publicKey, privateKey: other.privateKey }).sign(claims());
    await expect(codec({ publicKey: keys.publicKey }).verify(theirs)).rejects.toBeInstanceOf(InvalidTokenError);
  });

  it('rejects an HS256 token whose secret is the public key (algorithm confusion)', async () => {
    const secret = typeof keys.publicKey === 'string' ? keys.publicKey : JSON.stringify(keys.publicKey);
    const confused = await signToken(claims(), { secret });
    await expect(codec({ publicKey: keys.publicKey }).verify(confused)).rejects.toBeInstanceOf(InvalidTokenError);
  });

  it('verifies without a private key, but then cannot issue', async () => {
    const verifyOnly = codec({ publicKey: keys.publicKey });
    const token = await codec({ publicKey: keys.publicKey, privateKey: keys.privateKey }).sign(claims());
    expect((await verifyOnly.verify(token)).sub).toBe('alice');
    await expect(verifyOnly.sign(claims())).rejects.toThrow(/signing key/);
  });
});

describe('HMAC secrets', () => {
  it('issues HS256 by default and accepts every HS* algorithm of the secret', async () => {
    const jwt = codec({ secret: TEST_SECRET });
    expect(decodeProtectedHeader(await jwt.sign(claims())).alg).toBe('HS256');
    for (const alg of ['HS256', 'HS384', 'HS512']) {
      expect((await jwt.verify(await signToken({ sub: alg }, { alg }))).sub).toBe(alg);
    }
  });

  it('by default accepts only the HS* algorithms the secret is long enough for (RFC 7518 §3.2)', async () => {
    const accepted = async (bytes: number) => {
      const secret = 's'.repeat(bytes);
      const jwt = codec({ secret });
      const verdicts = await Promise.all(
        ['HS256', 'HS384', 'HS512'].map((alg) =>
          signToken({}, { alg, secret })
            .then((token) => jwt.verify(token))
            .then(
              () => alg,
              () => null,
            ),
        ),
      );
      return verdicts.filter(Boolean);
    };
    expect(await accepted(32)).toEqual(['HS256']);
    expect(await accepted(48)).toEqual(['HS256', 'HS384']);
    expect(await accepted(64)).toEqual(['HS256', 'HS384', 'HS512']);
  });

  it.each(['HS256', 'HS384', 'HS512'])('signs %s tokens byte for byte as jose SignJWT does, issuer and audience included', async (alg) => {
    const secret = 'k'.repeat(64);
    const payload = {
      sub: 'ålice ☃',
      jti: randomUUID(),
      iat: nowSeconds() + 0.123,
      exp: nowSeconds() + 600,
      nested: { list: [1, 'two', null] },
    };
    const ours = await codec({ secret, algorithms: [alg], issuer: 'https://issuer.example', audience: ['api', 'web'] }).sign(payload);
    const theirs = await new SignJWT(payload)
      .setProtectedHeader({ alg, typ: 'JWT' })
      .setIssuer('https://issuer.example')
      .setAudience(['api', 'web'])
      .sign(new TextEncoder().encode(secret));
    expect(ours).toBe(theirs);
    const { payload: verified } = await jwtVerify(ours, new TextEncoder().encode(secret), { algorithms: [alg], audience: 'web' });
    expect(verified).toMatchObject({ ...payload, iss: 'https://issuer.example' });
  });

  it("keeps a claim's own iss when only an audience is configured, as jose does", async () => {
    const payload = { ...claims(), iss: 'set-by-caller' };
    const ours = await codec({ secret: TEST_SECRET, audience: 'api' }).sign(payload);
    const theirs = await new SignJWT(payload)
      .setProtectedHeader({ alg: 'HS256', typ: 'JWT' })
      .setAudience('api')
      .sign(new TextEncoder().encode(TEST_SECRET));
    expect(ours).toBe(theirs);
    expect(decodeJwt(ours).iss).toBe('set-by-caller');
  });

  it.each([
    ['an infinite exp', { exp: Number.POSITIVE_INFINITY }],
    ['a NaN iat', { iat: Number.NaN }],
    ['an infinite nbf', { nbf: Number.NEGATIVE_INFINITY }],
  ])('refuses to sign %s, as jose does', async (_label, bad) => {
    await expect(codec({ secret: TEST_SECRET }).sign({ ...claims(), ...bad })).rejects.toThrow(/must be a finite number/);
    await expect(
      new SignJWT({ ...claims(), ...bad }).setProtectedHeader({ alg: 'HS256' }).sign(new TextEncoder().encode(TEST_SECRET)),
    ).rejects.toThrow(/must be a finite number/);
  });

  it('issues with the first configured algorithm and accepts only the configured ones', async () => {
    const jwt = codec({ secret: TEST_SECRET, algorithms: ['HS512'] });
    expect(decodeProtectedHeader(await jwt.sign(claims())).alg).toBe('HS512');
    await expect(jwt.verify(await signToken({}, { alg: 'HS256' }))).rejects.toBeInstanceOf(InvalidTokenError);
  });

  it('accepts a Uint8Array secret', async () => {
    const bytes = new TextEncoder().encode(TEST_SECRET);
    expect((await codec({ secret: bytes }).verify(await signToken({ sub: 'bytes' }))).sub).toBe('bytes');
  });

  it('verifies a token signed by jose directly with the same secret', async () => {
    const token = await new SignJWT({ sub: 'from-jose', jti: 'j1', role: 'x' })
      .setProtectedHeader({ alg: 'HS256' })
      .setIssuedAt()
      .setExpirationTime('5m')
      .sign(new TextEncoder().encode(TEST_SECRET));
    expect(await codec({ secret: TEST_SECRET }).verify(token)).toMatchObject({ sub: 'from-jose', jti: 'j1', role: 'x' });
  });

  it('verifies a token signed by @nestjs/jwt with the same secret, and @nestjs/jwt verifies ours', async () => {
    const nest = new JwtService({ secret: TEST_SECRET });
    const theirs = await nest.signAsync({ sub: 'from-nest', jti: 'n1' }, { expiresIn: '1h' });
    expect(await codec({ secret: TEST_SECRET }).verify(theirs)).toMatchObject({ sub: 'from-nest', jti: 'n1' });
    const ours = await codec({ secret: TEST_SECRET }).sign(claims());
    expect((await nest.verifyAsync(ours)).sub).toBe('alice');
  });

  it('rejects a token signed by @nestjs/jwt with another secret', async () => {
    const theirs = await new JwtService({ secret: 'another-secret-another-secret-another' }).signAsync(
      { sub: 'x', jti: 'y' },
      { expiresIn: '1h' },
    );
    await expect(codec({ secret: TEST_SECRET }).verify(theirs)).rejects.toBeInstanceOf(InvalidTokenError);
  });
});

describe('time checks', () => {
  it('rejects an expired token unless asked to accept it; clockToleranceSeconds widens exp', async () => {
    const expired = await signToken({ sub: 'late' }, { expiresInSeconds: -10 });
    await expect(codec({ secret: TEST_SECRET }).verify(expired)).rejects.toThrow(/expired/);
    expect((await codec({ secret: TEST_SECRET }).verify(expired, true)).sub).toBe('late');
    expect((await codec({ secret: TEST_SECRET, clockToleranceSeconds: 30 }).verify(expired)).sub).toBe('late');
  });

  it('clockToleranceSeconds widens nbf too', async () => {
    const early = await signToken({ nbf: nowSeconds() + 10 });
    await expect(codec({ secret: TEST_SECRET }).verify(early)).rejects.toBeInstanceOf(InvalidTokenError);
    await expect(codec({ secret: TEST_SECRET }).verify(early, true)).rejects.toBeInstanceOf(InvalidTokenError);
    await expect(codec({ secret: TEST_SECRET, clockToleranceSeconds: 30 }).verify(early)).resolves.toBeDefined();
  });
});

describe('remote JWKS', () => {
  const rsa = generateKeyPairSync('rsa', { modulusLength: 2048 });
  const ec = generateKeyPairSync('ec', { namedCurve: 'prime256v1' });
  const stranger = generateKeyPairSync('rsa', { modulusLength: 2048 });
  let server: Server;
  let uri: string;
  let requests = 0;

  beforeAll(async () => {
    const keys = [
      { ...rsa.publicKey.export({ format: 'jwk' }), kid: 'rsa-1', alg: 'RS256', use: 'sig' },
      { ...ec.publicKey.export({ format: 'jwk' }), kid: 'ec-1', alg: 'ES256', use: 'sig' },
    ];
    server = createServer((_req, res) => {
      requests += 1;
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ keys }));
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    uri = `http://127.0.0.1:${(server.address() as AddressInfo).port}/.well-known/jwks.json`;
  });

  afterAll(async () => {
    await new Promise((resolve) => server.close(resolve));
  });

  const signWith = (key: KeyObject, alg: string, kid: string) => new SignJWT(claims()).setProtectedHeader({ alg, kid }).sign(key);

  it('verifies RS256 and ES256 tokens against keys fetched from the JWKS', async () => {
    const jwt = codec({ jwksUri: uri });
    expect((await jwt.verify(await signWith(rsa.privateKey, 'RS256', 'rsa-1'))).sub).toBe('alice');
    expect((await jwt.verify(await signWith(ec.privateKey, 'ES256', 'ec-1'))).sub).toBe('alice');
    expect(requests).toBeGreaterThan(0);
  });

  it('rejects a token signed by a key that is not in the JWKS', async () => {
    const jwt = codec({ jwksUri: uri });
    await expect(jwt.verify(await signWith(stranger.privateKey, 'RS256', 'rsa-1'))).rejects.toBeInstanceOf(InvalidTokenError);
    await expect(jwt.verify(await signWith(stranger.privateKey, 'RS256', 'unknown-kid'))).rejects.toBeInstanceOf(InvalidTokenError);
  });

  it('rejects HS256 tokens and alg none outright', async () => {
    const jwt = codec({ jwksUri: uri });
    await expect(jwt.verify(await signToken())).rejects.toBeInstanceOf(InvalidTokenError);
  });

  it('issues with a private key and verifies through the JWKS', async () => {
    const jwt = codec({ jwksUri: uri, privateKey: rsa.privateKey.export({ format: 'jwk' }) });
    const token = await jwt.sign(claims());
    expect(decodeProtectedHeader(token).alg).toBe('RS256');
    expect((await jwt.verify(token)).sub).toBe('alice');
  });

  it('an unreachable JWKS is "unavailable", not "invalid"', async () => {
    const dead = createServer();
    await new Promise<void>((resolve) => dead.listen(0, '127.0.0.1', resolve));
    const port = (dead.address() as AddressInfo).port;
    await new Promise((resolve) => dead.close(resolve));
    const jwt = codec({ jwksUri: `http://127.0.0.1:${port}/jwks.json` });
    await expect(jwt.verify(await signWith(rsa.privateKey, 'RS256', 'rsa-1'))).rejects.toBeInstanceOf(TokenResourceUnavailableError);
  });

  it.each([
    ['a 503', 503, '{"error":"down"}'],
    ['a non-JSON 200', 200, '<html>maintenance</html>'],
  ])('a JWKS answering %s is "unavailable", not "invalid"', async (_label, status, body) => {
    const broken = createServer((_req, res) => {
      res.writeHead(status, { 'content-type': 'text/plain' });
      res.end(body);
    });
    await new Promise<void>((resolve) => broken.listen(0, '127.0.0.1', resolve));
    try {
      const jwt = codec({ jwksUri: `http://127.0.0.1:${(broken.address() as AddressInfo).port}/jwks.json` });
      await expect(jwt.verify(await signWith(rsa.privateKey, 'RS256', 'rsa-1'))).rejects.toBeInstanceOf(TokenResourceUnavailableError);
      // A malformed token is still the caller's fault, whatever the JWKS does.
      await expect(jwt.verify('garbage')).rejects.toBeInstanceOf(InvalidTokenError);
    } finally {
      await new Promise((resolve) => broken.close(resolve));
    }
  });
});

describe('TokenService with asymmetric keys and foreign tokens', () => {
  let db: TestDatabase;
  const apps: INestApplication[] = [];

  beforeAll(async () => {
    db = await createTestDatabase();
  });

  afterAll(async () => {
    for (const app of apps) await app.close();
    await db?.drop();
  });

  async function serviceWith(jwt: TokenResourceJwtOptions): Promise<{ tokens: TokenService; app: INestApplication }> {
    const app = await createTokenApp(db.url, { options: { jwt: jwt, storeAllTokens: true, expunge: { enabled: false } } });
    apps.push(app);
    return { tokens: app.get(TokenService), app };
  }

  it.each([
    ['RS256', () => pemPair('rsa')],
    ['ES256', () => pemPair('ec')],
    ['EdDSA', () => pemPair('ed25519')],
  ] as const)('issues %s tokens, stores them, and revokes them', async (alg, makeKeys) => {
    const { tokens } = await serviceWith({ ...makeKeys(), secret: undefined });
    const issued = await tokens.issueToken({ subject: `${alg}-user` });
    expect(decodeProtectedHeader(issued.token).alg).toBe(alg);
    expect((await tokens.getToken({ token: issued.token }))?.subject).toBe(`${alg}-user`);
    await tokens.revoke(issued.token);
    expect(await tokens.tokenRevoked(issued.token)).toBe(true);
  });

  it('verifies through a remote JWKS configured as jwt.jwksUri', async () => {
    const pair = generateKeyPairSync('ec', { namedCurve: 'prime256v1' });
    const jwks = createServer((_req, res) => {
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ keys: [{ ...pair.publicKey.export({ format: 'jwk' }), kid: 'k1', alg: 'ES256' }] }));
    });
    await new Promise<void>((resolve) => jwks.listen(0, '127.0.0.1', resolve));
    try {
      const { tokens } = await serviceWith({ secret: undefined, jwksUri: `http://127.0.0.1:${(jwks.address() as AddressInfo).port}/jwks` });
      const token = await new SignJWT(claims()).setProtectedHeader({ alg: 'ES256', kid: 'k1' }).sign(pair.privateKey);
      await tokens.storeToken({ token, purpose: 'user' });
      await tokens.revoke(token);
      expect(await tokens.tokenRevoked(token)).toBe(true);
      await expect(tokens.revoke(await signToken(claims()))).rejects.toBeInstanceOf(InvalidTokenError);
    } finally {
      await new Promise((resolve) => jwks.close(resolve));
    }
  });

  it('stores and revokes a token minted by @nestjs/jwt with the same secret', async () => {
    const { tokens, app } = await serviceWith({ secret: TEST_SECRET });
    const token = await new JwtService({ secret: TEST_SECRET }).signAsync({ sub: 'nest-user', jti: 'nest-jti' }, { expiresIn: '10m' });
    const before = await countRows(dataSourceOf(app));
    await tokens.storeToken({ token, purpose: 'user' });
    expect((await tokens.getToken({ token }))?.subject).toBe('nest-user');
    await tokens.revoke(token);
    expect(await tokens.tokenRevoked(token)).toBe(true);
    expect(await countRows(dataSourceOf(app))).toBe(before + 1);
  });
});
