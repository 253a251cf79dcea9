import { randomUUID } from 'node:crypto';
import { Inject, Injectable, Optional } from '@nestjs/common';
import { In, MoreThan, MoreThanOrEqual, Not, type EntityManager, type FindOptionsWhere } from 'typeorm';
import type { Token } from './entities/token.entity.js';
import { ExpiredTokenDeleter, type ExpungeExpiredOptions } from './expunger/expired-token.deleter.js';
import { durationToSeconds } from './jwt/duration.js';
import { TokenCodec, type TokenClaimsPayload } from './jwt/token-codec.js';
import { NO_METRICS, TokenResourceMetrics } from './observability/token-resource-metrics.js';
import type { RevocationKind } from './observability/metric-names.js';
import { logOutMarkerJti, logOutMarkerRevokes, type LogOutMarker } from './log-out-everywhere/log-out-marker.js';
import type { ResolvedTokenResourceOptions } from './options/resolved-options.js';
import { RevocationCache, type CachedOwnRow } from './revocation-cache/revocation.cache.js';
import { REVOCATION_PURPOSE } from './token-resource.constants.js';
import {
  DEFAULT_AUTHENTICATION_PURPOSE,
  DEFAULT_CONFIRM_PURPOSE,
  DEFAULT_EXPIRES_IN,
  EXPUNGE_RECORD_PURPOSE,
  EXPUNGER_JTI_PREFIX,
  LOG_OUT_EVERYWHERE_JTI_PREFIX,
  LOG_OUT_EVERYWHERE_PURPOSE,
  REFRESH_PURPOSE,
  SESSION_JTI_PREFIX,
  SESSION_PURPOSE,
  TOKEN_RESOURCE_OPTIONS,
} from './token-resource.internal-constants.js';
import { isSessionId, sessionRowJti } from './sessions/session-jtis.js';
import { InvalidTokenError, TokenAlreadyRevokedError } from './token-resource.exceptions.js';
import { TokenStore, type OwnStateRow, type TokenStateRow } from './token.store.js';
import { checkExpiresAt, checkJsonb, checkJti, checkPurpose, checkSubject, expiryOfExp } from './validation/token-values.js';

export type { ExpungeExpiredOptions } from './expunger/expired-token.deleter.js';

/** Input of {@link TokenService.issueToken}. */
export interface IssueTokenInput {
  /** The JWT `sub`: a non-empty, well-formed string without NUL, at most 1024 bytes of UTF-8. */
  subject: string;
  /** Purpose of the stored row, at most 255 bytes of UTF-8. Default `'user'`. */
  purpose?: string;
  /** Seconds from now, or a duration string such as `'15m'` or `'7d'`. Default `'7d'`. */
  expiresIn?: string | number;
  /** Extra claims; `purpose`, `sub`, `jti`, `iat` and `exp` are set by the service. */
  claims?: Record<string, unknown>;
  /** Stored in the row's `extraData` when the token is stored. */
  extraData?: Record<string, unknown>;
}

/** What {@link TokenService.issueToken} returns. */
export interface IssuedToken {
  /** The signed JWT, to hand to the client. It is never stored. */
  token: string;
  /** Its random `jti` (a UUID), the key of its row and of its revocation. */
  jti: string;
  /** Its `exp` as a date (whole seconds). */
  expiresAt: Date;
}

/** Input of {@link TokenService.storeToken}. */
export interface StoreTokenInput {
  /** The JWT; verified, and its `jti`, `sub` and `exp` become the row's key, subject and expiry. */
  token: string;
  /** Purpose of the row, for example `'user'` or `'confirm'`; not `'revocation'`. */
  purpose: string;
  /** Stored in the row's `extraData`. Default `null`. */
  extraData?: Record<string, unknown>;
}

