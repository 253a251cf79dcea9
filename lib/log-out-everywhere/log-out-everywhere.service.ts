import { Inject, Injectable, Logger, Optional, type OnModuleDestroy, type OnModuleInit } from '@nestjs/common';
import type { DataSource, EntityManager, ObjectLiteral, QueryRunner } from 'typeorm';
import type { ResolvedTokenResourceOptions } from '../options/resolved-options.js';
import { REVOCATION_PURPOSE } from '../token-resource.constants.js';
import {
  LOG_OUT_EVERYWHERE_PURPOSE,
  SESSION_JTI_PREFIX,
  TOKEN_DATA_SOURCE,
  TOKEN_RESOURCE_OPTIONS,
} from '../token-resource.internal-constants.js';
import { sessionOfJti } from '../sessions/session-jtis.js';
import type { RevocationKind } from '../observability/metric-names.js';
import { NO_METRICS, TokenResourceMetrics } from '../observability/token-resource-metrics.js';
import { RevocationCache } from '../revocation-cache/revocation.cache.js';
import { TokenStore } from '../token.store.js';
import { registerSubscriber } from '../typeorm/register-subscriber.js';
import { checkJti, checkPurpose, checkSubject } from '../validation/token-values.js';
import { canonicalPurposes, logOutMarkerJti, purposePasses } from './log-out-marker.js';
import { PostCommitLogOuts } from './post-commit-log-outs.js';

/** Options of {@link LogOutEverywhereService.logOutEverywhere}. */
export interface LogOutEverywhereOptions {
  /**
   * Only stored tokens of these purposes are revoked. Default: the module's
   * `logOutEverywhere.includePurposes`, else every purpose.
   */
  includePurposes?: string[];
  /**
   * Stored tokens of these purposes are never revoked. Default: the module's
   * `logOutEverywhere.excludePurposes` (`['revocation']`). Revocation rows and the
   * internal marker rows are never touched, whatever the list says.
   */
  excludePurposes?: string[];
  /**
   * Keep this token valid ("log out my other devices"), stored or not. A `jti` of at most 255
   * bytes of UTF-8. The `jti` of a session's token (`SessionService`) keeps that whole
   * session: its row and refresh token stay, so the device can go on refreshing; the
   * session's other access tokens issued before the log-out are revoked.
   */
  exceptJti?: string;
  /**
   * Run inside this manager's transaction (for example a password change's), so that
   * the log-out commits or rolls back with it. Default: its own autocommit statement.
   */
  manager?: EntityManager;
  /**
   * Also revoke tokens that were never stored, by recording the log-out moment for the
   * subject. Default: whether the purpose filter admits the module's
   * `authenticationPurpose` (`'user'`), since an unstored token has no purpose on record.
   */
  revokeUnstored?: boolean;
  /**
   * With a `manager` inside a transaction: log out once more after TypeORM commits it, so
   * that tokens issued while it was pending are revoked too (a login that still read the
   * old password hash, or a token this transaction issued after the log-out: keep that
   * one with `exceptJti`). A rollback repeats nothing. The repeat waits for locks at most
   * `storeTimeoutMs` from the commit; a repeat that fails is logged, not thrown.
   *
   * Default `false`; `true` for {@link LogOutEverywhereService.logOutOnPasswordChange}
   * and so for `applyOnPasswordChange`.
   */
  repeatAfterCommit?: boolean;
}

/** One log-out, with every default resolved: the parameters of its statement. */
interface LogOutArgs {
  subject: string;
  /** Canonical (see `canonicalPurposes`); `null`: every purpose. */
  includePurposes: string[] | null;
  /** Canonical. */
  excludePurposes: string[];
  exceptJti: string | null;
  revokeUnstored: boolean;
}

function checkPurposeList(value: unknown, name: string): asserts value is string[] | undefined {
  if (value === undefined) return;
  if (!Array.isArray(value)) throw new TypeError(`${name} must be an array of purposes`);
  value.forEach((purpose, i) => checkPurpose(purpose, `${name}[${i}]`));
}

