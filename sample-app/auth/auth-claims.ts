import type { TokenClaimsPayload } from '../../lib/index.js';

/** The claims every authenticated request carries (the guard requires `jti` and `sub`). */
export interface SessionClaims {
  sub: string;
  jti: string;
  /** The session of the token (every login token is a session's). */
  sid: string;
  exp: number;
  iat?: number;
}

/** Narrows the guard's verified payload to {@link SessionClaims}. */
export function sessionClaims(claims: TokenClaimsPayload): SessionClaims {
  return { sub: String(claims.sub), jti: String(claims.jti), sid: String(claims.sid), exp: Number(claims.exp), iat: claims.iat };
}
