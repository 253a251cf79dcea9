import { generateKeyPairSync } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import type { INestApplication } from '@nestjs/common';
import fc from 'fast-check';
import { SignJWT } from 'jose';
import request from 'supertest';
import { TokenService } from '../lib/index.js';
import { TOKEN_GUARD_MESSAGES } from '../lib/guard/token-guard.constants.js';
import { createGuardApp, PLATFORMS, type Platform } from './support/guard-app.js';
import { GuardedSubjectController } from './support/guarded-controller.js';
import { nowSeconds } from './support/jwt-fixtures.js';
import { createTestDatabase, type TestDatabase } from './support/test-database.js';
import { TEST_SECRET } from './support/token-app.js';

const REASONS_401 = [
  TOKEN_GUARD_MESSAGES.missingToken,
  TOKEN_GUARD_MESSAGES.invalidToken,
  TOKEN_GUARD_MESSAGES.expired,
  TOKEN_GUARD_MESSAGES.notYetValid,
  TOKEN_GUARD_MESSAGES.missingClaims,
  TOKEN_GUARD_MESSAGES.revoked,
];
const B64URL = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_';
/** Characters Node lets a client put in a header value (HTAB, visible ASCII and space, obs-text). */
const HEADER_CHARS = [
  '\t',
  ...Array.from({ length: 0x7f - 0x20 }, (_, i) => String.fromCharCode(0x20 + i)),
  ...Array.from({ length: 0x80 }, (_, i) => String.fromCharCode(0x80 + i)),
];
/** Under Node's default 16 KiB limit for all request headers together. */
const MAX_TOKEN = 14_000;

const b64url = (value: Uint8Array | string): string => Buffer.from(value).toString('base64url');
const b64json = (value: unknown): string => b64url(JSON.stringify(value));

let db: TestDatabase;
const apps = new Map<Platform, INestApplication>();
let valid: string[];
let revoked: string[];
const rsa = generateKeyPairSync('rsa', { modulusLength: 2048 });
const ec = generateKeyPairSync('ec', { namedCurve: 'P-256' });

beforeAll(async () => {
  db = await createTestDatabase();
  for (const platform of PLATFORMS) apps.set(platform, await createGuardApp(db.url, { platform, controllers: [GuardedSubjectController] }));
  const tokens = apps.get('express')!.get(TokenService);
  valid = await Promise.all(
    Array.from({ length: 4 }, (_, i) =>
      tokens.issueToken({ subject: `fuzz-${i}`, claims: { pad: 'x'.repeat(i * 300) } }).then((t) => t.token),
    ),
  );
  revoked = await Promise.all(Array.from({ length: 3 }, (_, i) => tokens.issueToken({ subject: `gone-${i}` }).then((t) => t.token)));
  await Promise.all(revoked.map((token) => tokens.revoke(token)));
});

afterAll(async () => {
  for (const app of apps.values()) await app.close();
  await db?.drop();
});

/** Positions of a token that change its bytes when edited: not the last character of a segment. */
function editablePositions(token: string): number[] {
  return [...token].flatMap((char, i) => (char !== '.' && token[i + 1] !== undefined && token[i + 1] !== '.' ? [i] : []));
}