/** Query of {@link TokenService.getToken}: `jti` or `token` is required. */
export interface GetTokenQuery {
  /** A JWT, verified first; its `jti` is looked up. Wins over `jti`. */
  token?: string;
  /** The `jti` to look up. */
  jti?: string;
  /** Only a row of this purpose. Default: any purpose. */
  purpose?: string;
}

/** Options of {@link TokenService.revoke}. */
export interface RevokeOptions {
  /**
   * Revoke inside this manager's transaction; it must belong to the token table's data
   * source. Default: an autocommit statement on the pool.
   */
  manager?: EntityManager;
}

/** Options of {@link TokenService.revokeJti}. */
export interface RevokeJtiOptions extends RevokeOptions {
  /**
   * When the revocation row may be expunged: pass the token's `exp` (a valid Date from 1970
   * to the end of 9999, kept rounded up to the second). Default: a stored row keeps its own
   * expiry; a new row gets `logOutEverywhere.markerLifetime` from now, the longest lifetime
   * `issueToken` allows. A stored row's expiry is never shortened.
   */
  expiresAt?: Date;
}

/** Input of {@link TokenService.storeConfirmationChanges}. */
export interface StoreConfirmationChangesInput {
  /** The confirmation JWT (verified); the changes are kept on its `jti` until its `exp`. */
  token: string;
  /** What to apply once the token is confirmed, for example `{ email: 'new@example.com' }`. */
  changes: Record<string, unknown>;
  /** Default `'confirm'`. */
  purpose?: string;
}

/** Options of {@link TokenService.listTokens}. */
export interface ListTokensOptions {
  /** Only rows of this purpose. Default: every purpose except the internal marker and session rows. */
  purpose?: string;
  /** Also list rows whose `expiresAt` has passed. Default `false`. */
  includeExpired?: boolean;
}

/** The verdict of one store check for a verified token. */
export interface TokenCheck {
  /** A revocation row, or a log-out everywhere at or after the token's `iat`. */
  revoked: boolean;
  /** A stored, unexpired row of the authentication purpose exists. */
  presentForAuthentication: boolean;
}

function requireString(claims: TokenClaimsPayload, claim: 'jti' | 'sub'): string {
  const value = claims[claim];
  if (typeof value !== 'string' || value === '') throw new InvalidTokenError(`token has no ${claim} claim`);
  return value;
}

function expiryOf(claims: TokenClaimsPayload): Date {
  if (typeof claims.exp !== 'number') throw new InvalidTokenError('token has no exp claim');
  return expiryOfExp(claims.exp);
}

/** What the revocation cache keeps of a token's own row just read; `null` when it had none. */
function cachedOwnRow(row: OwnStateRow | undefined): CachedOwnRow | null {
  return row === undefined ? null : { purpose: row.purpose, expiresMs: row.expires_ms };
}

/**
 * Refuses to write a token row over a log-out-everywhere marker: overwriting a subject's
 * marker (say through a "revoke session by id" endpoint) would un-revoke every unstored
 * token it covers. Nor over the expunger's run record, which would stop or repeat runs.
 */
function rejectMarkerJti(jti: string): void {
  if (jti.startsWith(LOG_OUT_EVERYWHERE_JTI_PREFIX)) {
    throw new InvalidTokenError(`jti '${jti}' is reserved for log-out-everywhere markers`);
  }
  if (isExpungerJti(jti)) {
    throw new InvalidTokenError(`jti '${jti}' is reserved for the expunger's run record`);
  }
  if (jti.startsWith(SESSION_JTI_PREFIX)) {
    throw new InvalidTokenError(`jti '${jti}' is reserved for session rows`);
  }
}

/** The expunger's own rows are no token's, and the service never returns them (its subject, `''`, keeps it out of listings). */
function isExpungerJti(jti: string): boolean {
  return jti.startsWith(EXPUNGER_JTI_PREFIX);
}

/**
 * Issues JWTs and keeps what is known about them: stored tokens, revocations and
 * confirmation changes. Every method that takes a token verifies it first and writes
 * nothing for a token it cannot trust.
 */
