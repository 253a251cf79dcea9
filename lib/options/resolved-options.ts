import type { Type } from '@nestjs/common';
import type { EntityTarget, ObjectLiteral } from 'typeorm';
import { REVOCATION_PURPOSE } from '../token-resource.constants.js';
import { DEFAULT_AUTHENTICATION_PURPOSE } from '../token-resource.internal-constants.js';
import { TokenResourceConfigError } from '../token-resource.exceptions.js';
import { Token } from '../entities/token.entity.js';
import type { TokenResourceJwtOptions, TokenResourceModuleOptions } from '../interfaces/token-resource-options.interface.js';
import { durationToSeconds } from '../jwt/duration.js';
import { expungeCronOf } from '../expunger/expunge-schedule.js';
import { isPurpose, MAX_PURPOSE_BYTES } from '../validation/token-values.js';

/** Module options with every default filled in; what the services read. */
export interface ResolvedTokenResourceOptions {
  dataSource: string;
  entity: Type<Token>;
  jwt: TokenResourceJwtOptions & { clockToleranceSeconds: number };
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
    subjectOf: (user: any) => string;
    markerLifetimeSeconds: number;
  };
  logOutMarkerCache: { enabled: boolean; maxStalenessMs: number; maxSubjects: number; maxEntryAgeMs: number };
  isGlobal: boolean;
}

/**
 * The default `logOutEverywhere.subjectOf`: `String(user.id)`, refusing a user without `id`
 * rather than logging out the subject `'undefined'`.
 */
export function defaultSubjectOf(user: { id?: unknown }): string {
  if (user?.id === undefined || user.id === null) {
    throw new TypeError("logOutEverywhere.subjectOf: the user has no id; set logOutEverywhere.subjectOf to say which property is the JWT's sub");
  }
  return String(user.id);
}

function fail(message: string): never {
  throw new TokenResourceConfigError(`nestjs-token-resource: ${message}`);
}

function positiveNumber(value: number | undefined, fallback: number, name: string, integer = false): number {
  if (value === undefined) return fallback;
  if (typeof value !== 'number' || !Number.isFinite(value) || value <= 0 || (integer && !Number.isInteger(value))) {
    fail(`${name} must be a positive ${integer ? 'integer' : 'number'}, got ${String(value)}.`);
  }
  return value;
}

function atLeast(value: number | undefined, fallback: number, minimum: number, name: string): number {
  if (value === undefined) return fallback;
  if (typeof value !== 'number' || !Number.isFinite(value) || value < minimum) {
    fail(`${name} must be a number >= ${minimum}, got ${String(value)}.`);
  }
  return value;
}

function between(value: number | undefined, fallback: number, minimum: number, maximum: number, name: string): number {
  if (value === undefined) return fallback;
  if (typeof value !== 'number' || !Number.isFinite(value) || value < minimum || value > maximum) {
    fail(`${name} must be a number from ${minimum} to ${maximum}, got ${String(value)}.`);
  }
  return value;
}

function purposeList(value: string[] | undefined, name: string): string[] | undefined {
  if (value === undefined) return undefined;
  if (!Array.isArray(value) || value.some((purpose) => !isPurpose(purpose))) {
    fail(`${name} must be an array of purposes: non-empty, well-formed strings without NUL of at most ${MAX_PURPOSE_BYTES} bytes.`);
  }
  return value;
}

/**
 * Validates the options given to `forRoot`/`forRootAsync` and fills in the defaults.
 * Key material is checked separately when the JWT keys are built.
 *
 * @throws TokenResourceConfigError naming the option and how to fix it.
 */
