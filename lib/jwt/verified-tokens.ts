import { base64url, type JWTPayload } from 'jose';
import { issuedInFuture } from '../validation/token-values.js';

/**
 * The longest token remembered, in characters. A verified compact JWT is ASCII, so this
 * bounds what one entry holds; longer tokens are verified every time.
 */
export const MAX_REMEMBERED_TOKEN_LENGTH = 4096;

/** jose's own decoding of a JWT payload: a fatal UTF-8 decoder (a leading BOM is skipped). */
const utf8 = new TextDecoder('utf-8', { fatal: true });

/**
 * Tokens whose full verification succeeded, by their exact string, with the JSON text of
 * their claims, so that presenting one of them again costs no signature check.
 *
 * Why an answer is the one a full verification would give now: the key is the whole token,
 * so any other string (another signature, payload or header, a single character changed) is
 * a miss and is verified in full. Signature, algorithm, issuer, audience and the storability
 * of the claims depend only on that string and on key material and options that are fixed
 * for the codec's lifetime (a remote JWKS is not: its codec keeps no such set). What depends
 * on the clock is judged again on every hit, as jose and `checkVerifiedClaims` judge it:
 * `exp`, `nbf` and `iat` against now and the clock tolerance. A hit that fails one of them
 * drops the entry and the token is verified in full, which gives the exact error. Failed
 * verifications are never remembered.
 *
 * Every hit parses the claims afresh: callers (the guard's `request.tokenClaims`) may change
 * the object they get, and must not change the next caller's.
 *
 * Bounded by `maxTokens` and {@link MAX_REMEMBERED_TOKEN_LENGTH}; the oldest entry goes first,
 * and a hit moves nothing (moving would cost a delete and an insert per hit).
 */
export class VerifiedTokens {
  private readonly payloads = new Map<string, string>();

  /**
   * @param maxTokens how many tokens to keep, at least 1.
   * @param clockToleranceSeconds the codec's `clockToleranceSeconds`.
   */
  constructor(
    private readonly maxTokens: number,
    private readonly clockToleranceSeconds: number,
  ) {}

  /** How many tokens are held. */
  get size(): number {
    return this.payloads.size;
  }

  /**
   * A fresh copy of the claims of `token`, if it was verified before and its time claims
   * still pass at this moment; else `undefined` (verify it in full).
   */
  claimsOf(token: string): JWTPayload | undefined {
    const text = this.payloads.get(token);
    if (text === undefined) return undefined;
    const claims = JSON.parse(text) as JWTPayload;
    if (this.timely(claims)) return claims;
    this.payloads.delete(token);
    return undefined;
  }

  /** Remembers `token`, which has just passed a full verification (signature and every claim check). */
  remember(token: string): void {
    if (token.length > MAX_REMEMBERED_TOKEN_LENGTH || this.payloads.has(token)) return;
    // A substring keeps the whole string it was cut from alive: the key is a copy of its own.
    // A verified token is ASCII, which this copies exactly; anything else stays unremembered.
    const key = Buffer.from(token, 'latin1').toString('latin1');
    if (key !== token) return;
    // The same bytes and the same decoding jose parsed the verified claims from.
    const text = utf8.decode(base64url.decode(token.split('.')[1]));
    if (this.payloads.size >= this.maxTokens) this.payloads.delete(this.payloads.keys().next().value!);
    this.payloads.set(key, text);
  }

  /** jose's `exp` and `nbf` checks (whole seconds, clock tolerance) and the library's `iat` check, at this moment. */
  private timely({ exp, nbf, iat }: JWTPayload): boolean {
    const nowMs = Date.now();
    const now = Math.floor(nowMs / 1000);
    const tolerance = this.clockToleranceSeconds;
    return (
      typeof exp === 'number' &&
      exp > now - tolerance &&
      (nbf === undefined || nbf <= now + tolerance) &&
      !issuedInFuture(iat, nowMs, tolerance)
    );
  }
}
