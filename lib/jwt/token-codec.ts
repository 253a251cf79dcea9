import {
  createHmac,
  createPrivateKey,
  createPublicKey,
  sign as cryptoSign,
  verify as cryptoVerify,
  webcrypto,
  type JsonWebKey,
  type KeyObject,
} from 'node:crypto';
import {
  createRemoteJWKSet,
  errors as joseErrors,
  jwtVerify,
  SignJWT,
  type JWK,
  type JWTPayload,
  type JWTVerifyGetKey,
  type JWTVerifyOptions,
} from 'jose';
import { fail } from '../options/option-checks.js';
import { acceptedAlgorithms, secretBytes, type ResolvedJwtOptions } from '../options/validate-jwt.js';
import { InvalidTokenError, TokenResourceUnavailableError } from '../token-resource.exceptions.js';
import { checkVerifiedClaims } from '../validation/token-values.js';
import { HmacJwt } from './hmac-jwt.js';
import { VerifiedTokens } from './verified-tokens.js';

const RSA_ALGORITHMS = ['RS256', 'RS384', 'RS512', 'PS256', 'PS384', 'PS512'];
const EC_ALGORITHMS: Record<string, string> = { prime256v1: 'ES256', secp384r1: 'ES384', secp521r1: 'ES512' };
const EDDSA_ALGORITHMS = ['EdDSA', 'Ed25519'];
const ASYMMETRIC_ALGORITHMS = [...RSA_ALGORITHMS, ...Object.values(EC_ALGORITHMS), ...EDDSA_ALGORITHMS];

/** The verified claims of a JWT. */
export type TokenClaimsPayload = JWTPayload & Record<string, unknown>;

function algorithmsOfKey(key: KeyObject, option: string): string[] {
  switch (key.asymmetricKeyType) {
    case 'rsa':
      return RSA_ALGORITHMS;
    case 'rsa-pss':
      return RSA_ALGORITHMS.filter((alg) => alg.startsWith('PS'));
    case 'ec': {
      const alg = EC_ALGORITHMS[key.asymmetricKeyDetails?.namedCurve ?? ''];
      return alg ? [alg] : fail(`${option} uses an unsupported EC curve; use P-256, P-384 or P-521.`);
    }
    case 'ed25519':
      return EDDSA_ALGORITHMS;
    default:
      return fail(`${option} is a ${key.asymmetricKeyType ?? 'symmetric'} key; use an RSA, EC (P-256/384/521) or Ed25519 key.`);
  }
}

function importKey(material: string | JWK, kind: 'public' | 'private', option: string): KeyObject {
  try {
    const input = typeof material === 'string' ? material : { key: material as JsonWebKey, format: 'jwk' as const };
    return kind === 'public' ? createPublicKey(input) : createPrivateKey(input);
  } catch (error) {
    const expected = kind === 'public' ? 'a PEM (SPKI) public key or a public JWK' : 'a PEM (PKCS#8) private key or a private JWK';
    fail(`${option} could not be read (${(error as Error).message}); give ${expected}.`, error);
  }
}

/** Whether a private key signs what a public key verifies; checked once at start-up. */
function keysArePair(privateKey: KeyObject, publicKey: KeyObject): boolean {
  const probe = Buffer.from('nestjs-token-resource key pair probe');
  // Ed25519 signs the message itself; RSA and EC sign a digest.
  const digest = privateKey.asymmetricKeyType === 'ed25519' ? null : 'sha256';
  try {
    return cryptoVerify(digest, probe, publicKey, cryptoSign(digest, probe, privateKey));
  } catch {
    return false;
  }
}

/**
 * The verification key of an HMAC secret, as a key resolver that imports the secret once
 * per HMAC algorithm: given the bare `Uint8Array`, jose would import it into a WebCrypto
 * key on every verification. jose calls the resolver only after it has checked the
 * header's `alg` against the accepted algorithms, all `HS*`.
 */
function hmacVerifyKeys(secret: Uint8Array): JWTVerifyGetKey {
  // Once imported, a key is handed back as it is rather than as a promise: jose awaits
  // whatever the resolver returns, and a settled value costs it less than a promise.
  const keys = new Map<string, webcrypto.CryptoKey | Promise<webcrypto.CryptoKey>>();
  return ({ alg }) => {
    let key = keys.get(alg);
    if (!key) {
      const importing = webcrypto.subtle.importKey('raw', secret, { name: 'HMAC', hash: `SHA-${alg.slice(2)}` }, false, ['verify']);
      keys.set(alg, importing);
      importing.then(
        (imported) => keys.set(alg, imported),
        () => keys.delete(alg),
      );
      key = importing;
    }
    return key;
  };
}

