import type { ModuleMetadata, Type } from '@nestjs/common';
import type { JWK } from 'jose';
import type { EntityTarget, ObjectLiteral } from 'typeorm';
import type { Token } from '../entities/token.entity.js';

/** How JWTs are verified and issued. Exactly one of `secret`, `publicKey`, `jwksUri` is required. */
export interface TokenResourceJwtOptions {
  /**
   * HMAC key for HS256/384/512, used both to verify and to issue. At least as long as the
   * hash of each algorithm it is used with (RFC 7518 §3.2): 32 bytes for HS256, 48 for
   * HS384, 64 for HS512; a shorter secret fails the boot with `TokenResourceConfigError`.
   */
  secret?: string | Uint8Array;
  /** PEM (SPKI) public key or public JWK used to verify RS*, PS*, ES* or EdDSA tokens. */
  publicKey?: string | JWK;
  /** PEM (PKCS#8) private key or private JWK used by `issueToken` with an asymmetric algorithm. */
  privateKey?: string | JWK;
  /** URL of a remote JWKS used to verify; keys are fetched and cached by `jose`. */
  jwksUri?: string;
  /**
   * Accepted algorithms; the first one is used by `issueToken`.
   * Default: every algorithm of the key's family (the HS* the secret is long enough for, RS* and PS* for RSA, the
   * curve's ES* for EC, EdDSA for Ed25519, every asymmetric one for a JWKS). `none` is never accepted.
   */
  algorithms?: string[];
  /** Expected `iss`; checked when set and written by `issueToken`. Default: unchecked. */
  issuer?: string;
  /** Expected `aud`; checked when set and written by `issueToken`. Default: unchecked. */
  audience?: string | string[];
  /** Leeway in seconds for `exp`/`nbf`, and the minimum grace before the expunger deletes a row. Default `0`. */
  clockToleranceSeconds?: number;
}

/** Options of the expired-row expunger. */
export interface TokenResourceExpungeOptions {
  /** Schedule the expunger with `@nestjs/schedule`. Default `true`. */
  enabled?: boolean;
  /**
   * When runs start: a cron expression (five fields, or six with seconds first), read in
   * UTC, so that runs fall at the same wall-clock times whenever instances restart.
   * Invalid or never-firing expressions fail at boot. Default `'0 0,12 * * *'`:
   * every 12 hours on the hour, at 00:00 and 12:00 UTC.
   */
  cron?: string;
  /**
   * Hours between runs, for schedules that map onto a cron expression: a whole
   * number dividing 24 (1, 2, 3, 4, 6, 8, 12 or 24) runs every that many hours on the
   * hour from 00:00 UTC. Any other value, or giving `cron` too, fails at boot; use `cron`
   * for other schedules. Default: unset (`cron` applies).
   */
  intervalHours?: number;
  /**
   * A booting instance runs once when no run completed since the schedule last fired
   * (instances were down, or a run was cut short), after a random delay of up to this
   * many seconds, so that a fleet restarting together spreads out and runs it once.
   * `0` runs it at once. At most 86400. Default `60`.
   */
  startupJitterSeconds?: number;
  /**
   * Rows deleted per batch. Each batch is its own short transaction (20 to 50 ms for
   * 20,000 rows in bench:expunge), so none holds locks for long while per-statement
   * overhead stays small: 10,000 measured 1.32x a single raw DELETE, 20,000 0.88x to
   * 1.11x. Default `20000`.
   */
  batchSize?: number;
}