@Injectable()
export class TokenService {
  /** The subject and purpose of a `jti`'s row, read only when a revocation wrote nothing, to say why. */
  private readonly ownerOf = this.store.statement(
    'token_owner',
    `
    SELECT subject, purpose FROM ${this.store.table} WHERE jti = $1`,
  );

  constructor(
    @Inject(TOKEN_RESOURCE_OPTIONS) private readonly options: ResolvedTokenResourceOptions,
    private readonly codec: TokenCodec,
    private readonly store: TokenStore,
    private readonly cache: RevocationCache,
    private readonly expiredTokens: ExpiredTokenDeleter,
    @Optional() private readonly metrics: TokenResourceMetrics = NO_METRICS,
  ) {}

  /**
   * Signs a new JWT for `subject` with a random `jti`, and stores it when `storeAllTokens` is on.
   * `iat` keeps millisecond precision so that a log-out in the same second is exact. The
   * `purpose` claim lets the guard refuse, say, a `'confirm'` token as a session.
   *
   * @throws TypeError for a subject or purpose the token table cannot store (empty, a lone
   *   UTF-16 surrogate, NUL, over 1024 / 255 bytes of UTF-8), `extraData` that `jsonb`
   *   refuses (see `storeToken`), or a malformed `expiresIn`.
   * @throws RangeError when `expiresIn` exceeds `logOutEverywhere.markerLifetime`: the
   *   token would outlive the record of its subject's log-outs.
   */
  async issueToken(input: IssueTokenInput): Promise<IssuedToken> {
    checkSubject(input?.subject);
    const purpose = input.purpose ?? DEFAULT_AUTHENTICATION_PURPOSE;
    checkPurpose(purpose);
    const lifetimeSeconds = durationToSeconds(input.expiresIn ?? DEFAULT_EXPIRES_IN);
    const { markerLifetimeSeconds } = this.options.logOutEverywhere;
    if (lifetimeSeconds > markerLifetimeSeconds) {
      // The subject's log-out marker would be expunged while the token is still valid,
      // and a token that was logged out would be accepted again.
      throw new RangeError(
        `expiresIn (${lifetimeSeconds} s) exceeds logOutEverywhere.markerLifetime (${markerLifetimeSeconds} s); shorten expiresIn or raise markerLifetime.`,
      );
    }
    const jti = randomUUID();
    const issuedAt = Date.now() / 1000;
    const exp = Math.floor(issuedAt + lifetimeSeconds);
    const token = await this.codec.sign({ ...input.claims, purpose, sub: input.subject, jti, iat: issuedAt, exp });
    const expiresAt = new Date(exp * 1000);
    if (this.options.storeAllTokens) {
      // A new random jti: no cache can hold an answer about it yet, so nothing to stamp.
      await this.writeRow(jti, input.subject, expiresAt, purpose, input.extraData ?? null, false);
    }
    return { token, jti, expiresAt };
  }

  /**
   * Upserts the row of a token on its `jti`, taking `subject` from `sub` and `expiresAt`
   * from `exp`. Accepts an expired token.
   *
   * @throws InvalidTokenError for an untrusted token or one without `jti`, `sub` or `exp`.
   * @throws TypeError for a purpose the table cannot store (see `issueToken`), or `extraData`
   *   holding a string with NUL or a lone UTF-16 surrogate, which `jsonb` refuses.
   * @throws TokenAlreadyRevokedError when the token is revoked (a revoked row is never overwritten).
   */
  async storeToken(input: StoreTokenInput): Promise<void> {
    checkPurpose(input?.purpose);
    const claims = await this.codec.verify(input.token, true);
    await this.writeRow(
      requireString(claims, 'jti'),
      requireString(claims, 'sub'),
      expiryOf(claims),
      input.purpose,
      input.extraData ?? null,
      true,
    );
  }

