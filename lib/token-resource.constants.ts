/** Name under which the expunger's cron job is registered in `SchedulerRegistry`. */
export const EXPUNGE_JOB_NAME = 'nestjs-token-resource:expunge';

/** Purpose of a row that marks its `jti` as revoked. */
export const REVOCATION_PURPOSE = 'revocation';
