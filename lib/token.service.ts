import { randomUUID } from 'node:crypto';
import { Inject, Injectable } from '@nestjs/common';
import { MoreThan, MoreThanOrEqual, Not, type EntityManager, type FindOptionsWhere } from 'typeorm';
import type { Token } from './entities/token.entity.js';
import { durationToSeconds } from './jwt/duration.js';
import { TokenCodec, type TokenClaimsPayload } from './jwt/token-codec.js';
import { logOutMarkerJti, logOutMarkerRevokes } from './log-out-everywhere/log-out-marker.js';
import type { ResolvedTokenResourceOptions } from './options/resolved-options.js';
import {
  DEFAULT_AUTHENTICATION_PURPOSE,
  DEFAULT_CONFIRM_PURPOSE,
  DEFAULT_EXPIRES_IN,
  LOG_OUT_EVERYWHERE_PURPOSE,
  NEVER_EXPIRES,
  REVOCATION_PURPOSE,
  TOKEN_RESOURCE_OPTIONS,
} from './token-resource.constants.js';
import { InvalidTokenError, TokenAlreadyRevokedError } from './token-resource.exceptions.js';
import { TokenStore, type TokenStateRow } from './token.store.js';

/** Input of {@link TokenService.issueToken}. */
export interface IssueTokenInput {
  /** The JWT `sub`. */
  subject: string;
  /** Purpose of the stored row. Default `'user'`. */
  purpose?: string;
  /** Seconds from now, or a duration string such as `'15m'` or `'7d'`. Default `'7d'`. */
  expiresIn?: string | number;
  /** Extra claims; `sub`, `jti`, `iat` and `exp` are set by the service. */
  claims?: Record<string, unknown>;
  /** Stored in the row's `extraData` when the token is stored. */
  extraData?: Record<string, unknown>;
}

/** What {@link TokenService.issueToken} returns. */
export interface IssuedToken {
  token: string;
  jti: string;
  expiresAt: Date;
}

/** Input of {@link TokenService.storeToken}. */
export interface StoreTokenInput {
  token: string;
  purpose: string;
  extraData?: Record<string, unknown>;
}

/** Query of {@link TokenService.getToken}: `jti` or `token` is required. */
export interface GetTokenQuery {
  token?: string;
  jti?: string;
  purpose?: string;
}

/** Options of {@link TokenService.revoke}. */
export interface RevokeOptions {
  /**
   * Whether the row is expected to exist. Default: the module's `storeAllTokens`.
   * Both cases are served by the same single conditional upsert, which is atomic
   * whether or not the row exists, so this only documents the caller's intent.
   */
  storeAllTokens?: boolean;
  /** Revoke inside this manager's transaction. */
  manager?: EntityManager;
}

/** Options of {@link TokenService.revokeJti}. */
export interface RevokeJtiOptions extends RevokeOptions {
  /** When the revocation row may be expunged. Default: never. */
  expiresAt?: Date;
}

/** Input of {@link TokenService.storeConfirmationChanges}. */
export interface StoreConfirmationChangesInput {
  token: string;
  changes: Record<string, unknown>;
  /** Default `'confirm'`. */
  purpose?: string;
}

/** Options of {@link TokenService.listTokens}. */
export interface ListTokensOptions {
  purpose?: string;
  /** Also list rows whose `expiresAt` has passed. Default `false`. */
  includeExpired?: boolean;
}

/** Options of {@link TokenService.expungeExpired}. */
export interface ExpungeExpiredOptions {
  /** Run every batch on this manager's connection, for example one that holds an advisory lock. */
  manager?: EntityManager;
  /** Once aborted, stop after the batch in progress. */
  signal?: AbortSignal;
  /** Called after each batch with the rows it deleted and its duration in milliseconds. */
  onBatch?: (deleted: number, durationMs: number) => void;
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
  return new Date(claims.exp * 1000);
}

function requireNonEmpty(value: unknown, name: string): asserts value is string {
  if (typeof value !== 'string' || value === '') throw new TypeError(`${name} must be a non-empty string`);
}

/**
 * Issues JWTs and keeps what is known about them: stored tokens, revocations and
 * confirmation changes. Every method that takes a token verifies it first and writes
 * nothing for a token it cannot trust.
 */
@Injectable()
export class TokenService {
  /**
   * One expunge batch: walks the `expires_at` index from the previous batch's last
   * value (`$1`, so the scan never re-reads the dead index entries behind it), locks
   * up to `$3` expired rows skipping those others hold, and deletes them by `ctid`
   * (a TID scan, no primary-key probes).
   */
  private readonly expungeBatch = this.store.statement('expunge_batch', `
    WITH victims AS (
      SELECT ctid FROM ${this.store.table}
       WHERE expires_at >= $1::timestamptz AND expires_at < $2
       ORDER BY expires_at LIMIT $3 FOR UPDATE SKIP LOCKED
    ), gone AS (
      DELETE FROM ${this.store.table}
       WHERE ctid = ANY (ARRAY(SELECT ctid FROM victims)) AND expires_at < $2
      RETURNING expires_at
    )
    SELECT count(*)::int AS deleted, max(expires_at)::text AS last FROM gone`);

