/** Injection token of the resolved {@link TokenResourceModuleOptions}. */
export const TOKEN_RESOURCE_OPTIONS = Symbol('TOKEN_RESOURCE_OPTIONS');

/** Injection token of the repository of the configured token entity. */
export const TOKEN_REPOSITORY = Symbol('TOKEN_REPOSITORY');

/** Injection token of the TypeORM data source that holds the token table. */
export const TOKEN_DATA_SOURCE = Symbol('TOKEN_DATA_SOURCE');

/**
 * Purpose of the per-subject log-out-everywhere marker row. It lives in the same
 * table so that the revoked-check answers both questions with one primary-key lookup.
 */
export const LOG_OUT_EVERYWHERE_PURPOSE = 'log_out_everywhere';

/** `jti` prefix of a subject's log-out-everywhere marker row. */
export const LOG_OUT_EVERYWHERE_JTI_PREFIX = 'log-out-everywhere:';

/**
 * `jti` prefix reserved for the expunger's own rows. `TokenService` refuses to write a
 * token under it and never returns a row under it.
 */
export const EXPUNGER_JTI_PREFIX = 'expunger:';

/**
 * `jti` of the expunger's run record, one row in each token table: when a run last
 * completed, and which instance holds the lease of the run in progress. Keeping it in
 * the token table itself spares applications a migration.
 */
export const EXPUNGE_RECORD_JTI = `${EXPUNGER_JTI_PREFIX}run`;

/** Purpose of the expunger's run record row; its `subject` is `''`, which no token has. */
export const EXPUNGE_RECORD_PURPOSE = 'expunger_run';

/** Default purpose of tokens issued and of the guard's presence check. */
export const DEFAULT_AUTHENTICATION_PURPOSE = 'user';

/** Default purpose of confirmation-change rows. */
export const DEFAULT_CONFIRM_PURPOSE = 'confirm';

/** Default lifetime of issued tokens. */
export const DEFAULT_EXPIRES_IN = '7d';

/**
 * `jti` prefix of a session's row (`session:<sid>`), which the revoked-check reads with the
 * token's own row and its subject's marker. `TokenService` refuses to write a token under it.
 */
export const SESSION_JTI_PREFIX = 'session:';

/** Purpose of a live session's row; it becomes `'revocation'` when the session is revoked. */
export const SESSION_PURPOSE = 'session';

/** Purpose (claim and stored row) of a session's refresh tokens, which the guard refuses. */
export const REFRESH_PURPOSE = 'refresh';