/** Options of log-out-everywhere. */
export interface TokenResourceLogOutEverywhereOptions {
  /** Only tokens of these purposes are revoked. Default: every purpose. */
  includePurposes?: string[];
  /** Tokens of these purposes are never revoked. Default `['revocation']`. */
  excludePurposes?: string[];
  /** Revoke a user's tokens when `passwordField` of `userEntity` changes through TypeORM. Default `false`. */
  applyOnPasswordChange?: boolean;
  /** The user entity watched for password changes; required with `applyOnPasswordChange`. */
  userEntity?: EntityTarget<ObjectLiteral>;
  /** The password property of `userEntity`. Default `'hashedPassword'`. */
  passwordField?: string;
  /**
   * The JWT `sub` of a user. A result that is no storable subject (see `IssueTokenInput.subject`)
   * makes the password change reject and roll back. Default `u => String(u.id)`, which refuses a
   * user without `id`; with `applyOnPasswordChange`, the boot fails when `userEntity` has no `id` column.
   */
  // eslint-disable-next-line @typescript-eslint/no-explicit-any -- any user entity, whatever its class
  subjectOf?: (user: any) => string;
  /**
   * How long a subject's log-out moment is remembered, as seconds or a duration string.
   * Unstored tokens issued before the log-out stay revoked for this long, so it must be at
   * least the longest lifetime of any token you accept. Default `'365d'`.
   */
  markerLifetime?: string | number;
}

/**
 * Options of the in-process cache of revoked-check answers (`RevocationCache`).
 *
 * With it, a token seen before is checked without a round trip: each instance remembers
 * the token's own row and its subject's log-out marker. Every write of this library that can
 * revoke a token stamps its rows with its transaction's id (the `changed_xid` column), and
 * each instance polls the rows stamped since its previous poll, on one extra connection to
 * the primary, every quarter of `maxStalenessMs` and at once when another instance wakes it.
 * A write takes effect at once on the instance that made it, and on every other instance
 * within `maxStalenessMs` of its commit; while an instance cannot prove that bound (its poll
 * connection down or silent), it checks the database directly.
 */
export interface TokenResourceRevocationCacheOptions {
  /**
   * Turn the cache on. Through a pooler (PgBouncer or alike), where `LISTEN` hears nothing,
   * it polls without wake-ups, and says so once at start-up. Default `false`.
   */
  enabled?: boolean;
  /**
   * Whether this instance, after each of its writes that can revoke a token commits, wakes
   * the other instances' caches to poll at once, with one `NOTIFY` in a transaction of its
   * own (writes made while one is on its way share the next). A fleet-wide setting: on
   * wherever any instance caches, or writes made here are seen elsewhere only at the next
   * periodic poll (still within `maxStalenessMs`). Default: `enabled`.
   */
  announce?: boolean;
  /**
   * The longest time, in milliseconds, a write committed on another instance may go unseen
   * here: the cache answers only while a poll sent within it has been applied, and polls
   * every quarter of it. At least `100`. Default `1000`.
   */
  maxStalenessMs?: number;
  /** How many answers (tokens' rows and subjects' markers together) it keeps; beyond it the oldest go first. Default `100000`. */
  maxEntries?: number;
  /**
   * How long, in milliseconds, it trusts one answer. Writes of this library are stamped and
   * polled, and need no expiry; this bounds writes made any other way (raw SQL, for example), to
   * this age plus the time a check may take (`storeTimeoutMs`). At least `maxStalenessMs`.
   * Default: the larger of `60000` and `maxStalenessMs`.
   */
  maxEntryAgeMs?: number;
  /**
   * How many verified tokens it remembers by their exact string, so that a token presented
   * again costs no signature check (its `exp`, `nbf` and `iat` are judged again each time; a
   * token that failed verification, or longer than 4096 characters, is never remembered).
   * About 450 bytes per token of 250 characters. Not with `jwt.jwksUri`, whose keys may be
   * withdrawn. `0` turns it off. Default `20000`.
   */
  maxVerifiedTokens?: number;
}

/**
 * Options of `SessionService`: sessions of a short-lived access token and a rotating
 * refresh token. Checked at start-up.
 */
