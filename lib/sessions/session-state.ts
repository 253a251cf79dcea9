/** When one token of a session was issued and expires. */
export interface TokenTimes {
  /** `iat` in milliseconds since the epoch (the claim keeps them: `iat / 1000`). */
  iat: number;
  /** `exp` in whole seconds since the epoch. */
  exp: number;
}

/**
 * What a session's row keeps in `extra_data`: enough to sign the current pair again,
 * identical with an HMAC key, without storing either token.
 */
export interface SessionState {
  /** How many times the session was refreshed; its current tokens are of this generation. */
  generation: number;
  /** Milliseconds since the epoch. */
  createdAt: number;
  /** Milliseconds since the epoch of the latest rotation (`createdAt` before the first). */
  lastRefreshedAt: number;
  /** The current access token. */
  access: TokenTimes;
  /** The current refresh token. */
  refresh: TokenTimes;
  /** The claims `start` was given, copied into every access token of the session. */
  claims: Record<string, unknown> | null;
  /** The `extraData` `start` was given, for `list`. */
  extraData: Record<string, unknown> | null;
}

/** What a rotation changes in a {@link SessionState}. */
export type Rotation = Pick<SessionState, 'generation' | 'lastRefreshedAt' | 'access' | 'refresh'>;

/** A session row as `SessionStatements.read` returns it. */
export interface SessionRow {
  purpose: string;
  subject: string;
  state: SessionState;
}
