export { Token } from './entities/token.entity.js';
export { CreateTokensTable1763900000000, createTokensTableMigration } from './migrations/create-tokens-table.migration.js';
export * from './interfaces/token-resource-options.interface.js';
export {
  EXPUNGE_JOB_NAME,
  LOG_OUT_EVERYWHERE_PURPOSE,
  REVOCATION_PURPOSE,
  TOKEN_REPOSITORY,
  TOKEN_RESOURCE_OPTIONS,
} from './token-resource.constants.js';
export * from './token-resource.exceptions.js';
export { TokenResourceModule } from './token-resource.module.js';
export * from './token.service.js';
// Building blocks for subclasses of RevokedTokenGuard and for benchmarks. They are exported
// so that the guard's protected hooks can be typed and overridden, but their shapes may
// change in a minor release; applications should use the services above.
export type { ResolvedTokenResourceOptions } from './options/resolved-options.js';
export { TokenCodec, type TokenClaimsPayload } from './jwt/token-codec.js';
export { TokenStore } from './token.store.js';
export { ExpungerService, type ExpungeRunResult } from './expunger/expunger.service.js';
export { LogOutEverywhereService, type LogOutEverywhereOptions } from './log-out-everywhere/log-out-everywhere.service.js';
export { LogOutMarkerCache } from './marker-cache/log-out-marker.cache.js';
export { PasswordChangeSubscriber } from './log-out-everywhere/password-change.subscriber.js';
export { RevokedTokenGuard } from './guard/revoked-token.guard.js';
export { OutageLog, type OutageDependency } from './outage-log.js';
export { TokenClaims, getTokenClaims } from './guard/token-claims.decorator.js';
export { SkipTokenCheck } from './guard/skip-token-check.decorator.js';
export { SKIP_TOKEN_CHECK_KEY, TOKEN_CLAIMS_KEY, TOKEN_GUARD_MESSAGES } from './guard/token-guard.constants.js';