/**
 * Revokes all of a subject's tokens at once: "log out everywhere", "log out my other
 * devices", and the automatic log-out on password change.
 *
 * Every row a log-out writes is stamped for the revocation caches of all instances
 * (`TokenStore.changeStamp`); with `revocationCache.announce` they are woken after the commit.
 */
@Injectable()
export class LogOutEverywhereService implements OnModuleInit, OnModuleDestroy {
  private readonly logger = new Logger(LogOutEverywhereService.name);
  /** Log-outs made inside transactions that have not ended yet, to be made again when they commit. */
  private readonly postCommit = new PostCommitLogOuts<LogOutArgs>(
    { repeat: (args, runner, lockTimeoutMs) => this.repeat(args, runner, lockTimeoutMs) },
    this.logger,
    this.options.storeTimeoutMs,
  );
  private unregister?: () => void;

  /**
   * One statement does a whole log-out, so that it is atomic even in autocommit: `marker`
   * upserts the subject's marker row (one level per purpose filter, merged with the locked
   * current row), `revoked` flips the subject's unexpired stored rows that pass the filter;
   * both stamp what they write for the revocation caches. The marker is written first, so
   * concurrent log-outs of one subject cannot deadlock. Session rows and refresh tokens are
   * rows like any: flipping them ends the sessions, except the one `exceptJti` belongs to
   * (`$10`, its `sid`). docs/internals.md explains its composition.
   */
  private readonly logOutStatement = this.store.statement(
    'log_out_everywhere',
    `
    WITH fresh AS (
      SELECT jsonb_build_array(to_jsonb($3::text[]), to_jsonb($4::text[]))::text AS key,
             jsonb_strip_nulls(jsonb_build_object(
               'at', $6::float8, 'exceptJti', $5::text, 'exceptRevokedUpTo', 0,
               'includePurposes', to_jsonb($3::text[]), 'excludePurposes', to_jsonb($4::text[]))) AS level
    ), marker AS (
      INSERT INTO ${this.store.table} AS t (jti, subject, expires_at, purpose, extra_data)
      SELECT $2::text, $1::text, GREATEST(now(), to_timestamp($6::float8 / 1000)) + make_interval(secs => $7::float8),
             '${LOG_OUT_EVERYWHERE_PURPOSE}',
             jsonb_build_object('levels', jsonb_build_object(fresh.key, fresh.level))
        FROM fresh
       WHERE $8::boolean
      ON CONFLICT (jti) DO UPDATE SET
        subject = EXCLUDED.subject,
        purpose = EXCLUDED.purpose,
        expires_at = CASE WHEN t.purpose = '${LOG_OUT_EVERYWHERE_PURPOSE}'
                          THEN GREATEST(t.expires_at, EXCLUDED.expires_at) ELSE EXCLUDED.expires_at END,
        extra_data = (
          SELECT jsonb_build_object('levels', prior.levels || jsonb_build_object(fresh.key, fresh.level || jsonb_build_object(
                   'at', GREATEST($6::float8, (old.level->>'at')::float8),
                   'exceptRevokedUpTo', CASE
                     WHEN old.level IS NULL THEN 0
                     WHEN (old.level->>'exceptJti') IS NOT DISTINCT FROM $5::text
                       THEN COALESCE((old.level->>'exceptRevokedUpTo')::float8, 0)
                     ELSE COALESCE((old.level->>'at')::float8, 0) END)))
            FROM fresh
           CROSS JOIN LATERAL (SELECT CASE
                    WHEN t.purpose <> '${LOG_OUT_EVERYWHERE_PURPOSE}' THEN '{}'::jsonb
                    WHEN t.extra_data->'levels' IS NOT NULL THEN t.extra_data->'levels'
                    ELSE '{}'::jsonb END AS levels) AS prior
           CROSS JOIN LATERAL (SELECT prior.levels->fresh.key AS level) AS old),
        updated_at = now(), ${this.store.changeStamp}
      RETURNING 1
    ), revoked AS (
      UPDATE ${this.store.table} SET purpose = '${REVOCATION_PURPOSE}', updated_at = now(), ${this.store.changeStamp}
       WHERE subject = $1::text
         AND jti <> $2::text
         AND purpose <> '${REVOCATION_PURPOSE}' AND purpose <> '${LOG_OUT_EVERYWHERE_PURPOSE}'
         AND ($3::text[] IS NULL OR purpose = ANY ($3::text[]))
         AND purpose <> ALL ($4::text[])
         AND ($5::text IS NULL OR jti <> $5::text)
         AND ($10::text IS NULL OR (jti <> ('${SESSION_JTI_PREFIX}' || $10::text) AND NOT starts_with(jti, $10::text || '.')))
         AND expires_at > now() - make_interval(secs => $9::float8)
      RETURNING 1
    )
    SELECT (SELECT count(*) FROM marker)::int AS marked, (SELECT count(*) FROM revoked)::int AS revoked`,
  );