/**
 * Verifies and signs JWTs with `jose` according to the module's jwt options. Key
 * material is imported once, at start-up, so a bad key fails the application boot
 * rather than the first request.
 */
export class TokenCodec {
  private readonly verifyKey: Uint8Array | KeyObject | JWTVerifyGetKey;
  private readonly algorithms: string[];
  private readonly signKey?: Uint8Array | KeyObject;
  private readonly signAlgorithm?: string;
  /** Signs and verifies with the secret when there is one, without jose's WebCrypto hop. */
  private readonly hmac?: HmacJwt;
  /** jose's options for every verification, built on first use. */
  private verifyOptions?: JWTVerifyOptions;
  /** Tokens verified before, answered without a signature check; none with a remote JWKS or when off. */
  private readonly verified?: VerifiedTokens;

  /**
   * @param options jwt options checked by `resolveOptions`; key material is read here.
   * @param maxVerifiedTokens how many verified tokens to remember (see {@link VerifiedTokens});
   *   `0`, the default, remembers none. Ignored with `jwksUri`: a key the JWKS drops must stop
   *   verifying the tokens it signed, and a remembered token would still pass.
   */
  constructor(
    private readonly options: ResolvedJwtOptions,
    maxVerifiedTokens = 0,
  ) {
    const { secret, publicKey, jwksUri, privateKey, algorithms } = options;
    if (maxVerifiedTokens > 0 && jwksUri === undefined)
      this.verified = new VerifiedTokens(maxVerifiedTokens, options.clockToleranceSeconds);
    if (secret !== undefined) {
      const bytes = secretBytes(secret);
      this.verifyKey = hmacVerifyKeys(bytes);
      this.algorithms = algorithms!;
      this.signKey = bytes;
      this.signAlgorithm = this.algorithms[0];
      this.hmac = new HmacJwt(bytes, this.signAlgorithm, this.algorithms);
      return;
    }
    if (publicKey !== undefined) {
      const key = importKey(publicKey, 'public', 'jwt.publicKey');
      this.verifyKey = key;
      this.algorithms = acceptedAlgorithms(algorithms, algorithmsOfKey(key, 'jwt.publicKey'), 'jwt.publicKey');
    } else {
      this.verifyKey = createRemoteJWKSet(new URL(jwksUri!));
      this.algorithms = acceptedAlgorithms(algorithms, ASYMMETRIC_ALGORITHMS, 'jwt.jwksUri');
    }
    if (privateKey !== undefined) {
      const key = importKey(privateKey, 'private', 'jwt.privateKey');
      const usable = algorithmsOfKey(key, 'jwt.privateKey').filter((alg) => this.algorithms.includes(alg));
      if (usable.length === 0) fail(`jwt.privateKey cannot sign any of the accepted algorithms ${this.algorithms.join(', ')}.`);
      // With a publicKey the verify key is a KeyObject; a JWKS's keys are unknown until fetched.
      if (publicKey !== undefined && !keysArePair(key, this.verifyKey as KeyObject)) {
        fail(
          'jwt.privateKey is not the private half of jwt.publicKey: every token issueToken signs would fail verification. Give the matching key pair.',
        );
      }
      this.signKey = key;
      this.signAlgorithm = usable[0];
    }
  }

  /**
   * Verifies the signature and the configured issuer, audience and time claims, and that
   * the claims can be stored as they are: a `jti` or `sub` that is well-formed, without NUL
   * and within its length limit, an `exp` before the year 10000, an `iat` no later than
   * now plus `clockToleranceSeconds`. A token that passed all of this before is answered
   * from memory when the codec remembers verified tokens, its time claims judged again.
   *
   * @param allowExpired accept a token whose `exp` has passed (every other check still applies).
   * @throws InvalidTokenError when the token cannot be trusted.
   * @throws TokenResourceUnavailableError when the remote JWKS cannot be fetched.
   */
  verify(token: string, allowExpired = false): Promise<TokenClaimsPayload> {
    if (typeof token !== 'string' || token.length === 0) return Promise.reject(new InvalidTokenError('token must be a non-empty string'));
    const remembered = this.verified?.claimsOf(token);
    if (remembered !== undefined) return Promise.resolve(remembered);
    // Written with then() rather than async/await: it runs on every request, and each
    // extra async frame shows in bench:check.
    this.verifyOptions ??= {
      algorithms: this.algorithms,
      issuer: this.options.issuer,
      audience: this.options.audience,
      clockTolerance: this.options.clockToleranceSeconds,
      // A token without `exp` could be admitted but never revoked: its revocation row
      // would have no expiry to keep it until.
      requiredClaims: ['exp'],
    };
    if (this.hmac) {
      let payload: JWTPayload | undefined;
      try {
        payload = this.hmac.verify(token, this.verifyOptions);
      } catch (error) {
        return new Promise((resolve) => resolve(this.untrusted(error, allowExpired)));
      }
      if (payload) return new Promise((resolve) => resolve(this.trusted(token, payload)));
    }
    return jwtVerify(token, this.verifyKey as Uint8Array, this.verifyOptions).then(
      ({ payload }) => this.trusted(token, payload),
      (error: unknown) => this.untrusted(error, allowExpired),
    );
  }