  constructor(
    @Inject(TOKEN_RESOURCE_OPTIONS) private readonly options: ResolvedTokenResourceOptions,
    private readonly codec: TokenCodec,
    private readonly store: TokenStore,
  ) {}

  /**
   * Signs a new JWT for `subject` with a random `jti`, and stores it when `storeAllTokens` is on.
   * `iat` keeps millisecond precision so that a log-out in the same second is exact.
   */
  async issueToken(input: IssueTokenInput): Promise<IssuedToken> {
    requireNonEmpty(input?.subject, 'subject');
    const purpose = input.purpose ?? DEFAULT_AUTHENTICATION_PURPOSE;
    requireNonEmpty(purpose, 'purpose');
    const lifetimeSeconds = durationToSeconds(input.expiresIn ?? DEFAULT_EXPIRES_IN);
    const jti = randomUUID();
    const issuedAt = Date.now() / 1000;
    const exp = Math.floor(issuedAt + lifetimeSeconds);
    const token = await this.codec.sign({ ...input.claims, sub: input.subject, jti, iat: issuedAt, exp });
    const expiresAt = new Date(exp * 1000);
    if (this.options.storeAllTokens) {
      await this.writeRow(jti, input.subject, expiresAt, purpose, input.extraData ?? null);
    }
    return { token, jti, expiresAt };
  }

  /**
   * Upserts the row of a token on its `jti`, taking `subject` from `sub` and `expiresAt`
   * from `exp`. Accepts an expired token.
   *
   * @throws InvalidTokenError for an untrusted token or one without `jti`, `sub` or `exp`.
   * @throws TokenAlreadyRevokedError when the token is revoked (a revoked row is never overwritten).
   */
  async storeToken(input: StoreTokenInput): Promise<void> {
    requireNonEmpty(input?.purpose, 'purpose');
    const claims = await this.codec.verify(input.token, true);
    await this.writeRow(requireString(claims, 'jti'), requireString(claims, 'sub'), expiryOf(claims), input.purpose, input.extraData ?? null);
  }

