import type { Type } from '@nestjs/common';
import type { EntityTarget, ObjectLiteral } from 'typeorm';
import type { Token } from '../entities/token.entity.js';
import type { TokenResourceModuleOptions } from '../interfaces/token-resource-options.interface.js';
import { durationToSeconds } from '../jwt/duration.js';
import { REVOCATION_PURPOSE } from '../token-resource.constants.js';
import { isPurpose, MAX_PURPOSE_BYTES } from '../validation/token-values.js';
import { DEFAULT_OPTIONS } from './defaults.js';
import { atLeast, between, fail, flag, positive, purposeList, shown, wholeNumber } from './option-checks.js';
import { expungeCronOf } from './validate-expunge.js';
import { resolveJwtOptions, type ResolvedJwtOptions } from './validate-jwt.js';
import { resolveSessions, type ResolvedSessionsOptions } from './validate-sessions.js';

/** Module options with every default filled in; what the services read. */
export interface ResolvedTokenResourceOptions {
  dataSource: string;
  entity: Type<Token>;
  jwt: ResolvedJwtOptions;
  storeAllTokens: boolean;
  requireTokenPresenceForAuthentication: boolean;
  authenticationPurpose: string;
  storeTimeoutMs: number;
  expunge: { enabled: boolean; cron: string; startupJitterSeconds: number; batchSize: number };
  logOutEverywhere: {
    includePurposes?: string[];
    excludePurposes: string[];
    applyOnPasswordChange: boolean;
    userEntity?: EntityTarget<ObjectLiteral>;
    passwordField: string;
    // eslint-disable-next-line @typescript-eslint/no-explicit-any -- any user entity, whatever its class
    subjectOf: (user: any) => string;
    markerLifetimeSeconds: number;
  };
  revocationCache: {
    enabled: boolean;
    announce: boolean;
    maxStalenessMs: number;
    maxEntries: number;
    maxEntryAgeMs: number;
    maxVerifiedTokens: number;
  };
  sessions: ResolvedSessionsOptions;
  isGlobal: boolean;
}

type LogOutOptions = NonNullable<TokenResourceModuleOptions['logOutEverywhere']>;
type RevocationCacheOptions = NonNullable<TokenResourceModuleOptions['revocationCache']>;

function resolveLogOutEverywhere(logOut: LogOutOptions): ResolvedTokenResourceOptions['logOutEverywhere'] {
  const defaults = DEFAULT_OPTIONS.logOutEverywhere;
  const applyOnPasswordChange = logOut.applyOnPasswordChange ?? defaults.applyOnPasswordChange;
  if (applyOnPasswordChange && !logOut.userEntity) {
    fail(
      'logOutEverywhere.applyOnPasswordChange needs logOutEverywhere.userEntity: the entity whose password changes should log its user out.',
    );
  }
  if (logOut.subjectOf !== undefined && typeof logOut.subjectOf !== 'function') {
    fail('logOutEverywhere.subjectOf must be a function (user) => string.');
  }
  let markerLifetimeSeconds: number;
  try {
    markerLifetimeSeconds = durationToSeconds(logOut.markerLifetime ?? defaults.markerLifetime);
  } catch (error) {
    fail(`logOutEverywhere.markerLifetime: ${(error as Error).message}`);
  }
  return {
    includePurposes: purposeList(logOut.includePurposes, 'logOutEverywhere.includePurposes'),
    excludePurposes: purposeList(logOut.excludePurposes, 'logOutEverywhere.excludePurposes') ?? [...defaults.excludePurposes],
    applyOnPasswordChange,
    userEntity: logOut.userEntity,
    passwordField: logOut.passwordField ?? defaults.passwordField,
    subjectOf: logOut.subjectOf ?? defaults.subjectOf,
    markerLifetimeSeconds,
  };
}