function arbitraries() {
  const validToken = fc.constantFrom(...valid);
  const randomSegments = fc
    .array(fc.uint8Array({ maxLength: 600 }), { minLength: 1, maxLength: 5 })
    .map((parts) => parts.map(b64url).join('.'));
  const truncated = validToken.chain((token) => fc.integer({ min: 0, max: token.length - 1 }).map((n) => token.slice(0, n)));
  const edited = validToken.chain((token) => {
    const positions = editablePositions(token);
    return fc
      .tuple(fc.constantFrom(...positions), fc.constantFrom(...B64URL, '.', '~', '+', '/', '='))
      .filter(([i, char]) => token[i] !== char)
      .map(([i, char]) => token.slice(0, i) + char + token.slice(i + 1));
  });
  const claims = fc.record({
    jti: fc.oneof(fc.uuid(), fc.string(), fc.integer()),
    sub: fc.oneof(fc.string({ minLength: 1 }), fc.integer()),
    exp: fc.integer({ min: nowSeconds() + 60, max: nowSeconds() + 10 ** 8 }),
  });
  const reSigned = fc
    .tuple(claims, fc.uint8Array({ minLength: 1, maxLength: 64 }), fc.constantFrom('HS256', 'HS384', 'HS512'))
    .filter(([, key]) => Buffer.from(key).toString() !== TEST_SECRET)
    .map(([payload, key, alg]) => new SignJWT(payload as Record<string, unknown>).setProtectedHeader({ alg }).sign(key));
  const otherKeyTypes = fc
    .tuple(
      claims,
      fc.constantFrom({ alg: 'RS256', key: rsa.privateKey }, { alg: 'PS256', key: rsa.privateKey }, { alg: 'ES256', key: ec.privateKey }),
    )
    .map(([payload, { alg, key }]) => new SignJWT(payload as Record<string, unknown>).setProtectedHeader({ alg }).sign(key));
  const swappedAlg = fc
    .tuple(
      validToken,
      fc
        .oneof(
          fc.constantFrom('none', 'None', 'NONE', 'nOnE', 'HS384', 'HS512', 'hs256', 'RS256', 'ES256', 'PS256', 'EdDSA', ''),
          fc.string(),
        )
        .filter((alg) => alg !== 'HS256'),
      fc.boolean(),
    )
    .map(([token, alg, dropSignature]) => {
      const [, payload, signature] = token.split('.');
      return `${b64json({ alg, typ: 'JWT' })}.${payload}.${dropSignature ? '' : signature}`;
    });
  // Correctly signed, but expired, not yet valid, or without a usable jti/sub.
  const badClaims = fc
    .record({
      jti: fc.option(fc.oneof(fc.uuid(), fc.constant(''), fc.integer()), { nil: undefined }),
      sub: fc.option(fc.oneof(fc.string({ minLength: 1 }), fc.constant(''), fc.integer()), { nil: undefined }),
      exp: fc.integer({ min: 0, max: nowSeconds() - 1 }),
    })
    .chain((payload) =>
      fc.oneof(
        fc.constant(payload),
        fc.constant({ ...payload, exp: nowSeconds() + 3600, nbf: nowSeconds() + 600 }),
        fc.constant({
          ...payload,
          exp: nowSeconds() + 3600,
          jti: typeof payload.jti === 'string' && payload.jti ? undefined : payload.jti,
        }),
      ),
    )
    .map((payload) =>
      new SignJWT(payload as Record<string, unknown>).setProtectedHeader({ alg: 'HS256' }).sign(new TextEncoder().encode(TEST_SECRET)),
    );
  const huge = fc.oneof(
    fc.integer({ min: 4_000, max: MAX_TOKEN }).map((n) => 'A'.repeat(n)),
    fc.tuple(validToken, fc.integer({ min: 1_000, max: MAX_TOKEN - 2_000 })).map(([token, n]) => `${token}.${'x'.repeat(n)}`),
    fc
      .integer({ min: 4_000, max: MAX_TOKEN })
      .map((n) => `${b64json({ alg: 'HS256' })}.${b64json({ pad: 'p'.repeat(n * 0.7) })}.${'s'.repeat(43)}`),
  );
  const token = fc.oneof<fc.Arbitrary<string | Promise<string>>[]>(
    randomSegments,
    truncated,
    edited,
    reSigned,
    otherKeyTypes,
    swappedAlg,
    badClaims,
    huge,
    fc.constantFrom(...revoked),
  );
  const scheme = fc.constantFrom('Bearer', 'bearer', 'BEARER', 'bEaReR');
  const header = fc.oneof(
    { weight: 6, arbitrary: fc.tuple(scheme, token).map(([s, t]) => ({ s, t })) },
    { weight: 1, arbitrary: fc.string({ unit: fc.constantFrom(...HEADER_CHARS), maxLength: 300 }).map((raw) => ({ raw })) },
    {
      weight: 1,
      arbitrary: fc.tuple(fc.constantFrom('Basic', 'Token', 'JWT', 'Bearer:', ''), validToken).map(([s, t]) => ({ raw: `${s} ${t}` })),
    },
  );
  return header;
}

describe.each(PLATFORMS)('RevokedTokenGuard under generated bad input on %s', (platform: Platform) => {
  it('answers 401 with a known reason to every generated bad token or header, never 500 and never 200', async () => {
    // One listening server per platform takes every generated request.
    const server = apps.get(platform)!.getHttpServer();
    expect((await request(server).get('/guarded').set('Authorization', `Bearer ${valid[0]}`)).status).toBe(200);
    const statuses = new Map<string, number>();
    await fc.assert(
      fc.asyncProperty(arbitraries(), async (input) => {
        const value = 'raw' in input ? input.raw : `${input.s} ${await input.t}`;
        const res = await request(server).get('/guarded').set('Authorization', value);
        expect(res.status).toBe(401);
        expect(res.body).toEqual({ statusCode: 401, error: 'Unauthorized', message: expect.any(String) });
        expect(REASONS_401).toContain(res.body.message);
        // Whatever the input, the RFC 6750 challenge is well-formed and matches the reason.
        expect(res.headers['www-authenticate']).toBe(
          res.body.message === TOKEN_GUARD_MESSAGES.missingToken
            ? 'Bearer'
            : `Bearer error="invalid_token", error_description="${res.body.message}"`,
        );
        statuses.set(res.body.message, (statuses.get(res.body.message) ?? 0) + 1);
      }),
      { numRuns: 1000 },
    );
    // The generators reach every stage of the guard, not just the header parser.
    expect([...statuses.keys()].sort()).toEqual([...REASONS_401].sort());
    expect((await request(server).get('/guarded').set('Authorization', `Bearer ${valid[1]}`)).status).toBe(200);
  });
});