  /**
   * The unexpired stored row of a token, by `jti` or by the `jti` of `token`, optionally
   * of one purpose; `null` when there is none.
   */
  async getToken(query: GetTokenQuery): Promise<Token | null> {
    let jti = query?.jti;
    if (query?.token !== undefined) {
      jti = requireString(await this.codec.verify(query.token), 'jti');
    }
    if (typeof jti !== 'string' || jti === '') throw new TypeError('getToken needs a jti or a token');
    const where: FindOptionsWhere<Token> = { jti, expiresAt: MoreThan(new Date()) };
    if (query.purpose !== undefined) where.purpose = query.purpose;
    return this.store.repository.findOne({ where });
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

  /** Whether a revocation row exists for `jti`. One primary-key lookup. */
  async jtiRevoked(jti: string): Promise<boolean> {
    requireNonEmpty(jti, 'jti');
    const { rowCount } = await this.store.execute(this.store.jtiRevokedStatement(), [jti]);
    return rowCount > 0;
  }

  /**
   * Checks verified claims against the store in one round trip: revocation and, for the
   * guard, presence as an unexpired token of the authentication purpose.
   */
  async checkClaims(claims: TokenClaimsPayload): Promise<TokenCheck> {
    const jti = requireString(claims, 'jti');
    const subject = requireString(claims, 'sub');
    const { rows } = await this.store.execute<TokenStateRow>(this.store.tokenStateStatement(), [[jti, logOutMarkerJti(subject)]]);
    const own = rows.find((row) => row.jti === jti && row.purpose !== LOG_OUT_EVERYWHERE_PURPOSE);
    const marker = rows.find((row) => row.purpose === LOG_OUT_EVERYWHERE_PURPOSE && row.marker)?.marker;
    const revoked = own?.purpose === REVOCATION_PURPOSE
      || (marker !== undefined && marker !== null && logOutMarkerRevokes(marker, jti, claims.iat));
    const presentForAuthentication = own !== undefined
      && own.purpose === this.options.authenticationPurpose
      && new Date(own.expires_at).getTime() > Date.now();
    return { revoked, presentForAuthentication };
  }

  /**
   * Revokes a token: writes a revocation row (`subject` from `sub`, `expiresAt` from
   * `exp`), turning a stored row of another purpose into it. Atomic: of any number of
   * concurrent calls for one token exactly one resolves. Accepts an expired token.
   *
   * @throws InvalidTokenError for an untrusted token or one without `jti`, `sub` or `exp`.
   * @throws TokenAlreadyRevokedError when it was already revoked.
   */
  async revoke(token: string, opts: RevokeOptions = {}): Promise<void> {
    const claims = await this.codec.verify(token, true);
    await this.writeRevocation(requireString(claims, 'jti'), requireString(claims, 'sub'), expiryOf(claims), opts.manager);
  }

  /**
   * Revokes a bare `jti` of `subject`, like {@link revoke}. Without `expiresAt` the
   * revocation row never expires.
   *
   * @throws TokenAlreadyRevokedError when it was already revoked.
   */
  async revokeJti(jti: string, subject: string, opts: RevokeJtiOptions = {}): Promise<void> {
    requireNonEmpty(jti, 'jti');
    requireNonEmpty(subject, 'subject');
    const expiresAt = opts.expiresAt ?? NEVER_EXPIRES;
    if (!(expiresAt instanceof Date) || Number.isNaN(expiresAt.getTime())) throw new TypeError('expiresAt must be a valid Date');
    await this.writeRevocation(jti, subject, expiresAt, opts.manager);
  }

  /**
   * Deletes rows whose `expiresAt` passed more than `clockToleranceSeconds` ago, in
   * batches of `expunge.batchSize`, each its own short autocommit statement (also on
   * `opts.manager`, unless it is inside a transaction). Rows locked by others are
   * skipped and left to the next run.
   *
   * @returns how many rows were deleted.
   */
  async expungeExpired(opts: ExpungeExpiredOptions = {}): Promise<number> {
    const cutoff = new Date(Date.now() - this.options.jwt.clockToleranceSeconds * 1000);
    const batchSize = this.options.expunge.batchSize;
    let deleted = 0;
    let from = '-infinity';
    while (!opts.signal?.aborted) {
      const started = performance.now();
      const { rows } = await this.store.execute<{ deleted: number; last: string | null }>(this.expungeBatch, [from, cutoff, batchSize], opts.manager);
      const batch = rows[0]?.deleted ?? 0;
      deleted += batch;
      opts.onBatch?.(batch, performance.now() - started);
      if (batch < batchSize || rows[0]?.last == null) break;
      from = rows[0].last;
    }
    return deleted;
  }

  /**
   * Stores pending changes (for example a new e-mail address) on the token's `jti`, to be
   * read back with {@link getConfirmationChanges} until the token expires.
   */
  async storeConfirmationChanges(input: StoreConfirmationChangesInput): Promise<void> {
    if (!input?.changes || typeof input.changes !== 'object') throw new TypeError('changes must be an object');
    await this.storeToken({ token: input.token, purpose: input.purpose ?? DEFAULT_CONFIRM_PURPOSE, extraData: input.changes });
  }

  /** The changes stored for `jti` with `purpose` (default `'confirm'`), or `null` once expired or absent. */
  async getConfirmationChanges(jti: string, purpose: string = DEFAULT_CONFIRM_PURPOSE): Promise<Record<string, unknown> | null> {
    requireNonEmpty(jti, 'jti');
    const row = await this.store.repository.findOne({
      select: { jti: true, extraData: true },
      where: { jti, purpose, expiresAt: MoreThanOrEqual(new Date()) },
    });
    return row?.extraData ?? null;
  }

  /** The stored tokens of `subject`, newest first; unexpired ones unless `includeExpired`. */
  async listTokens(subject: string, opts: ListTokensOptions = {}): Promise<Token[]> {
    requireNonEmpty(subject, 'subject');
    const where: FindOptionsWhere<Token> = { subject, purpose: opts.purpose ?? Not(LOG_OUT_EVERYWHERE_PURPOSE) };
    if (!opts.includeExpired) where.expiresAt = MoreThan(new Date());
    return this.store.repository.find({ where, order: { createdAt: 'DESC', jti: 'ASC' } });
  }

  private async writeRow(jti: string, subject: string, expiresAt: Date, purpose: string, extraData: Record<string, unknown> | null): Promise<void> {
    if (purpose === REVOCATION_PURPOSE) throw new TypeError(`use revoke() to store a '${REVOCATION_PURPOSE}' row`);
    const { rowCount } = await this.store.execute(this.store.storeStatement(), [jti, subject, expiresAt, purpose, extraData]);
    if (rowCount === 0) throw new TokenAlreadyRevokedError(`token ${jti} is revoked and cannot be stored again`);
  }

  private async writeRevocation(jti: string, subject: string, expiresAt: Date, manager?: EntityManager): Promise<void> {
    const { rowCount } = await this.store.execute(this.store.revokeStatement(), [jti, subject, expiresAt], manager);
    if (rowCount === 0) throw new TokenAlreadyRevokedError(`token ${jti} is already revoked`);
  }
}