function resolveRevocationCache(cache: RevocationCacheOptions): ResolvedTokenResourceOptions['revocationCache'] {
  if (typeof cache !== 'object' || cache === null)
    fail(`revocationCache must be an object such as { enabled: true }, got ${shown(cache)}.`);
  const defaults = DEFAULT_OPTIONS.revocationCache;
  const enabled = flag(cache.enabled, 'revocationCache.enabled') ?? defaults.enabled;
  const announce = flag(cache.announce, 'revocationCache.announce') ?? enabled;
  const maxStalenessMs = atLeast(cache.maxStalenessMs, 100, 'revocationCache.maxStalenessMs') ?? defaults.maxStalenessMs;
  return {
    enabled,
    announce,
    maxStalenessMs,
    maxEntries: positive(cache.maxEntries, 'revocationCache.maxEntries', true) ?? defaults.maxEntries,
    maxEntryAgeMs:
      atLeast(cache.maxEntryAgeMs, maxStalenessMs, 'revocationCache.maxEntryAgeMs') ?? Math.max(defaults.maxEntryAgeMs, maxStalenessMs),
    maxVerifiedTokens: wholeNumber(cache.maxVerifiedTokens, 'revocationCache.maxVerifiedTokens') ?? defaults.maxVerifiedTokens,
  };
}

/**
 * Validates the options given to `forRoot`/`forRootAsync` and fills in the defaults
 * ({@link DEFAULT_OPTIONS}). The checks that need the running data source stay where
 * its metadata is: `PasswordChangeSubscriber` checks `userEntity`, `passwordField` and
 * the `id` column of the default `subjectOf`; `TokenCodec` reads key material.
 *
 * @throws TokenResourceConfigError naming the option and how to fix it.
 */
export function resolveOptions(options: TokenResourceModuleOptions): ResolvedTokenResourceOptions {
  const storeAllTokens = options.storeAllTokens ?? DEFAULT_OPTIONS.storeAllTokens;
  const requirePresence = options.requireTokenPresenceForAuthentication ?? DEFAULT_OPTIONS.requireTokenPresenceForAuthentication;
  if (requirePresence && !storeAllTokens) {
    fail(
      'requireTokenPresenceForAuthentication needs storeAllTokens: true, or the guard would refuse every token it never stored. Set storeAllTokens: true or drop requireTokenPresenceForAuthentication.',
    );
  }
  const authenticationPurpose = options.authenticationPurpose ?? DEFAULT_OPTIONS.authenticationPurpose;
  if (!isPurpose(authenticationPurpose) || authenticationPurpose === REVOCATION_PURPOSE) {
    fail(
      `authenticationPurpose must be a purpose other than '${REVOCATION_PURPOSE}' (a non-empty, well-formed string without NUL of at most ${MAX_PURPOSE_BYTES} bytes).`,
    );
  }
  const expunge = options.expunge ?? {};
  const logOutEverywhere = resolveLogOutEverywhere(options.logOutEverywhere ?? {});
  return {
    dataSource: options.dataSource ?? DEFAULT_OPTIONS.dataSource,
    entity: options.entity ?? DEFAULT_OPTIONS.entity,
    jwt: resolveJwtOptions(options.jwt),
    storeAllTokens,
    requireTokenPresenceForAuthentication: requirePresence,
    authenticationPurpose,
    storeTimeoutMs: positive(options.storeTimeoutMs, 'storeTimeoutMs') ?? DEFAULT_OPTIONS.storeTimeoutMs,
    expunge: {
      enabled: expunge.enabled ?? DEFAULT_OPTIONS.expunge.enabled,
      cron: expungeCronOf(expunge),
      startupJitterSeconds:
        between(expunge.startupJitterSeconds, 0, 86_400, 'expunge.startupJitterSeconds') ?? DEFAULT_OPTIONS.expunge.startupJitterSeconds,
      batchSize: positive(expunge.batchSize, 'expunge.batchSize', true) ?? DEFAULT_OPTIONS.expunge.batchSize,
    },
    logOutEverywhere,
    revocationCache: resolveRevocationCache(options.revocationCache ?? {}),
    sessions: resolveSessions(options.sessions ?? {}, logOutEverywhere.markerLifetimeSeconds),
    isGlobal: options.isGlobal ?? DEFAULT_OPTIONS.isGlobal,
  };
}