  /**
   * The unexpired stored row of a token, by `jti` or by the `jti` of `token`, optionally
   * of one purpose; `null` when there is none (also for an expired token).
   *
   * @throws InvalidTokenError for an untrusted `token`.
   * @throws TypeError when neither `jti` nor `token` is given, or for a `jti` or `purpose` the
   *   table cannot store (see `revokeJti`): no row can hold it.
   */
  async getToken(query: GetTokenQuery): Promise<Token | null> {
    let jti = query?.jti;
    if (query?.token !== undefined) {
      // An expired token is no error here: its row has expired too, so the answer is `null`.
      jti = requireString(await this.codec.verify(query.token, true), 'jti');
    }
    if (typeof jti !== 'string' || jti === '') throw new TypeError('getToken needs a jti or a token');
    checkJti(jti);
    if (query.purpose !== undefined) checkPurpose(query.purpose);
    if (isExpungerJti(jti) || jti.startsWith(SESSION_JTI_PREFIX)) return null;
    const where: FindOptionsWhere<Token> = { jti, expiresAt: MoreThan(new Date()) };
    if (query.purpose !== undefined) where.purpose = query.purpose;
    return this.store.readPrimary((tokens) => tokens.findOne({ where }));
  }

  /**
   * Whether a token is revoked: a revocation row for its `jti`, or its subject logged out
   * everywhere at or after its `iat`. One indexed query. Accepts an expired token.
   *
   * @throws InvalidTokenError for an untrusted token.
   * @throws TokenResourceUnavailableError when the store cannot answer (never `false`).
   */
  async tokenRevoked(token: string): Promise<boolean> {
    const claims = await this.codec.verify(token, true);
    return (await this.checkClaims(claims)).revoked;
  }

  /**
   * Whether a revocation row exists for `jti`. One primary-key lookup, none for a `jti`
   * `RevocationCache` knows (its own row, or that it has none).
   *
   * It cannot see log-outs everywhere, which revoke by subject and `iat`, neither of which
   * a bare `jti` carries: to check a token, use {@link tokenRevoked} or the guard.
   *
   * @throws TypeError for a `jti` the table cannot store (see `revokeJti`).
   */
  async jtiRevoked(jti: string): Promise<boolean> {
    checkJti(jti);
    const cached = this.cache.lookupToken(jti);
    // The expunger deletes expired rows unstamped: an expired one is read again.
    const hit = cached === null || (cached !== undefined && cached.expiresMs > Date.now());
    if (this.options.revocationCache.enabled) this.metrics.cacheLookup(hit);
    if (hit) return cached?.purpose === REVOCATION_PURPOSE;
    if (!this.cache.fresh) {
      const { rowCount } = await this.store.query(this.store.jtiRevokedStatement(), [jti]);
      return rowCount > 0;
    }
    const ticket = this.cache.ticket();
    const ownRow = (await this.store.query<OwnStateRow>(this.store.ownStateStatement(), [jti])).rows[0];
    this.cache.rememberToken(jti, ownRow?.subject, cachedOwnRow(ownRow), ticket);
    return ownRow?.purpose === REVOCATION_PURPOSE;
  }