export interface TokenResourceSessionsOptions {
  /**
   * Lifetime of a session's access tokens: seconds, or a duration string such as `'15m'`. At
   * most `refreshTokenExpiresIn`. Default `'15m'`.
   */
  accessTokenExpiresIn?: string | number;
  /**
   * Lifetime of each refresh token, counted from its issue: a session that is not refreshed
   * within it ends. At most `logOutEverywhere.markerLifetime` (checked at start-up when given;
   * with a shorter `markerLifetime` and this default, `start` throws `RangeError`). Default `'30d'`.
   */
  refreshTokenExpiresIn?: string | number;
  /**
   * Seconds after a rotation during which presenting the refresh token it replaced again is
   * taken for a racing request of the same client (two tabs, a retried call) rather than
   * theft: it returns the same successor pair as the rotation did. Only the immediately
   * previous refresh token qualifies. `0` treats every repeat as theft. From `0` to `300`.
   * Default `0`.
   */
  reuseIntervalSeconds?: number;
}

/** Options of `TokenResourceModule.forRoot`. */
export interface TokenResourceModuleOptions {
  /** Name of the TypeORM data source. Default `'default'`. */
  dataSource?: string;
  /** Entity class with the columns of {@link Token} (for example a subclass with another table). Default `Token`. */
  entity?: Type<Token>;
  /** JWT verification and issuing. */
  jwt: TokenResourceJwtOptions;
  /** `issueToken` stores every token it issues. Default `false`. */
  storeAllTokens?: boolean;
  /** The guard admits only stored, unexpired tokens of `authenticationPurpose`; needs `storeAllTokens`. Default `false`. */
  requireTokenPresenceForAuthentication?: boolean;
  /** Purpose of authentication tokens. Default `'user'`. */
  authenticationPurpose?: string;
  /**
   * Milliseconds a store check of the guard may take before the store counts as
   * unavailable (the request gets `503`). Default `2000`.
   */
  storeTimeoutMs?: number;
  /** Expunger options. */
  expunge?: TokenResourceExpungeOptions;
  /** Log-out-everywhere options. */
  logOutEverywhere?: TokenResourceLogOutEverywhereOptions;
  /** Answer revoked-checks from memory, with a bounded staleness. Default: off. */
  revocationCache?: TokenResourceRevocationCacheOptions;
  /** `SessionService` options. Default: `{ accessTokenExpiresIn: '15m', refreshTokenExpiresIn: '30d', reuseIntervalSeconds: 0 }`. */
  sessions?: TokenResourceSessionsOptions;
  /** Register the module globally. Default `false`. */
  isGlobal?: boolean;
}

/** The options that wire the module before any options factory runs. */
type WiringOption = 'dataSource' | 'entity' | 'isGlobal';

/**
 * What an options factory of `forRootAsync` returns: every option except `dataSource`,
 * `entity` and `isGlobal`, which are given to `forRootAsync` itself. Returning one of
 * them does not compile.
 */
export type TokenResourceFactoryOptions = Omit<TokenResourceModuleOptions, WiringOption> & { [K in WiringOption]?: never };

/** A class that creates the module options, for `forRootAsync({ useClass })` or `useExisting`. */
export interface TokenResourceOptionsFactory {
  createTokenResourceOptions(): Promise<TokenResourceFactoryOptions> | TokenResourceFactoryOptions;
}

/** Options of `TokenResourceModule.forRootAsync`. */
export interface TokenResourceModuleAsyncOptions extends Pick<TokenResourceModuleOptions, WiringOption>, Pick<ModuleMetadata, 'imports'> {
  /** Providers injected into `useFactory`. */
  // eslint-disable-next-line @typescript-eslint/no-explicit-any -- injection tokens, as in Nest's own FactoryProvider
  inject?: any[];
  /** Returns the options. */
  // eslint-disable-next-line @typescript-eslint/no-explicit-any -- the providers of `inject`, in order
  useFactory?: (...args: any[]) => Promise<TokenResourceFactoryOptions> | TokenResourceFactoryOptions;
  /** A class implementing {@link TokenResourceOptionsFactory}, instantiated by the module. */
  useClass?: Type<TokenResourceOptionsFactory>;
  /** An existing provider implementing {@link TokenResourceOptionsFactory}. */
  useExisting?: Type<TokenResourceOptionsFactory>;
}