  constructor(
    @Inject(TOKEN_RESOURCE_OPTIONS) private readonly options: ResolvedTokenResourceOptions,
    @Inject(TOKEN_DATA_SOURCE) private readonly dataSource: DataSource,
    private readonly store: TokenStore,
    private readonly cache: RevocationCache,
    @Optional() private readonly metrics: TokenResourceMetrics = NO_METRICS,
  ) {}

  /**
   * Listens for the commits and rollbacks of the token table's data source, for
   * `repeatAfterCommit`, also after the data source is destroyed and initialised again.
   */
  onModuleInit(): void {
    this.unregister = registerSubscriber(this.dataSource, this.postCommit);
  }

  /** Stops listening, so that a closed application leaves no subscriber on a shared data source. */
  onModuleDestroy(): void {
    this.unregister?.();
    this.unregister = undefined;
  }

  /**
   * Revokes every unexpired stored token of `subject` whose purpose passes the
   * include/exclude lists (a purpose in both is excluded), except `opts.exceptJti`, and
   * records the moment (`Date.now()`, the clock of `iat`) so that unstored tokens issued
   * at or before it count as revoked too. With `opts.manager` it commits or rolls back
   * with that transaction. Other instances' revocation caches see it within
   * `revocationCache.maxStalenessMs` of the commit.
   *
   * @returns how many stored tokens it revoked (not expired, already revoked or unstored
   *   tokens, nor its own marker row).
   * @throws TypeError for a subject, `exceptJti` or purpose the token table cannot store
   *   (empty, a lone UTF-16 surrogate, NUL, over 1024 / 255 / 255 bytes of UTF-8), or purpose
   *   lists that are not arrays. Nothing is written.
   * @throws TokenResourceUnavailableError when PostgreSQL cannot be reached.
   */
  async logOutEverywhere(subject: string, opts: LogOutEverywhereOptions = {}): Promise<number> {
    return this.logOut(subject, opts, 'log_out_everywhere');
  }

  /** {@link logOutEverywhere}, counted in `token_resource.revocations` as `kind`. */
  private async logOut(subject: string, opts: LogOutEverywhereOptions, kind: RevocationKind): Promise<number> {
    checkSubject(subject);
    if (opts.exceptJti !== undefined) checkJti(opts.exceptJti, 'exceptJti');
    const defaults = this.options.logOutEverywhere;
    const includePurposes = opts.includePurposes ?? defaults.includePurposes;
    const excludePurposes = opts.excludePurposes ?? defaults.excludePurposes;
    checkPurposeList(includePurposes, 'includePurposes');
    checkPurposeList(excludePurposes, 'excludePurposes');
    const args: LogOutArgs = {
      subject,
      includePurposes: canonicalPurposes(includePurposes) ?? null,
      excludePurposes: canonicalPurposes(excludePurposes ?? []),
      exceptJti: opts.exceptJti ?? null,
      revokeUnstored: opts.revokeUnstored ?? purposePasses(this.options.authenticationPurpose, includePurposes, excludePurposes),
    };
    const revoked = await this.run(args, opts.manager);
    // Other instances poll it once it commits; this one must not wait for its own poll.
    this.cache.written({ kind: 'subject', key: subject }, opts.manager);
    this.metrics.revoked(kind, opts.manager);
    const runner = opts.manager?.queryRunner;
    if (opts.repeatAfterCommit === true && runner && !runner.isReleased && runner.isTransactionActive) {
      this.postCommit.add(runner, subject, args);
    }
    return revoked;
  }