  /**
   * Checks verified claims against the store in one round trip at most: revocation and,
   * for the guard, presence as an unexpired token of the authentication purpose. The
   * token's own row and its subject's log-out marker are read together, except what
   * `RevocationCache` knows: a token it has seen is checked without a round trip.
   */
  async checkClaims(claims: TokenClaimsPayload): Promise<TokenCheck> {
    const jti = requireString(claims, 'jti');
    const subject = requireString(claims, 'sub');
    const sessionJti = isSessionId(claims.sid) ? sessionRowJti(claims.sid) : null;
    let marker = this.cache.lookupMarker(subject);
    const cachedOwn = marker === undefined ? undefined : this.cache.lookupToken(jti);
    const cachedSession = sessionJti === null ? null : cachedOwn === undefined ? undefined : this.cache.lookupToken(sessionJti);
    const cached = cachedOwn !== undefined && cachedSession !== undefined;
    if (this.options.revocationCache.enabled) this.metrics.cacheLookup(cached);
    if (cached) return this.verdict(claims, jti, cachedOwn, marker!, cachedSession, Date.now());
    let tokenState = this.store.tokenStateStatement();
    let ownRow: OwnStateRow | undefined;
    let sessionRow: OwnStateRow | undefined;
    // A session token's session row is read with the marker: the one-key probe cannot serve it.
    if (sessionJti !== null) marker = undefined;
    if (marker !== undefined) {
      const ticket = this.cache.ticket();
      const started = performance.now();
      ownRow = (await this.store.query<OwnStateRow>(this.store.ownStateStatement(), [jti])).rows[0];
      // The wait for a pooled connection may have outlasted the cache's bound, or a
      // log-out been announced meanwhile: then read the marker after all, in what is left of
      // storeTimeoutMs, which bounds the whole check.
      if (this.cache.confirms(subject, marker)) {
        this.cache.rememberToken(jti, ownRow?.subject ?? subject, cachedOwnRow(ownRow), ticket);
      } else {
        marker = undefined;
        tokenState = { ...tokenState, timeoutMs: Math.max(1, Math.ceil(this.options.storeTimeoutMs - (performance.now() - started))) };
      }
    }
    if (marker === undefined) {
      const ticket = this.cache.ticket();
      const markerJti = logOutMarkerJti(subject);
      const { rows } = await this.store.query<TokenStateRow>(tokenState, [jti, markerJti, sessionJti]);
      ownRow = rows.find((row) => row.jti === jti);
      marker = rows.find((row) => row.jti === markerJti && row.purpose === LOG_OUT_EVERYWHERE_PURPOSE)?.marker ?? null;
      this.cache.rememberMarker(subject, marker, ticket);
      this.cache.rememberToken(jti, ownRow?.subject ?? subject, cachedOwnRow(ownRow), ticket);
      if (sessionJti !== null) {
        sessionRow = rows.find((row) => row.jti === sessionJti);
        this.cache.rememberToken(sessionJti, sessionRow?.subject ?? subject, cachedOwnRow(sessionRow), ticket);
      }
    }
    return this.verdict(claims, jti, ownRow ?? null, marker, sessionRow ?? null, undefined);
  }

  /**
   * The verdict on a token from its own row, its subject's marker and its session's row.
   *
   * @param session the row of the session named by its `sid` claim; `null` for none (or no `sid`).
   * @param nowMs judge whether a cached row is live by its expiry at this moment;
   *   `undefined` for a row just read, which says so itself (the database's clock).
   */
  private verdict(
    claims: TokenClaimsPayload,
    jti: string,
    own: CachedOwnRow | OwnStateRow | null,
    marker: LogOutMarker | null,
    session: CachedOwnRow | OwnStateRow | null,
    nowMs: number | undefined,
  ): TokenCheck {
    // A marker or session row is never a token's own row, even when a token's jti names one.
    if (own?.purpose === LOG_OUT_EVERYWHERE_PURPOSE || own?.purpose === SESSION_PURPOSE) own = null;
    // A refresh token is always stored and every log-out that covers it flips its row, which
    // therefore decides alone: a "log out my other devices" keeps the current session's.
    const markerApplies = marker !== null && !(claims.purpose === REFRESH_PURPOSE && own?.purpose === REFRESH_PURPOSE);
    const revoked =
      own?.purpose === REVOCATION_PURPOSE ||
      session?.purpose === REVOCATION_PURPOSE ||
      (markerApplies && logOutMarkerRevokes(marker, jti, claims.iat, own?.purpose));
    const live = own !== null && (nowMs === undefined ? (own as OwnStateRow).live : (own as CachedOwnRow).expiresMs > nowMs);
    const presentForAuthentication = live && own!.purpose === this.options.authenticationPurpose;
    return { revoked, presentForAuthentication };
  }

