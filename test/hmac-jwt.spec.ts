import { createHmac, randomUUID } from 'node:crypto';
import { jest } from '@jest/globals';
import { errors as joseErrors, jwtVerify, SignJWT, type JWTVerifyOptions } from 'jose';
import { InvalidTokenError } from '../lib/index.js';
import { TokenCodec } from '../lib/jwt/token-codec.js';
import { resolveJwtOptions } from '../lib/options/validate-jwt.js';
import { nowSeconds } from './support/jwt-fixtures.js';
import { TEST_SECRET } from './support/token-app.js';

/**
 * HMAC tokens are signed and verified with node:crypto rather than jose's WebCrypto. These
 * tests hold the codec to jose: every token below gets the same verdict (the same claims,
 * or the same jose error as the cause) from the codec as from jose's `jwtVerify` with the
 * same options, and the tokens in the plain form never reach WebCrypto.
 */

const SECRET = new TextEncoder().encode(TEST_SECRET);
const OTHER_SECRET = new TextEncoder().encode(`${TEST_SECRET}-but-another-one`);
const ISSUER = 'https://issuer.example';
const AUDIENCE = 'api';

const codec = new TokenCodec(
  resolveJwtOptions({ secret: TEST_SECRET, algorithms: ['HS256', 'HS384'], issuer: ISSUER, audience: AUDIENCE, clockToleranceSeconds: 5 }),
);
const joseOptions: JWTVerifyOptions = {
  algorithms: ['HS256', 'HS384'],
  issuer: ISSUER,
  audience: AUDIENCE,
  clockTolerance: 5,
  requiredClaims: ['exp'],
};

const b64 = (text: string) => Buffer.from(text).toString('base64url');

function goodClaims(): Record<string, unknown> {
  return { sub: 'alice', jti: randomUUID(), iss: ISSUER, aud: AUDIENCE, iat: nowSeconds(), exp: nowSeconds() + 600 };
}

/** A compact token of exactly these segments, its MAC made with `alg` under `secret` unless `signature` is given. */
function craft(
  header: object | string,
  claims: object | string,
  { alg = 'HS256', secret = SECRET, signature }: { alg?: string; secret?: Uint8Array; signature?: string } = {},
): string {
  const headerSegment = typeof header === 'string' ? header : b64(JSON.stringify(header));
  const payloadSegment = typeof claims === 'string' ? claims : b64(JSON.stringify(claims));
  const input = `${headerSegment}.${payloadSegment}`;
  const mac =
    signature ??
    createHmac(`sha${alg.slice(2)}`, secret)
      .update(input)
      .digest('base64url');
  return `${input}.${mac}`;
}

/** A signature segment with the same bytes as `token`'s, written with other unused trailing bits. */
function nonCanonicalSignature(token: string): string {
  const signature = token.split('.')[2];
  const last = signature.at(-1)!;
  const alphabet = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_';
  return signature.slice(0, -1) + alphabet[alphabet.indexOf(last) ^ 1];
}

type Verdict = { accepted: Record<string, unknown> } | { refused: string };

async function joseVerdict(token: string): Promise<Verdict> {
  return jwtVerify(token, SECRET, joseOptions).then(
    ({ payload }) => ({ accepted: payload }),
    (error: unknown) => ({ refused: (error as joseErrors.JOSEError).code }),
  );
}

async function codecVerdict(token: string): Promise<Verdict> {
  return codec.verify(token).then(
    (payload) => ({ accepted: payload }),
    (error: unknown) => {
      expect(error).toBeInstanceOf(InvalidTokenError);
      return { refused: ((error as Error).cause as joseErrors.JOSEError).code };
    },
  );
}

