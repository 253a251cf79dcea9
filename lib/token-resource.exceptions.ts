/** Base class of every error thrown by nestjs-token-resource. */
export class TokenResourceError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = new.target.name;
  }
}

/**
 * The token is malformed, unsigned (`alg: none`), forged, expired where an unexpired
 * token is needed, issued for another issuer or audience, or lacks a required claim.
 * Nothing was written.
 */
export class InvalidTokenError extends TokenResourceError {}

/** The token (or `jti`) was already revoked; every concurrent revoke but one gets this. */
export class TokenAlreadyRevokedError extends TokenResourceError {}

/** The module options are wrong; the message says which option and how to fix it. */
export class TokenResourceConfigError extends TokenResourceError {}

/**
 * A dependency (the token store, or the remote JWKS) could not answer in time. Revocation
 * state is unknown, so callers must fail closed: the guard answers `503`, never admits.
 */
export class TokenResourceUnavailableError extends TokenResourceError {}

/**
 * A refresh token that was already rotated was presented again (outside
 * `sessions.reuseIntervalSeconds`): it was probably stolen. Its whole session, every
 * refresh and access token of it, was revoked before this was thrown; the subject's other
 * sessions are untouched.
 */
export class RefreshTokenReusedError extends TokenResourceError {}
