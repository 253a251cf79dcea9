import { Token } from '../entities/token.entity.js';
import { REVOCATION_PURPOSE } from '../token-resource.constants.js';
import { DEFAULT_AUTHENTICATION_PURPOSE } from '../token-resource.internal-constants.js';

/**
 * The default `logOutEverywhere.subjectOf`: `String(user.id)`, refusing a user without `id`
 * rather than logging out the subject `'undefined'`.
 */
export function defaultSubjectOf(user: { id?: unknown }): string {
  if (user?.id === undefined || user.id === null) {
    throw new TypeError(
      "logOutEverywhere.subjectOf: the user has no id; set logOutEverywhere.subjectOf to say which property is the JWT's sub",
    );
  }
  return `${user.id as string | number}`;
}

/**
 * Every default of the module options, in one place. `revocationCache.maxEntryAgeMs`
 * defaults to the larger of `maxEntryAgeMs` here and `maxStalenessMs`, and
 * `revocationCache.announce` to `revocationCache.enabled`.
 */
export const DEFAULT_OPTIONS = {
  dataSource: 'default',
  entity: Token,
  isGlobal: false,
  jwt: { clockToleranceSeconds: 0 },
  storeAllTokens: false,
  requireTokenPresenceForAuthentication: false,
  authenticationPurpose: DEFAULT_AUTHENTICATION_PURPOSE,
  storeTimeoutMs: 2000,
  expunge: { enabled: true, cron: '0 0,12 * * *', startupJitterSeconds: 60, batchSize: 20_000 },
  logOutEverywhere: {
    excludePurposes: [REVOCATION_PURPOSE],
    applyOnPasswordChange: false,
    passwordField: 'hashedPassword',
    subjectOf: defaultSubjectOf,
    markerLifetime: '365d',
  },
  revocationCache: { enabled: false, maxStalenessMs: 1000, maxEntries: 100_000, maxEntryAgeMs: 60_000, maxVerifiedTokens: 20_000 },
  sessions: { accessTokenExpiresIn: '15m', refreshTokenExpiresIn: '30d', reuseIntervalSeconds: 0 },
} as const;