const plain = { alg: 'HS256', typ: 'JWT' };
const cases: Array<[string, () => string, 'node:crypto' | 'jose']> = [
  ['a plain HS256 token', () => craft(plain, goodClaims()), 'node:crypto'],
  ['a token with a kid and no typ', () => craft({ alg: 'HS256', kid: 'k1' }, goodClaims()), 'node:crypto'],
  ['an HS384 token', () => craft({ alg: 'HS384' }, goodClaims(), { alg: 'HS384' }), 'node:crypto'],
  ['a token with a wrong MAC', () => craft(plain, goodClaims(), { secret: OTHER_SECRET }), 'node:crypto'],
  ['a token whose MAC is of another algorithm', () => craft({ alg: 'HS384' }, goodClaims(), { alg: 'HS256' }), 'node:crypto'],
  ['an expired token', () => craft(plain, { ...goodClaims(), exp: nowSeconds() - 60 }), 'node:crypto'],
  ['a token expired within the clock tolerance', () => craft(plain, { ...goodClaims(), exp: nowSeconds() - 2 }), 'node:crypto'],
  ['a token not yet valid', () => craft(plain, { ...goodClaims(), nbf: nowSeconds() + 60 }), 'node:crypto'],
  ['a token of another issuer', () => craft(plain, { ...goodClaims(), iss: 'https://elsewhere.example' }), 'node:crypto'],
  ['a token of another audience', () => craft(plain, { ...goodClaims(), aud: ['web', 'mobile'] }), 'node:crypto'],
  ['a token for several audiences, ours among them', () => craft(plain, { ...goodClaims(), aud: ['web', AUDIENCE] }), 'node:crypto'],
  ['a token without exp', () => craft(plain, { ...goodClaims(), exp: undefined }), 'node:crypto'],
  ['a token whose exp is a string', () => craft(plain, { ...goodClaims(), exp: String(nowSeconds() + 600) }), 'node:crypto'],
  ['a token whose claims set is an array', () => craft(plain, [goodClaims()]), 'node:crypto'],
  ['a token whose claims set is not JSON', () => craft(plain, b64('{"sub":')), 'node:crypto'],
  ['a token whose claims set is not UTF-8', () => craft(plain, Buffer.from([0x7b, 0xff, 0x7d]).toString('base64url')), 'node:crypto'],
  ['an HS512 token, not accepted', () => craft({ alg: 'HS512' }, goodClaims(), { alg: 'HS512' }), 'jose'],
  ['an unsecured token (alg none)', () => `${b64('{"alg":"none"}')}.${b64(JSON.stringify(goodClaims()))}.`, 'jose'],
  ['a token with a crit header', () => craft({ alg: 'HS256', crit: ['exp'], exp: 1 }, goodClaims()), 'jose'],
  ['a token with an unencoded payload', () => craft({ alg: 'HS256', b64: false, crit: ['b64'] }, goodClaims()), 'jose'],
  ['a token with an unknown header member', () => craft({ alg: 'HS256', x5u: 'https://x.example' }, goodClaims()), 'jose'],
  ['a token whose header is padded base64', () => craft(`${b64('{"alg":"HS256"}')}==`, goodClaims()), 'jose'],
  ['a token whose header is an array', () => craft('WyJIUzI1NiJd', goodClaims()), 'jose'],
  ['a token whose signature is written with other trailing bits', () => nonCanonicalSignature(craft(plain, goodClaims())), 'jose'],
  ['a token of two segments', () => craft(plain, goodClaims()).split('.').slice(0, 2).join('.'), 'jose'],
  ['a token of four segments', () => `${craft(plain, goodClaims())}.x`, 'jose'],
];

describe('HMAC tokens verified with node:crypto agree with jose', () => {
  const webCryptoVerify = jest.spyOn(globalThis.crypto.subtle, 'verify');
  afterAll(() => webCryptoVerify.mockRestore());

  it.each(cases)('%s', async (_label, makeToken, judgedBy) => {
    const token = makeToken();
    webCryptoVerify.mockClear();
    const ours = await codecVerdict(token);
    const reachedWebCrypto = webCryptoVerify.mock.calls.length > 0;
    expect(ours).toEqual(await joseVerdict(token));
    if (judgedBy === 'node:crypto') expect(reachedWebCrypto).toBe(false);
  });

  it('an expired token accepted on request has its claims, judged without WebCrypto', async () => {
    const claims = { ...goodClaims(), exp: nowSeconds() - 60 };
    webCryptoVerify.mockClear();
    expect(await codec.verify(craft(plain, claims), true)).toEqual(claims);
    expect(webCryptoVerify).not.toHaveBeenCalled();
  });
});

describe('HMAC tokens signed with node:crypto', () => {
  it('treat claims jose cannot clone, or that write their own JSON, as jose does', async () => {
    const withFunction = { ...goodClaims(), callback: () => 1 };
    await expect(codec.sign(withFunction)).rejects.toThrow(/could not be cloned/);
    expect(() => new SignJWT(withFunction)).toThrow(/could not be cloned/);
    const withBuffer = { ...goodClaims(), raw: Buffer.from('abc') };
    expect(await codec.sign(withBuffer)).toBe(await new SignJWT(withBuffer).setProtectedHeader({ alg: 'HS256', typ: 'JWT' }).sign(SECRET));
  });

  it('never reach WebCrypto, and are the bytes jose signs', async () => {
    const webCryptoSign = jest.spyOn(globalThis.crypto.subtle, 'sign');
    try {
      const claims = goodClaims();
      const ours = await codec.sign(claims);
      expect(webCryptoSign).not.toHaveBeenCalled();
      const theirs = await new SignJWT(claims).setProtectedHeader({ alg: 'HS256', typ: 'JWT' }).sign(SECRET);
      expect(ours).toBe(theirs);
    } finally {
      webCryptoSign.mockRestore();
    }
  });
});