  /**
   * Revokes a token: writes a revocation row (`subject` from `sub`, `expiresAt` from
   * `exp`, rounded up to the second), turning a stored row of another purpose into it.
   * Atomic: of any number of concurrent calls for one token exactly one resolves. Accepts an
   * expired token.
   *
   * @throws InvalidTokenError for an untrusted token, one without `jti`, `sub` or `exp`, or
   *   one whose `jti` is stored, unrevoked, for another subject (nothing is written).
   * @throws TokenAlreadyRevokedError when it was already revoked.
   */
  async revoke(token: string, opts: RevokeOptions = {}): Promise<void> {
    const claims = await this.codec.verify(token, true);
    await this.writeRevocation('token', requireString(claims, 'jti'), requireString(claims, 'sub'), expiryOf(claims), opts.manager);
  }

  /**
   * Revokes a bare `jti` of `subject`, like {@link revoke}. Without `expiresAt` a stored
   * row keeps its expiry and a new row expires `logOutEverywhere.markerLifetime` from now.
   * Only the owner revokes: a `jti` stored for another subject is left alone, so a "revoke
   * my session by id" endpoint cannot touch another user's token.
   *
   * @throws TypeError for a `jti` or `subject` the table cannot store (empty, a lone UTF-16
   *   surrogate, NUL, over 255 / 1024 bytes of UTF-8), or an `expiresAt` that is not a valid
   *   Date between 1970 and the end of 9999 (it is rounded up to the second).
   * @throws InvalidTokenError when `jti` is stored, unrevoked, for another subject (nothing
   *   is written).
   * @throws TokenAlreadyRevokedError when it was already revoked.
   */
  async revokeJti(jti: string, subject: string, opts: RevokeJtiOptions = {}): Promise<void> {
    checkJti(jti);
    checkSubject(subject);
    const expiresAt = opts.expiresAt === undefined ? undefined : checkExpiresAt(opts.expiresAt, 'opts.expiresAt');
    const bound = expiresAt ?? new Date(Date.now() + this.options.logOutEverywhere.markerLifetimeSeconds * 1000);
    await this.writeRevocation('jti', jti, subject, bound, opts.manager, expiresAt === undefined);
  }

  /**
   * Deletes rows whose `expiresAt` passed more than `clockToleranceSeconds` ago, in
   * batches of `expunge.batchSize`, each its own short transaction. Rows that other
   * transactions hold locked are skipped and left to the next run; rows the database
   * refuses to delete (an application's foreign key referencing them) are skipped and
   * logged. It neither takes nor records the scheduled job's turn: see `ExpungerService`.
   *
   * @returns how many rows were deleted.
   */
  async expungeExpired(opts: ExpungeExpiredOptions = {}): Promise<number> {
    return this.expiredTokens.deleteExpired({ signal: opts.signal, onBatch: opts.onBatch });
  }

  /**
   * Stores pending changes (for example a new e-mail address) on the token's `jti`, to be
   * read back with {@link getConfirmationChanges} until the token expires.
   */
  async storeConfirmationChanges(input: StoreConfirmationChangesInput): Promise<void> {
    if (!input?.changes || typeof input.changes !== 'object') throw new TypeError('changes must be an object');
    await this.storeToken({ token: input.token, purpose: input.purpose ?? DEFAULT_CONFIRM_PURPOSE, extraData: input.changes });
  }

  /**
   * The changes stored for `jti` with `purpose` (default `'confirm'`), or `null` once expired or absent.
   *
   * @throws TypeError for a `jti` or `purpose` the table cannot store (see `revokeJti`).
   */
  async getConfirmationChanges(jti: string, purpose: string = DEFAULT_CONFIRM_PURPOSE): Promise<Record<string, unknown> | null> {
    checkJti(jti);
    checkPurpose(purpose);
    if (isExpungerJti(jti)) return null;
    const row = await this.store.readPrimary((tokens) =>
      tokens.findOne({
        select: { jti: true, extraData: true },
        where: { jti, purpose, expiresAt: MoreThanOrEqual(new Date()) },
      }),
    );
    return row?.extraData ?? null;
  }

