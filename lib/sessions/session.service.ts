import { randomUUID } from 'node:crypto';
import { Inject, Injectable, Optional } from '@nestjs/common';
import type { EntityManager } from 'typeorm';
import { TokenCodec } from '../jwt/token-codec.js';
import { NO_METRICS, TokenResourceMetrics } from '../observability/token-resource-metrics.js';
import type { ResolvedTokenResourceOptions } from '../options/resolved-options.js';
import { RevocationCache } from '../revocation-cache/revocation.cache.js';
import { REVOCATION_PURPOSE } from '../token-resource.constants.js';
import { REFRESH_PURPOSE, SESSION_PURPOSE, TOKEN_RESOURCE_OPTIONS } from '../token-resource.internal-constants.js';
import { InvalidTokenError, RefreshTokenReusedError, TokenAlreadyRevokedError } from '../token-resource.exceptions.js';
import { TokenStore } from '../token.store.js';
import { checkJsonb, checkSubject } from '../validation/token-values.js';
import { isSessionId, SessionJtis, sessionRowJti, type SessionTokenKind } from './session-jtis.js';
import type { Rotation, SessionRow, SessionState, TokenTimes } from './session-state.js';
import { SessionStatements } from './session.statements.js';

/** Input of {@link SessionService.start}. */
export interface StartSessionInput {
  /** The JWT `sub` of every token of the session (see `TokenService.issueToken`). */
  subject: string;
  /**
   * Extra claims of every access token of the session, kept in the session's row.
   * `purpose`, `sub`, `sid`, `jti`, `iat` and `exp` are set by the service. Default: none.
   */
  claims?: Record<string, unknown>;
  /** What `list` shows of the session, for example the device or user agent. Default `null`. */
  extraData?: Record<string, unknown>;
  /**
   * Start it inside this manager's transaction (it must belong to the token table's data
   * source). Default: an autocommit statement.
   */
  manager?: EntityManager;
}

/** Options of {@link SessionService.refresh}. */
export interface RefreshSessionOptions {
  /**
   * Rotate inside this manager's transaction. Default: an autocommit statement. A detected
   * reuse revokes the session in a statement of its own, outside this transaction, so that
   * rolling it back cannot undo the revocation.
   */
  manager?: EntityManager;
}

/** What {@link SessionService.start} and {@link SessionService.refresh} return. */
export interface SessionTokens {
  /** The session's id, the `sid` claim of its tokens. */
  sessionId: string;
  /** A JWT of `authenticationPurpose`, for `Authorization: Bearer`; lives `sessions.accessTokenExpiresIn`. */
  accessToken: string;
  /** A JWT of purpose `'refresh'`, only for {@link SessionService.refresh}; lives `sessions.refreshTokenExpiresIn`. */
  refreshToken: string;
  /** The access token's `exp`. */
  accessExpiresAt: Date;
  /** The refresh token's `exp`: the session ends then unless refreshed. */
  refreshExpiresAt: Date;
}

/** A live session, as {@link SessionService.list} shows it. */
export interface SessionSummary {
  sessionId: string;
  createdAt: Date;
  /** When it was last refreshed; `createdAt` before its first refresh. */
  lastRefreshedAt: Date;
  /** When it ends unless refreshed: its current refresh token's `exp`. */
  expiresAt: Date;
  /** The `extraData` given to `start`, or `null`. */
  extraData: Record<string, unknown> | null;
}

/** The claims `start` leaves to the service. */
const RESERVED_CLAIMS = ['purpose', 'sub', 'sid', 'jti', 'iat', 'exp'];

/**
 * Sessions of a short-lived access token and a rotating refresh token, with reuse
 * detection. Each refresh revokes the refresh token it was given and returns a new pair of
 * the same session; a refresh token presented again after its rotation (outside
 * `sessions.reuseIntervalSeconds`) revokes the whole session and throws
 * `RefreshTokenReusedError`. Every token of a session carries its id as `sid`, and the
 * revoked-check reads the session's row with the token's own, so revoking a session
 * refuses all of its tokens, stored or not. README "Sessions" covers the design.
 */
@Injectable()
export class SessionService {
  private readonly statements = new SessionStatements(this.store);
  private jtis?: SessionJtis;

  constructor(
    @Inject(TOKEN_RESOURCE_OPTIONS) private readonly options: ResolvedTokenResourceOptions,
    private readonly codec: TokenCodec,
    private readonly store: TokenStore,
    private readonly cache: RevocationCache,
    @Optional() private readonly metrics: TokenResourceMetrics = NO_METRICS,
  ) {}

