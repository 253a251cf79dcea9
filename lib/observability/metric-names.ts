/** The OpenTelemetry meter (instrumentation scope) every instrument of the library belongs to. */
export const METER_NAME = 'nestjs-token-resource';

/** The instruments the library records, by name; README "Observability" documents each. */
export const METRIC_NAMES = {
  checks: 'token_resource.checks',
  checkDuration: 'token_resource.check.duration',
  revocations: 'token_resource.revocations',
  expungeDeleted: 'token_resource.expunge.deleted',
  expungeDuration: 'token_resource.expunge.duration',
  refreshReuseDetected: 'token_resource.refresh.reuse_detected',
  cacheLookups: 'token_resource.cache.lookups',
} as const;

/** The `outcome` of a check of a bearer token (`token_resource.checks`). */
export type CheckOutcome = 'admitted' | 'revoked' | 'not_recognised' | 'invalid' | 'unavailable';

/** The `kind` of a revocation (`token_resource.revocations`). */
export type RevocationKind = 'token' | 'jti' | 'log_out_everywhere' | 'password_change' | 'session';

/**
 * Bucket boundaries, in seconds, for the duration histograms: the SDK's default ones
 * (0, 5, 10, 25, ... 10000) are meant for milliseconds and would put every check in one bucket.
 */
export const SECONDS_BUCKETS = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300];
