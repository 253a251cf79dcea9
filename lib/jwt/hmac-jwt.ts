import { createHmac, createSecretKey, timingSafeEqual, type KeyObject } from 'node:crypto';
import { errors as joseErrors, UnsecuredJWT, type JWTPayload, type JWTVerifyOptions } from 'jose';

/** The time claims jose refuses to sign when they are not finite numbers. */
const TIME_CLAIMS = ['iat', 'nbf', 'exp'] as const;

/** The header members of the tokens verified here; a header with any other is left to jose. */
const PLAIN_HEADER_MEMBERS = new Set(['alg', 'typ', 'kid']);

/** `{"alg":"none"}`: the header under which jose's `UnsecuredJWT` checks a claims set. */
const UNSECURED_HEADER = Buffer.from(JSON.stringify({ alg: 'none' })).toString('base64url');

/** Decodes a base64url segment, or `undefined` unless it is the canonical encoding of what it decodes to. */
function canonicalBytes(segment: string): Buffer | undefined {
  const bytes = Buffer.from(segment, 'base64url');
  return bytes.toString('base64url') === segment ? bytes : undefined;
}

/** The `alg` of a compact token's header when it names nothing but `alg`, `typ` and `kid`. */
function plainHeaderAlgorithm(segment: string): string | undefined {
  const bytes = canonicalBytes(segment);
  if (!bytes) return undefined;
  let header: unknown;
  try {
    header = JSON.parse(bytes.toString('utf8'));
  } catch {
    return undefined;
  }
  if (typeof header !== 'object' || header === null || Array.isArray(header)) return undefined;
  if (!Object.keys(header).every((member) => PLAIN_HEADER_MEMBERS.has(member))) return undefined;
  const { alg } = header as { alg?: unknown };
  return typeof alg === 'string' ? alg : undefined;
}

/**
 * HS256/HS384/HS512 JWTs with `node:crypto`'s synchronous HMAC.
 *
 * Why not jose alone: in Node.js, jose 6 signs and verifies through WebCrypto, which runs
 * every HMAC as a job on libuv's thread pool. For a MAC of a few hundred bytes that hop, a
 * thread woken and the event loop woken back, costs far more than the MAC itself, and it is paid
 * on every request the guard checks and three times per session refresh. Here:
 *
 * - {@link sign} writes the same bytes as jose's `SignJWT` with the header `{ alg, typ: 'JWT' }`;
 * - {@link verify} checks the MAC of tokens in the plain form every library issues, then has
 *   jose check the claims set exactly as `jwtVerify` would (its `UnsecuredJWT.decode` runs
 *   the same claims validation), and leaves any other token to jose's `jwtVerify`.
 */
export class HmacJwt {
  private readonly key: KeyObject;
  /** The base64url of the protected header `sign` writes, the same for every token. */
  private readonly signedHeader: string;

  /**
   * @param signAlgorithm the HS* algorithm `sign` uses.
   * @param acceptedAlgorithms the HS* algorithms `verify` accepts.
   */
  constructor(
    secret: Uint8Array,
    private readonly signAlgorithm: string,
    private readonly acceptedAlgorithms: readonly string[],
  ) {
    for (const alg of [signAlgorithm, ...acceptedAlgorithms]) {
      if (!/^HS(256|384|512)$/.test(alg)) throw new TypeError(`${alg} is not an HMAC algorithm`);
    }
    this.key = createSecretKey(secret);
    this.signedHeader = Buffer.from(JSON.stringify({ alg: signAlgorithm, typ: 'JWT' })).toString('base64url');
  }

  /**
   * The compact JWT of `claims`, signed with the `signAlgorithm`.
   *
   * @throws TypeError when `claims` is not an object, `iat`, `nbf` or `exp` is a number that
   *   is not finite, or a claim cannot be written as JSON (a `BigInt`).
   * @throws DOMException (`DataCloneError`) for a claim that cannot be cloned, such as a function.
   */
  sign(claims: JWTPayload): string {
    if (typeof claims !== 'object' || claims === null || Array.isArray(claims)) throw new TypeError('JWT Claims Set MUST be an object');
    for (const claim of TIME_CLAIMS) {
      const value = claims[claim];
      if (typeof value === 'number' && !Number.isFinite(value)) throw new TypeError(`"${claim}" claim must be a finite number`);
    }
    // Cloned first, as jose clones them: a claim that cannot be cloned (a function) is refused
    // rather than dropped, and one whose class writes its own JSON is written as jose writes it.
    const signingInput = `${this.signedHeader}.${Buffer.from(JSON.stringify(structuredClone(claims))).toString('base64url')}`;
    return `${signingInput}.${this.mac(this.signAlgorithm, signingInput).toString('base64url')}`;
  }

  /**
   * Verifies a token in the plain form: three canonical base64url segments and a header of
   * only `alg` (an accepted one), `typ` and `kid`. Returns `undefined` for any other token,
   * which is then jose's `jwtVerify`'s to judge.
   *
   * @throws jose's `JWSSignatureVerificationFailed` for a wrong MAC, and the errors of its
   *   claims validation (`JWTExpired`, `JWTClaimValidationFailed`, `JWTInvalid`) under `options`.
   */
  verify(token: string, options: JWTVerifyOptions): JWTPayload | undefined {
    const segments = token.split('.');
    if (segments.length !== 3) return undefined;
    const [header, payload, signature] = segments;
    const alg = plainHeaderAlgorithm(header);
    if (alg === undefined || !this.acceptedAlgorithms.includes(alg)) return undefined;
    const presented = canonicalBytes(signature);
    if (!presented) return undefined;
    const expected = this.mac(alg, `${header}.${payload}`);
    if (presented.length !== expected.length || !timingSafeEqual(presented, expected)) {
      throw new joseErrors.JWSSignatureVerificationFailed();
    }
    return UnsecuredJWT.decode(`${UNSECURED_HEADER}.${payload}.`, options).payload;
  }

  private mac(alg: string, signingInput: string): Buffer {
    return createHmac(`sha${alg.slice(2)}`, this.key)
      .update(signingInput)
      .digest();
  }
}
