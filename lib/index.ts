export { Token } from './entities/token.entity.js';
export { CreateTokensTable1763900000000, createTokensTableMigration } from './migrations/create-tokens-table.migration.js';
export type {
  TokenResourceExpungeOptions,
  TokenResourceJwtOptions,
  TokenResourceLogOutEverywhereOptions,
  TokenResourceModuleAsyncOptions,
  TokenResourceModuleOptions,
  TokenResourceOptionsFactory,
  TokenResourceRevocationCacheOptions,
  TokenResourceSessionsOptions,
  TokenResourceFactoryOptions,
} from './interfaces/token-resource-options.interface.js';
export { TokenResourceModule } from './token-resource.module.js';
export { EXPUNGE_JOB_NAME, REVOCATION_PURPOSE } from './token-resource.constants.js';
export {
  InvalidTokenError,
  RefreshTokenReusedError,
  TokenAlreadyRevokedError,
  TokenResourceConfigError,
  TokenResourceError,
  TokenResourceUnavailableError,
} from './token-resource.exceptions.js';
export {
  TokenService,
  type ExpungeExpiredOptions,
  type GetTokenQuery,
  type IssuedToken,
  type IssueTokenInput,
  type ListTokensOptions,
  type RevokeJtiOptions,
  type RevokeOptions,
  type StoreConfirmationChangesInput,
  type StoreTokenInput,
} from './token.service.js';
export { LogOutEverywhereService, type LogOutEverywhereOptions } from './log-out-everywhere/log-out-everywhere.service.js';
export {
  SessionService,
  type RefreshSessionOptions,
  type SessionSummary,
  type SessionTokens,
  type StartSessionInput,
} from './sessions/session.service.js';
export { RevocationCache } from './revocation-cache/revocation.cache.js';
export { ExpungerService, type ExpungeRunResult } from './expunger/expunger.service.js';
export { RevokedTokenGuard } from './guard/revoked-token.guard.js';
export { RevokedTokenCheck } from './guard/revoked-token.check.js';
export { TokenStoreHealthIndicator, type TokenStoreHealth } from './observability/token-store-health.indicator.js';
export { getTokenClaims, TokenClaims } from './guard/token-claims.decorator.js';
export type { TokenClaimsPayload } from './jwt/token-codec.js';
export { SkipTokenCheck } from './guard/skip-token-check.decorator.js';