export function resolveOptions(options: TokenResourceModuleOptions | undefined): ResolvedTokenResourceOptions {
  if (!options || typeof options !== 'object') fail('options are required: pass { jwt: { secret } } or another key source.');
  if (!options.jwt || typeof options.jwt !== 'object') {
    fail('the jwt option is required: set exactly one of jwt.secret, jwt.publicKey or jwt.jwksUri.');
  }
  const storeAllTokens = options.storeAllTokens ?? false;
  const requirePresence = options.requireTokenPresenceForAuthentication ?? false;
  if (requirePresence && !storeAllTokens) {
    fail('requireTokenPresenceForAuthentication needs storeAllTokens: true, or the guard would refuse every token it never stored. Set storeAllTokens: true or drop requireTokenPresenceForAuthentication.');
  }
  const clockToleranceSeconds = options.jwt.clockToleranceSeconds ?? 0;
  if (typeof clockToleranceSeconds !== 'number' || !Number.isFinite(clockToleranceSeconds) || clockToleranceSeconds < 0) {
    fail(`jwt.clockToleranceSeconds must be a number of seconds >= 0, got ${String(clockToleranceSeconds)}.`);
  }
  const authenticationPurpose = options.authenticationPurpose ?? DEFAULT_AUTHENTICATION_PURPOSE;
  if (!isPurpose(authenticationPurpose) || authenticationPurpose === REVOCATION_PURPOSE) {
    fail(`authenticationPurpose must be a purpose other than '${REVOCATION_PURPOSE}' (a non-empty, well-formed string without NUL of at most ${MAX_PURPOSE_BYTES} bytes).`);
  }
  const logOut = options.logOutEverywhere ?? {};
  const applyOnPasswordChange = logOut.applyOnPasswordChange ?? false;
  if (applyOnPasswordChange && !logOut.userEntity) {
    fail('logOutEverywhere.applyOnPasswordChange needs logOutEverywhere.userEntity: the entity whose password changes should log its user out.');
  }
  if (logOut.subjectOf !== undefined && typeof logOut.subjectOf !== 'function') {
    fail('logOutEverywhere.subjectOf must be a function (user) => string.');
  }
  let markerLifetimeSeconds: number;
  try {
    markerLifetimeSeconds = durationToSeconds(logOut.markerLifetime ?? '365d');
  } catch (error) {
    fail(`logOutEverywhere.markerLifetime: ${(error as Error).message}`);
  }
  const expunge = options.expunge ?? {};
  const markerCache = options.logOutMarkerCache ?? {};
  const maxStalenessMs = atLeast(markerCache.maxStalenessMs, 1000, 100, 'logOutMarkerCache.maxStalenessMs');
  return {
    dataSource: options.dataSource ?? 'default',
    entity: options.entity ?? Token,
    jwt: { ...options.jwt, clockToleranceSeconds },
    storeAllTokens,
    requireTokenPresenceForAuthentication: requirePresence,
    authenticationPurpose,
    storeTimeoutMs: positiveNumber(options.storeTimeoutMs, 2000, 'storeTimeoutMs'),
    expunge: {
      enabled: expunge.enabled ?? true,
      cron: expungeCronOf(expunge),
      startupJitterSeconds: between(expunge.startupJitterSeconds, 60, 0, 86_400, 'expunge.startupJitterSeconds'),
      batchSize: positiveNumber(expunge.batchSize, 20_000, 'expunge.batchSize', true),
    },
    logOutEverywhere: {
      includePurposes: purposeList(logOut.includePurposes, 'logOutEverywhere.includePurposes'),
      excludePurposes: purposeList(logOut.excludePurposes, 'logOutEverywhere.excludePurposes') ?? [REVOCATION_PURPOSE],
      applyOnPasswordChange,
      userEntity: logOut.userEntity,
      passwordField: logOut.passwordField ?? 'hashedPassword',
      subjectOf: logOut.subjectOf ?? defaultSubjectOf,
      markerLifetimeSeconds,
    },
    logOutMarkerCache: {
      enabled: markerCache.enabled ?? false,
      maxStalenessMs,
      maxSubjects: positiveNumber(markerCache.maxSubjects, 100_000, 'logOutMarkerCache.maxSubjects', true),
      maxEntryAgeMs: atLeast(markerCache.maxEntryAgeMs, Math.max(60_000, maxStalenessMs), maxStalenessMs, 'logOutMarkerCache.maxEntryAgeMs'),
    },
    isGlobal: options.isGlobal ?? false,
  };
}