  /**
   * Makes a log-out again on the committed transaction's connection, in a transaction of
   * its own (`SET LOCAL lock_timeout` needs one), and leaves the connection outside any
   * transaction whatever happens. Plain `BEGIN` rather than `startTransaction()`, which
   * would broadcast transaction events while TypeORM is still broadcasting the commit.
   */
  private async repeat(args: LogOutArgs, runner: QueryRunner, lockTimeoutMs: number): Promise<void> {
    try {
      // A whole number of milliseconds, at most PostgreSQL's limit (INT_MAX); 0 would mean no limit.
      const ms = Math.min(Math.max(1, Math.ceil(lockTimeoutMs)), 2_147_483_647);
      await runner.query(`BEGIN; SET LOCAL lock_timeout = ${ms}`);
      await this.run(args, runner.manager);
      await runner.query('COMMIT');
    } catch (error) {
      // A failed statement leaves the transaction aborted; a dead connection fails this too.
      await runner.query('ROLLBACK').catch(() => undefined);
      throw error;
    }
    this.cache.written({ kind: 'subject', key: args.subject });
  }

  /** Runs the log-out statement through `manager` (its transaction, if any); forgets nothing. */
  private async run(args: LogOutArgs, manager: EntityManager | undefined): Promise<number> {
    const { rows } = await this.store.execute<{ revoked: number }>(
      this.logOutStatement,
      [
        args.subject,
        logOutMarkerJti(args.subject),
        args.includePurposes,
        args.excludePurposes,
        args.exceptJti,
        Date.now(),
        this.options.logOutEverywhere.markerLifetimeSeconds,
        args.revokeUnstored,
        this.options.jwt.clockToleranceSeconds,
        args.exceptJti === null ? null : (sessionOfJti(args.exceptJti) ?? null),
      ],
      manager,
    );
    return rows[0]?.revoked ?? 0;
  }

  /**
   * Logs a user out everywhere because their password changed, in `manager`'s transaction,
   * and again after it commits (`repeatAfterCommit`, on by default here). For code that
   * changes passwords without the `save` that `applyOnPasswordChange` watches (raw SQL,
   * `update()`, a query builder, another ORM). The subject is
   * `logOutEverywhere.subjectOf(user)`. README "On password change" covers the windows.
   *
   * @param user the user whose password changed; only `subjectOf` reads it.
   * @param manager the password change's transaction. Default: autocommit.
   * @param opts further options, for example `exceptJti` to keep the session that changed
   *   it; `repeatAfterCommit` defaults to `true`.
   * @returns how many stored tokens were revoked (by the first log-out; the repeat's are not counted).
   * @throws TypeError when `subjectOf(user)` gives no subject the token table can store (not
   *   a string, empty, NUL, ...; the default `subjectOf` throws for a user without `id`):
   *   nothing is written, and a `save` that changed the password rejects and rolls back.
   */
  async logOutOnPasswordChange(
    user: ObjectLiteral,
    manager?: EntityManager,
    opts: Omit<LogOutEverywhereOptions, 'manager'> = {},
  ): Promise<number> {
    const subject = this.options.logOutEverywhere.subjectOf(user);
    checkSubject(subject, 'logOutEverywhere.subjectOf(user)');
    return this.logOut(subject, { ...opts, repeatAfterCommit: opts.repeatAfterCommit ?? true, manager }, 'password_change');
  }
}