  /**
   * The stored tokens of `subject`, newest first; unexpired ones unless `includeExpired`.
   *
   * @throws TypeError for a `subject` or `purpose` the table cannot store (see `revokeJti`).
   */
  async listTokens(subject: string, opts: ListTokensOptions = {}): Promise<Token[]> {
    checkSubject(subject);
    if (opts.purpose !== undefined) checkPurpose(opts.purpose);
    const where: FindOptionsWhere<Token> = { subject, purpose: opts.purpose ?? Not(In([LOG_OUT_EVERYWHERE_PURPOSE, SESSION_PURPOSE])) };
    if (!opts.includeExpired) where.expiresAt = MoreThan(new Date());
    return this.store.readPrimary((tokens) => tokens.find({ where, order: { createdAt: 'DESC', jti: 'ASC' } }));
  }

  /** @param stamped stamp the row for the revocation caches (see `TokenStore.storeStatement`). */
  private async writeRow(
    jti: string,
    subject: string,
    expiresAt: Date,
    purpose: string,
    extraData: Record<string, unknown> | null,
    stamped: boolean,
  ): Promise<void> {
    if (purpose === REVOCATION_PURPOSE) throw new TypeError(`use revoke() to store a '${REVOCATION_PURPOSE}' row`);
    if (purpose === LOG_OUT_EVERYWHERE_PURPOSE)
      throw new TypeError(`the purpose '${LOG_OUT_EVERYWHERE_PURPOSE}' is reserved for log-out-everywhere markers`);
    if (purpose === EXPUNGE_RECORD_PURPOSE)
      throw new TypeError(`the purpose '${EXPUNGE_RECORD_PURPOSE}' is reserved for the expunger's run record`);
    rejectMarkerJti(jti);
    checkJsonb(extraData, 'extraData');
    const { rowCount } = await this.store.execute(this.store.storeStatement(stamped), [jti, subject, expiresAt, purpose, extraData]);
    if (rowCount === 0) throw new TokenAlreadyRevokedError(`token ${jti} is revoked and cannot be stored again`);
    if (stamped) this.cache.written({ kind: 'jti', key: jti });
  }

  /**
   * @param kind what the revocation counts as in `token_resource.revocations`.
   * @param keepStoredExpiry a stored row keeps its `expiresAt` rather than taking the later of the two.
   */
  private async writeRevocation(
    kind: RevocationKind,
    jti: string,
    subject: string,
    expiresAt: Date,
    manager?: EntityManager,
    keepStoredExpiry = false,
  ): Promise<void> {
    rejectMarkerJti(jti);
    const { rowCount } = await this.store.execute(this.store.revokeStatement(), [jti, subject, expiresAt, keepStoredExpiry], manager);
    if (rowCount > 0) {
      this.cache.written({ kind: 'jti', key: jti }, manager);
      this.metrics.revoked(kind, manager);
      return;
    }
    // The upsert left the row alone: revoked already, or another subject's. Only this
    // failure path looks at which, in the same transaction. Revoked wins: the token is
    // refused either way, and TokenAlreadyRevokedError always means just that.
    const row = (await this.store.execute<{ subject: string; purpose: string }>(this.ownerOf, [jti], manager)).rows[0];
    if (row !== undefined && row.purpose !== REVOCATION_PURPOSE && row.subject !== subject) {
      throw new InvalidTokenError(`token ${jti} belongs to another subject; nothing was revoked`);
    }
    throw new TokenAlreadyRevokedError(`token ${jti} is already revoked`);
  }
}
