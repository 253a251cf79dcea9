import type { INestApplication } from '@nestjs/common';
import type { DataSource } from 'typeorm';
import { InvalidTokenError, TokenService } from '../lib/index.js';
import {
  countRows,
  MALFORMED_TOKENS,
  nowSeconds,
  signToken,
  tamperedToken,
  unsignedToken,
  unsignedTokenVariants,
} from './support/jwt-fixtures.js';
import { createTestDatabase, type TestDatabase } from './support/test-database.js';
import { createTokenApp, dataSourceOf, TEST_SECRET } from './support/token-app.js';

/**
 * "Every method that takes a token verifies its signature (and issuer/audience when
 * configured) before trusting any claim; a forged, malformed or unsigned token throws
 * InvalidTokenError and writes nothing."
 */

const ISSUER = 'https://issuer.test';
const AUDIENCE = 'api.test';

let db: TestDatabase;
let app: INestApplication;
let tokens: TokenService;
let dataSource: DataSource;

beforeAll(async () => {
  db = await createTestDatabase();
  app = await createTokenApp(db.url, {
    options: { jwt: { secret: TEST_SECRET, issuer: ISSUER, audience: AUDIENCE, algorithms: ['HS256'] }, expunge: { enabled: false } },
  });
  tokens = app.get(TokenService);
  dataSource = dataSourceOf(app);
});

afterAll(async () => {
  await app?.close();
  await db?.drop();
});

/** A token this app trusts. */
function good(claims: Record<string, unknown> = {}, expiresInSeconds = 3600): Promise<string> {
  return signToken({ iss: ISSUER, aud: AUDIENCE, ...claims }, { expiresInSeconds });
}

type Method = [string, (token: string) => Promise<unknown>];
const METHODS: Method[] = [
  ['storeToken', (token) => tokens.storeToken({ token, purpose: 'user', extraData: { a: 1 } })],
  ['revoke', (token) => tokens.revoke(token)],
  ['tokenRevoked', (token) => tokens.tokenRevoked(token)],
  ['getToken', (token) => tokens.getToken({ token })],
  ['storeConfirmationChanges', (token) => tokens.storeConfirmationChanges({ token, changes: { email: 'evil@example.com' } })],
];

const BAD_TOKENS: Array<[string, () => Promise<string | string[]>]> = [
  ['signed with another secret', () => signToken({ iss: ISSUER, aud: AUDIENCE }, { secret: 'some-other-secret-of-the-same-length!!!!' })],
  [
    'tampered after signing',
    async () => {
      const token = await good();
      const [header, payload, signature] = token.split('.');
      const claims = JSON.parse(Buffer.from(payload, 'base64url').toString());
      return `${header}.${Buffer.from(JSON.stringify({ ...claims, sub: 'admin' })).toString('base64url')}.${signature}`;
    },
  ],
  ['tampered (no iss/aud)', () => tamperedToken()],
  [
    'alg none',
    () => Promise.resolve([unsignedToken({ iss: ISSUER, aud: AUDIENCE }), ...unsignedTokenVariants({ iss: ISSUER, aud: AUDIENCE })]),
  ],
  [
    'alg none with the real signature kept',
    async () => {
      const [, payload, signature] = (await good()).split('.');
      return `${Buffer.from(JSON.stringify({ alg: 'none' })).toString('base64url')}.${payload}.${signature}`;
    },
  ],
  ['malformed', () => Promise.resolve(MALFORMED_TOKENS)],
  ['not a string', () => Promise.resolve([null, 42, {}] as unknown as string[])],
  ['wrong issuer', () => good({ iss: 'https://evil.test' })],
  ['no issuer', () => signToken({ aud: AUDIENCE })],
  ['wrong audience', () => good({ aud: 'other-api' })],
  ['no audience', () => signToken({ iss: ISSUER })],
  ['wrong issuer, and expired', () => good({ iss: 'https://evil.test' }, -60)],
  ['forged, and expired', () => signToken({ iss: ISSUER, aud: AUDIENCE }, { secret: 'x'.repeat(40), expiresInSeconds: -60 })],
  ['an algorithm outside jwt.algorithms (HS512)', () => signToken({ iss: ISSUER, aud: AUDIENCE }, { alg: 'HS512' })],
  ['not yet valid (nbf in the future)', () => good({ nbf: nowSeconds() + 3600 })],
];

describe.each(BAD_TOKENS)('a token %s', (_label, make) => {
  it.each(METHODS)('%s throws InvalidTokenError and writes nothing', async (_name, call) => {
    const made = await make();
    const candidates = Array.isArray(made) ? made : [made];
    expect(candidates.length).toBeGreaterThan(0);
    const before = await countRows(dataSource);
    for (const token of candidates) {
      await expect(call(token)).rejects.toBeInstanceOf(InvalidTokenError);
    }
    expect(await countRows(dataSource)).toBe(before);
  });
});

describe('the same checks pass for a trusted token', () => {
  // Guards against the table above passing only because everything is rejected.
  it.each(METHODS)('%s accepts it', async (_name, call) => {
    const before = await countRows(dataSource);
    await expect(call(await good())).resolves.not.toThrow();
    const writes = ['storeToken', 'revoke', 'storeConfirmationChanges'].includes(_name) ? 1 : 0;
    expect(await countRows(dataSource)).toBe(before + writes);
  });

  it('an expired but otherwise valid token is accepted; getToken finds no unexpired row for it', async () => {
    const expired = await good({}, -60);
    await tokens.storeToken({ token: expired, purpose: 'user' });
    expect(await tokens.tokenRevoked(expired)).toBe(false);
    expect(await tokens.getToken({ token: expired })).toBeNull();
    await tokens.revoke(expired);
    expect(await tokens.tokenRevoked(expired)).toBe(true);
  });
});

describe('a token of the right signature but the wrong claims cannot poison a real row', () => {
  it("a forged token with a victim's jti neither revokes nor overwrites the victim's row", async () => {
    const victim = await good({ jti: 'victim-jti', sub: 'victim' });
    await tokens.storeToken({ token: victim, purpose: 'user', extraData: { device: 'phone' } });
    const forged = await signToken(
      { jti: 'victim-jti', sub: 'attacker', iss: ISSUER, aud: AUDIENCE },
      { secret: 'not-the-secret-not-the-secret-not-the-secret' },
    );
    await expect(tokens.revoke(forged)).rejects.toBeInstanceOf(InvalidTokenError);
    await expect(tokens.storeToken({ token: forged, purpose: 'user', extraData: { device: 'evil' } })).rejects.toBeInstanceOf(
      InvalidTokenError,
    );
    const row = await tokens.getToken({ jti: 'victim-jti' });
    expect(row?.subject).toBe('victim');
    expect(row?.purpose).toBe('user');
    expect(row?.extraData).toEqual({ device: 'phone' });
    expect(await tokens.tokenRevoked(victim)).toBe(false);
  });
});
