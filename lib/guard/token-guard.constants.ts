/** Metadata key set by {@link SkipTokenCheck}. */
export const SKIP_TOKEN_CHECK_KEY = 'nestjs-token-resource:skip-token-check';

/**
 * Property of the HTTP request on which {@link RevokedTokenGuard} leaves the verified JWT
 * payload (`request.tokenClaims`), for `@TokenClaims()`, interceptors and pipes; also of the
 * object a subclass's `getRequest` returns in contexts other than RPC and WebSockets. For RPC
 * calls and WebSocket messages the claims are on no object (see `TokenClaims`): read them with
 * `@TokenClaims()` or `getTokenClaims(context)`.
 */
export const TOKEN_CLAIMS_KEY = 'tokenClaims';

/** The short reasons the guard gives in its `401` and `503` error bodies. */
export const TOKEN_GUARD_MESSAGES = {
  missingToken: 'missing bearer token',
  invalidToken: 'invalid token',
  expired: 'token expired',
  notYetValid: 'token not yet valid',
  wrongIssuer: 'wrong token issuer',
  wrongAudience: 'wrong token audience',
  missingClaims: 'token lacks jti or sub',
  wrongPurpose: 'token not for authentication',
  revoked: 'token revoked',
  notRecognised: 'token not recognised',
  storeUnavailable: 'token store unavailable',
  keysUnavailable: 'token keys unavailable',
} as const;