  /**
   * Starts a session for `subject`: stores the session and its refresh token, and returns
   * its first access and refresh tokens.
   *
   * @throws TypeError for a subject the token table cannot store (see `issueToken`), claims
   *   that are not an object or name a claim the service sets, or `claims`/`extraData` that
   *   `jsonb` refuses. Nothing is written.
   * @throws RangeError when the default `sessions.refreshTokenExpiresIn` (`'30d'`) exceeds
   *   `logOutEverywhere.markerLifetime` (a lifetime given explicitly fails the boot instead).
   * @throws TokenResourceConfigError when no signing key is configured.
   */
  async start(input: StartSessionInput): Promise<SessionTokens> {
    checkSubject(input?.subject);
    const claims = input.claims ?? null;
    if (claims !== null) {
      if (typeof claims !== 'object' || Array.isArray(claims)) throw new TypeError('claims must be an object');
      const reserved = RESERVED_CLAIMS.filter((claim) => claim in claims);
      if (reserved.length > 0) throw new TypeError(`claims must not set ${reserved.join(', ')}: the session sets them`);
      checkJsonb(claims, 'claims');
    }
    const extraData = input.extraData ?? null;
    checkJsonb(extraData, 'extraData');
    const { refreshTokenLifetimeSeconds } = this.options.sessions;
    const { markerLifetimeSeconds } = this.options.logOutEverywhere;
    if (refreshTokenLifetimeSeconds > markerLifetimeSeconds) {
      throw new RangeError(
        `sessions.refreshTokenExpiresIn (${refreshTokenLifetimeSeconds} s) exceeds logOutEverywhere.markerLifetime (${markerLifetimeSeconds} s): set sessions.refreshTokenExpiresIn to at most that, or raise markerLifetime.`,
      );
    }
    const sid = randomUUID();
    const now = Date.now();
    const state: SessionState = { ...this.timesFrom(now, 0), createdAt: now, claims, extraData };
    const { rows } = await this.store.execute<{ state: SessionState }>(
      this.statements.start,
      [
        sessionRowJti(sid),
        input.subject,
        state.refresh.exp,
        state,
        this.jti(sid, 'r', 0),
        this.jti(sid, 'a', 0),
        state.access.exp,
        this.options.authenticationPurpose,
        this.options.storeAllTokens,
      ],
      input.manager,
    );
    return this.pairOf(sid, input.subject, rows[0].state);
  }

  /**
   * Rotates a session: revokes `refreshToken` and returns a new pair of the same session.
   * Of any number of concurrent refreshes of one token exactly one rotates; the others are
   * repeats of a rotated token (below).
   *
   * A repeat of the immediately previous refresh token within `sessions.reuseIntervalSeconds`
   * of its rotation returns the same pair as the rotation did (identical tokens with an HMAC
   * key). Any other repeat of a rotated token is taken for theft: the whole session is
   * revoked, its refresh and access tokens, stored or not, including those its legitimate
   * holder got since.
   *
   * @throws InvalidTokenError for an untrusted or expired token, a token that is not a
   *   session's refresh token, or one of an unknown session. Nothing is written.
   * @throws TokenAlreadyRevokedError when the session was revoked (or logged out).
   * @throws RefreshTokenReusedError when the token had been rotated: the session is revoked.
   */
  async refresh(refreshToken: string, opts: RefreshSessionOptions = {}): Promise<SessionTokens> {
    const claims = await this.codec.verify(refreshToken);
    const presented = this.sessionJtis().read(claims.jti);
    if (claims.purpose !== REFRESH_PURPOSE || presented?.kind !== 'r' || claims.sid !== presented.sid) {
      throw new InvalidTokenError('not a refresh token of a session');
    }
    const { sid, generation } = presented;
    const subject = claims.sub!;
    const rotation = this.timesFrom(Date.now(), generation + 1);
    const { rows } = await this.store.execute<{ state: SessionState }>(
      this.statements.rotate,
      [
        sessionRowJti(sid),
        subject,
        claims.jti,
        generation,
        rotation,
        rotation.refresh.exp,
        this.jti(sid, 'r', rotation.generation),
        this.jti(sid, 'a', rotation.generation),
        rotation.access.exp,
        this.options.authenticationPurpose,
        this.options.storeAllTokens,
      ],
      opts.manager,
    );
    if (rows.length > 0) {
      this.cache.written({ kind: 'jti', key: claims.jti! }, opts.manager);
      return this.pairOf(sid, subject, rows[0].state);
    }
    return this.repeated(sid, subject, generation, opts.manager);
  }

  /**
   * Revokes session `sessionId`: its row and every stored token of it, so that all of its
   * tokens are refused (by the guard, `tokenRevoked`, `refresh`). A session already revoked,
   * ended or unknown is left as it is. The subject is not checked: an endpoint that lets a
   * user end a session must check that it is theirs (`list`).
   *
   * @throws TypeError for a `sessionId` that no session can have.
   */
  async revoke(sessionId: string): Promise<void> {
    if (!isSessionId(sessionId)) throw new TypeError(`'${String(sessionId)}' is not a session id`);
    await this.end(sessionId);
  }

