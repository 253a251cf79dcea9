import type { TokenResourceJwtOptions } from '../interfaces/token-resource-options.interface.js';
import { DEFAULT_OPTIONS } from './defaults.js';
import { atLeast, fail } from './option-checks.js';

/** The jwt options once checked; for a secret, `algorithms` holds the HMAC ones it is long enough for. */
export type ResolvedJwtOptions = TokenResourceJwtOptions & { clockToleranceSeconds: number };

const HMAC_ALGORITHMS = ['HS256', 'HS384', 'HS512'];

/** RFC 7518 §3.2: an HMAC key must be at least as long as its hash's output. */
const HMAC_KEY_BYTES: Record<string, number> = { HS256: 32, HS384: 48, HS512: 64 };

/** The bytes of `jwt.secret`. */
export function secretBytes(secret: string | Uint8Array): Uint8Array {
  return typeof secret === 'string' ? new TextEncoder().encode(secret) : secret;
}

/**
 * The configured algorithms, checked against what the key can do, or every one it can
 * do when none were configured. The codec calls it too, for keys it has to import first.
 */
export function acceptedAlgorithms(configured: string[] | undefined, possible: string[], keyOption: string): string[] {
  if (configured === undefined) return possible;
  const wrong = configured.filter((alg) => !possible.includes(alg));
  if (wrong.length > 0)
    fail(`jwt.algorithms ${JSON.stringify(wrong)} cannot be used with ${keyOption}; it supports ${possible.join(', ')}.`);
  return configured;
}

/**
 * The HMAC algorithms a secret is long enough for: by default those it suffices for;
 * when they were configured, all of them or a config error.
 */
function hmacAlgorithms(secret: Uint8Array, configured: string[] | undefined): string[] {
  const candidates = acceptedAlgorithms(configured, HMAC_ALGORITHMS, 'jwt.secret');
  const strong = candidates.filter((alg) => secret.length >= HMAC_KEY_BYTES[alg]);
  const weak = candidates.filter((alg) => !strong.includes(alg));
  if (strong.length === 0 || (configured !== undefined && weak.length > 0)) {
    fail(
      `jwt.secret is ${secret.length} bytes, too short for ${weak.join(', ')}: an HMAC key must be at least as long as its hash (RFC 7518 §3.2), 32 bytes for HS256, 48 for HS384, 64 for HS512. Use a longer random secret (for example \`openssl rand -base64 64\`)${configured ? ' or leave those algorithms out of jwt.algorithms' : ''}.`,
    );
  }
  return strong;
}

function checkJwksUri(jwksUri: unknown): void {
  let url: URL;
  try {
    url = new URL(jwksUri as string);
  } catch {
    fail(`jwt.jwksUri must be an absolute URL, got ${JSON.stringify(jwksUri)}.`);
  }
  // jose fetches the JWKS with fetch(); any other scheme would only fail at the first request.
  if (url.protocol !== 'https:' && url.protocol !== 'http:') fail(`jwt.jwksUri must be an http(s) URL, got ${JSON.stringify(jwksUri)}.`);
}

/**
 * Checks everything about `jwt` that needs no key import: one key source, the secret's
 * length for its algorithms, the algorithm list, the JWKS URL. Public and private keys
 * are read, and checked against each other and the algorithms, by `TokenCodec`.
 */
export function resolveJwtOptions(jwt: TokenResourceJwtOptions | undefined): ResolvedJwtOptions {
  if (!jwt || typeof jwt !== 'object') fail('the jwt option is required: set exactly one of jwt.secret, jwt.publicKey or jwt.jwksUri.');
  const { secret, publicKey, jwksUri, privateKey, algorithms } = jwt;
  const sources = [
    secret !== undefined && 'jwt.secret',
    publicKey !== undefined && 'jwt.publicKey',
    jwksUri !== undefined && 'jwt.jwksUri',
  ].filter(Boolean);
  if (sources.length !== 1) {
    fail(
      sources.length === 0
        ? 'set exactly one verification key: jwt.secret (HMAC), jwt.publicKey (PEM or JWK) or jwt.jwksUri.'
        : `set exactly one verification key, not ${sources.join(' and ')}.`,
    );
  }
  if (algorithms !== undefined) {
    if (!Array.isArray(algorithms) || algorithms.length === 0)
      fail('jwt.algorithms must be a non-empty array, or left out to accept every algorithm of the key.');
    if (algorithms.some((alg) => String(alg).toLowerCase() === 'none'))
      fail("jwt.algorithms must not contain 'none': unsigned tokens are never accepted.");
  }
  const clockToleranceSeconds =
    atLeast(jwt.clockToleranceSeconds, 0, 'jwt.clockToleranceSeconds') ?? DEFAULT_OPTIONS.jwt.clockToleranceSeconds;
  if (jwksUri !== undefined) checkJwksUri(jwksUri);
  if (secret === undefined) return { ...jwt, clockToleranceSeconds };
  if (privateKey !== undefined) fail('jwt.privateKey cannot be combined with jwt.secret; an HMAC secret both signs and verifies.');
  if ((typeof secret !== 'string' && !(secret instanceof Uint8Array)) || secret.length === 0) {
    fail('jwt.secret must be a non-empty string or Uint8Array.');
  }
  return { ...jwt, clockToleranceSeconds, algorithms: hmacAlgorithms(secretBytes(secret), algorithms) };
}