  /** How many verified tokens the codec remembers at the moment. */
  get verifiedTokenCount(): number {
    return this.verified?.size ?? 0;
  }

  /** The claims of a token jose verified, remembered once they are also fit to be stored. */
  private trusted(token: string, payload: JWTPayload): TokenClaimsPayload {
    const claims = this.storable(payload);
    this.verified?.remember(token);
    return claims;
  }

  /** Verified claims, once their `jti`, `sub`, `exp` and `iat` are fit to be stored and compared (see `checkVerifiedClaims`). */
  private storable(payload: JWTPayload): TokenClaimsPayload {
    checkVerifiedClaims(payload, Date.now(), this.options.clockToleranceSeconds);
    return payload;
  }

  /** What a failed verification means: the claims of an expired token, when accepted, or the error to throw. */
  private untrusted(error: unknown, allowExpired: boolean): TokenClaimsPayload {
    // jose checks `exp` last, after the signature, issuer, audience and `nbf`.
    if (allowExpired && error instanceof joseErrors.JWTExpired && error.claim === 'exp') {
      return this.storable(error.payload);
    }
    // A JWKS that cannot be fetched says nothing about the token: fail closed as
    // unavailable. jose throws its generic JOSEError (code ERR_JOSE_GENERIC) only for a
    // non-200 or non-JSON JWKS response, and non-jose errors for network failures.
    const jwksFetchFailed =
      error instanceof joseErrors.JWKSTimeout || !(error instanceof joseErrors.JOSEError) || error.code === joseErrors.JOSEError.code;
    if (this.options.jwksUri && jwksFetchFailed) {
      throw new TokenResourceUnavailableError(`the JWKS at ${this.options.jwksUri} could not be fetched`, { cause: error });
    }
    throw new InvalidTokenError(describeJoseError(error), { cause: error });
  }

  /**
   * Signs a payload with the configured secret or private key.
   *
   * @throws TokenResourceConfigError when no signing key is configured.
   */
  async sign(payload: JWTPayload): Promise<string> {
    if (!this.signKey || !this.signAlgorithm) {
      fail('issueToken needs a signing key: set jwt.secret or jwt.privateKey.');
    }
    const { issuer, audience } = this.options;
    let claims = payload;
    if (issuer !== undefined) claims = { ...claims, iss: issuer };
    if (audience !== undefined) claims = { ...claims, aud: audience };
    if (this.hmac) return this.hmac.sign(claims);
    return new SignJWT(claims).setProtectedHeader({ alg: this.signAlgorithm, typ: 'JWT' }).sign(this.signKey);
  }

  /**
   * A key for `label`, derived from the signing key (HMAC-SHA256 of the label under it): as
   * secret as the signing key and rotated with it, yet never usable to sign a token.
   *
   * @throws TokenResourceConfigError when no signing key is configured.
   */
  derivedKey(label: string): Buffer {
    if (!this.signKey) fail('issuing tokens needs a signing key: set jwt.secret or jwt.privateKey.');
    return createHmac('sha256', keyBytes(this.signKey)).update(label).digest();
  }
}

/** The bytes of a signing key, for deriving keys of other uses from it. */
function keyBytes(key: Uint8Array | KeyObject): Uint8Array {
  return key instanceof Uint8Array ? key : key.export({ format: 'der', type: 'pkcs8' });
}

function describeJoseError(error: unknown): string {
  if (error instanceof joseErrors.JWTExpired) return 'token expired';
  if (error instanceof joseErrors.JWTClaimValidationFailed) return `token claim check failed: ${error.claim}`;
  if (error instanceof joseErrors.JWSSignatureVerificationFailed) return 'token signature is invalid';
  if (error instanceof joseErrors.JOSEAlgNotAllowed) return 'token algorithm is not allowed';
  if (error instanceof joseErrors.JWKSNoMatchingKey) return 'no key matches the token';
  return 'token is malformed';
}