  /**
   * The live sessions of `subject` (not revoked, not ended), newest first.
   *
   * @throws TypeError for a subject the token table cannot store.
   */
  async list(subject: string): Promise<SessionSummary[]> {
    checkSubject(subject);
    const { rows } = await this.store.execute<{ sid: string; state: SessionState; expires_at: Date }>(this.statements.list, [subject]);
    return rows.map(({ sid, state, expires_at }) => ({
      sessionId: sid,
      createdAt: new Date(state.createdAt),
      lastRefreshedAt: new Date(state.lastRefreshedAt),
      expiresAt: expires_at,
      extraData: state.extraData ?? null,
    }));
  }

  /**
   * A refresh token of generation `generation` that did not rotate: its session moved on,
   * was revoked, or is unknown. Judged on the session row as it is now.
   */
  private async repeated(sid: string, subject: string, generation: number, manager?: EntityManager): Promise<SessionTokens> {
    const row = (await this.store.execute<SessionRow>(this.statements.read, [sessionRowJti(sid)], manager)).rows[0];
    if (row === undefined || row.subject !== subject) throw new InvalidTokenError('the refresh token belongs to no known session');
    if (row.purpose === REVOCATION_PURPOSE) throw new TokenAlreadyRevokedError(`session ${sid} is revoked`);
    if (row.purpose !== SESSION_PURPOSE || row.state.generation < generation) {
      throw new InvalidTokenError('the refresh token belongs to no known session');
    }
    // Its session is live at its generation: the token alone was revoked (or the session ended).
    if (row.state.generation === generation) throw new TokenAlreadyRevokedError(`refresh token of session ${sid} is revoked`);
    const { reuseIntervalSeconds } = this.options.sessions;
    const racing = row.state.generation === generation + 1 && Date.now() - row.state.lastRefreshedAt <= reuseIntervalSeconds * 1000;
    if (racing) return this.pairOf(sid, subject, row.state);
    return this.reuseDetected(sid);
  }

  /**
   * The one place a reuse is detected: the session is revoked in autocommit, so that the
   * caller's transaction rolling back on the error cannot undo it.
   */
  private async reuseDetected(sid: string): Promise<never> {
    this.metrics.refreshReuseDetected();
    await this.end(sid);
    throw new RefreshTokenReusedError(`refresh token of session ${sid} was used again after its rotation; the session is revoked`);
  }

  /** The one place a session is revoked (by `revoke` or a detected reuse), in autocommit. */
  private async end(sid: string): Promise<void> {
    const { rows } = await this.store.execute<{ subject: string }>(this.statements.end, [sessionRowJti(sid), `${sid}.`]);
    if (rows.length === 0) return;
    this.cache.written({ kind: 'subject', key: rows[0].subject });
    this.metrics.revoked('session');
  }

  /** The token times of generation `generation`, issued at `nowMs`. */
  private timesFrom(nowMs: number, generation: number): Rotation {
    const { accessTokenLifetimeSeconds, refreshTokenLifetimeSeconds } = this.options.sessions;
    const times = (lifetime: number): TokenTimes => ({ iat: nowMs, exp: Math.floor(nowMs / 1000 + lifetime) });
    return { generation, lastRefreshedAt: nowMs, access: times(accessTokenLifetimeSeconds), refresh: times(refreshTokenLifetimeSeconds) };
  }

  /** Signs the current pair of a session from its stored state: the same state always gives the same claims. */
  private async pairOf(sid: string, subject: string, state: SessionState): Promise<SessionTokens> {
    const { generation, access, refresh } = state;
    const [accessToken, refreshToken] = await Promise.all([
      this.codec.sign({
        ...state.claims,
        purpose: this.options.authenticationPurpose,
        sub: subject,
        sid,
        jti: this.jti(sid, 'a', generation),
        iat: access.iat / 1000,
        exp: access.exp,
      }),
      this.codec.sign({
        purpose: REFRESH_PURPOSE,
        sub: subject,
        sid,
        jti: this.jti(sid, 'r', generation),
        iat: refresh.iat / 1000,
        exp: refresh.exp,
      }),
    ]);
    return {
      sessionId: sid,
      accessToken,
      refreshToken,
      accessExpiresAt: new Date(access.exp * 1000),
      refreshExpiresAt: new Date(refresh.exp * 1000),
    };
  }

  private jti(sid: string, kind: SessionTokenKind, generation: number): string {
    return this.sessionJtis().make(sid, kind, generation);
  }

  /** Made on first use: an application that only verifies tokens has no key to derive from. */
  private sessionJtis(): SessionJtis {
    return (this.jtis ??= new SessionJtis(this.codec.derivedKey('nestjs-token-resource session jti')));
  }
}
