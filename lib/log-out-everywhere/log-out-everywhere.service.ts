import { Inject, Injectable, Logger, type OnModuleDestroy, type OnModuleInit } from '@nestjs/common';
import type { EntityManager, ObjectLiteral, QueryRunner } from 'typeorm';
import type { ResolvedTokenResourceOptions } from '../options/resolved-options.js';
import { REVOCATION_PURPOSE } from '../token-resource.constants.js';
import { LOG_OUT_EVERYWHERE_PURPOSE, TOKEN_RESOURCE_OPTIONS } from '../token-resource.internal-constants.js';
import { LogOutMarkerCache } from '../marker-cache/log-out-marker.cache.js';
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
  /** Keep this token valid ("log out my other devices"), stored or not. A `jti` of at most 255 bytes of UTF-8. */
  exceptJti?: string;
  /**
   * Run inside this manager's transaction (for example a password change's), so that
   * the log-out commits or rolls back with it. Default: its own autocommit statement.
   */
  manager?: EntityManager;
  /**
   * Also revoke tokens that were never stored, by recording the log-out moment for the
   * subject. An unstored token has no purpose on record, so by default this happens
   * only when the purpose filter admits the module's `authenticationPurpose`
   * (`'user'`): a log-out limited to, say, `includePurposes: ['confirm']` leaves the
   * user's sessions alone.
   */
  revokeUnstored?: boolean;
  /**
   * With a `manager` inside a transaction: once that transaction commits, log out once
   * more (in a short transaction of its own, on the same connection), so that the recorded
   * moment follows the commit rather than the statement. Tokens issued while the
   * transaction was pending are then revoked too: a login on another connection that still
   * read the old password hash, but also a token the same transaction issued after the
   * log-out (issue it after the commit, or keep it with `exceptJti`). The transaction must
   * be committed through TypeORM (`EntityManager.transaction()`,
   * `QueryRunner.commitTransaction()`); a rollback, or a rollback to a savepoint taken
   * before the log-out, repeats nothing.
   *
   * The repeat runs inside `commitTransaction()` (TypeORM awaits its subscribers), so its
   * lock waits are bounded (PostgreSQL's `lock_timeout`): a long transaction holding the
   * subject's marker row must not hang a committed `save()`. The bound is the module's
   * `storeTimeoutMs` (default 2000 ms), one budget counted from the commit for all the
   * repeats of that commit; each wait for a lock may last what remained of it when its
   * repeat started (so a repeat that finds several rows held in turn may wait once per
   * row). A repeat that fails (the wait ran out, the database gone) is logged as an error
   * naming the subject, not thrown: the transaction has committed by then, and the
   * log-out it made stands.
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
 * **Every log-out runs `pg_notify`.** Its statement announces the subject on the token
 * table's channel, for the marker caches (`logOutMarkerCache`) of all the application's
 * instances, whether or not this instance has its cache on: this one cannot know that no
 * other does. What that implies:
 *
 * - A transaction that contains a log-out (a password change's, say) cannot be prepared
 *   for two-phase commit: PostgreSQL refuses `PREPARE TRANSACTION` after `NOTIFY`.
 * - PostgreSQL's notification queue is shared by the whole cluster (every database), and
 *   is emptied only as fast as its slowest listening session reads it. A session anywhere
 *   that `LISTEN`s and then stops reading, or stays in one transaction for hours, lets it
 *   fill (8 GB by default; the server log warns from half full, naming that session), and
 *   then every transaction with a log-out fails at its COMMIT ("too many notifications in
 *   the NOTIFY queue"), a password change with it, until that session is ended.
 * - Transactions that notified commit one at a time across the cluster (PostgreSQL takes
 *   a global lock at their commit to keep notifications in commit order).
 */
@Injectable()
export class LogOutEverywhereService implements OnModuleInit, OnModuleDestroy {
  private readonly logger = new Logger(LogOutEverywhereService.name);
  /** Log-outs made inside transactions that have not ended yet, to be followed up when they commit. */
  private readonly postCommit = new PostCommitLogOuts<LogOutArgs>({
    forget: (subject) => this.markerCache.forget(subject),
    repeat: (args, runner, lockTimeoutMs) => this.repeat(args, runner, lockTimeoutMs),
  }, this.logger, this.options.storeTimeoutMs);
  private unregister?: () => void;

  /**
   * One statement does both halves of a log-out, so that it is atomic even in
   * autocommit and needs a single round trip:
   *
   * 1. `marker` upserts the subject's marker row (`$8` says whether to). The row keeps
   *    one level per purpose filter, keyed by the canonical filter (`fresh.key`), and a
   *    token is revoked when any level revokes it: a log-out with another filter adds or
   *    updates its own level and leaves the others alone, so it can never spare what an
   *    earlier log-out revoked. Computing the new `extra_data` from the locked current row
   *    inside `ON CONFLICT DO UPDATE` makes successive and concurrent log-outs compose,
   *    whatever their filters: within a level `at` never moves back (app clocks may
   *    differ) and `exceptRevokedUpTo` remembers whether earlier log-outs of that level
   *    already revoked the token kept now; the marker never expires earlier. It expires
   *    `markerLifetime` after the log-out moment `$6` of the application's clock, the clock
   *    of `at`, of the `exp` of the tokens it revokes and of the expunger's cutoff, or after
   *    the database's `now()` if that is later: an application clock ahead of the
   *    database's must not let the expunger delete a marker while tokens it revokes live.
   *    A marker written before levels existed (`{ at, ... }`) becomes the level of its filter.
   * 2. `revoked` flips every unexpired stored row of the subject whose purpose passes the
   *    filter to `'revocation'`, on the `subject` index; a row within `clockToleranceSeconds`
   *    of its expiry still counts, as its token is still accepted. A row a concurrent `revoke` holds is
   *    re-checked after it commits and skipped, so each token is revoked exactly once.
   * 3. `announced` notifies the marker caches of every instance (`LogOutMarkerCache`)
   *    on the table's channel. A notification is delivered when, and only if, the
   *    transaction commits, which is what bounds how stale a cache may be. Every subject
   *    fits a payload (`MAX_SUBJECT_BYTES` is far below PostgreSQL's 8000 bytes).
   *
   * The marker is evaluated first (the scalar subqueries run left to right), so
   * concurrent log-outs of one subject queue on the marker row before they lock any
   * token row: they cannot deadlock each other.
   */
  private readonly logOutStatement = this.store.statement('log_out_everywhere', `
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
                    WHEN t.extra_data->'at' IS NOT NULL THEN jsonb_build_object(
                      jsonb_build_array(t.extra_data->'includePurposes', t.extra_data->'excludePurposes')::text, t.extra_data)
                    ELSE '{}'::jsonb END AS levels) AS prior
           CROSS JOIN LATERAL (SELECT prior.levels->fresh.key AS level) AS old),
        updated_at = now()
      RETURNING 1
    ), revoked AS (
      UPDATE ${this.store.table} SET purpose = '${REVOCATION_PURPOSE}', updated_at = now()
       WHERE subject = $1::text
         AND jti <> $2::text
         AND purpose <> '${REVOCATION_PURPOSE}' AND purpose <> '${LOG_OUT_EVERYWHERE_PURPOSE}'
         AND ($3::text[] IS NULL OR purpose = ANY ($3::text[]))
         AND purpose <> ALL ($4::text[])
         AND ($5::text IS NULL OR jti <> $5::text)
         AND expires_at > now() - make_interval(secs => $9::float8)
      RETURNING 1
    )
    SELECT (SELECT count(*) FROM marker)::int AS marked, (SELECT count(*) FROM revoked)::int AS revoked,
           (SELECT count(*) FROM (SELECT pg_notify('${this.store.logOutChannel}', $1::text) FROM marker) AS announced)::int AS announced`);

  constructor(
    @Inject(TOKEN_RESOURCE_OPTIONS) private readonly options: ResolvedTokenResourceOptions,
    private readonly store: TokenStore,
    private readonly markerCache: LogOutMarkerCache,
  ) {}

  /**
   * Listens for the commits and rollbacks of the token table's data source, for
   * `repeatAfterCommit`, also after the data source is destroyed and initialised again.
   */
  onModuleInit(): void {
    this.unregister = registerSubscriber(this.store.repository.manager.connection, this.postCommit);
  }

  /** Stops listening, so that a closed application leaves no subscriber on a shared data source. */
  onModuleDestroy(): void {
    this.unregister?.();
    this.unregister = undefined;
  }

  /**
   * Revokes, in one set-based statement, every unexpired stored token of `subject` whose
   * purpose passes the include/exclude lists (defaults from the module options; a purpose
   * in both lists is excluded), except
   * `opts.exceptJti`, and records the moment for the subject so that tokens that were
   * never stored and were issued at or before it count as revoked too (`tokenRevoked`
   * and the guard). A token issued after it stays valid; the moment is the
   * application's `Date.now()`, the clock `issueToken` writes `iat` with (in
   * milliseconds), so a whole-second `iat` from another issuer in the same second
   * counts as revoked.
   *
   * Given `opts.manager`, it runs in that manager's transaction and is undone with it;
   * with `opts.repeatAfterCommit` too, it runs once more after that transaction commits.
   *
   * It takes effect on this instance at once: in autocommit when the statement returns,
   * inside a transaction when TypeORM commits it (this instance's marker cache forgets the
   * subject again then, for a check made before the commit cached the state before it). On
   * other instances it takes effect when their caches hear of the commit (`pg_notify`, see
   * the class), within `logOutMarkerCache.maxStalenessMs`.
   *
   * @returns how many stored tokens it revoked (not counting expired or already revoked
   *   tokens, unstored tokens, or its own marker row).
   * @throws TypeError for a subject, `exceptJti` or purpose the token table cannot store
   *   (empty, a lone UTF-16 surrogate, NUL, over 1024 / 255 / 255 bytes of UTF-8), or purpose
   *   lists that are not arrays. Nothing is written.
   * @throws TokenResourceUnavailableError when PostgreSQL cannot be reached.
   */
  async logOutEverywhere(subject: string, opts: LogOutEverywhereOptions = {}): Promise<number> {
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
    // Other instances hear of it when it commits; this one must not wait for its own echo.
    this.markerCache.forget(subject);
    const runner = opts.manager?.queryRunner;
    if (runner && !runner.isReleased && runner.isTransactionActive) {
      this.postCommit.add(runner, subject, args, opts.repeatAfterCommit === true);
    }
    return revoked;
  }

  /**
   * Makes a log-out again after its transaction committed, on that transaction's
   * connection, in a transaction of its own whose lock waits end after `lockTimeoutMs`
   * (`SET LOCAL` needs one, and it resets on its own at the end). Leaves the connection
   * outside any transaction, whatever happens: the caller gives it back to the pool next.
   * The statements go straight to the runner rather than through
   * `startTransaction()`, which would broadcast transaction events to every subscriber
   * while TypeORM is still broadcasting the commit. TypeORM runs those subscribers side by
   * side: a query another one sends on this connection meanwhile lands in this
   * transaction, under its lock timeout.
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
    this.markerCache.forget(args.subject);
  }

  /** Runs the log-out statement through `manager` (its transaction, if any); forgets nothing. */
  private async run(args: LogOutArgs, manager: EntityManager | undefined): Promise<number> {
    const { rows } = await this.store.execute<{ revoked: number }>(this.logOutStatement, [
      args.subject,
      logOutMarkerJti(args.subject),
      args.includePurposes,
      args.excludePurposes,
      args.exceptJti,
      Date.now(),
      this.options.logOutEverywhere.markerLifetimeSeconds,
      args.revokeUnstored,
      this.options.jwt.clockToleranceSeconds,
    ], manager);
    return rows[0]?.revoked ?? 0;
  }

  /**
   * Logs a user out everywhere because their password changed, through `manager`'s
   * transaction: call it from code that changes passwords without the TypeORM `save`
   * that `applyOnPasswordChange` watches (raw SQL, `repository.update()`, a query
   * builder, another ORM), with the manager of the transaction that writes the new
   * password, so that a rolled-back change revokes nothing. The subject is
   * `logOutEverywhere.subjectOf(user)` (default `String(user.id)`).
   *
   * Inside a transaction it logs out again once the transaction commits
   * (`repeatAfterCommit`, on by default here): a login that read the old password hash
   * before the commit and issued its token before the repeat is revoked too. Issue the
   * session of the user who changed the password after the commit, or keep it with
   * `exceptJti`. A login that verified the old password before the commit but signs its
   * token only after the repeat is not covered; to close that window as well, have
   * logins read the user row with a shared lock (`lock: { mode: 'pessimistic_read' }`)
   * in a transaction that lasts until the token is issued, so that they wait for a
   * pending password change.
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
  async logOutOnPasswordChange(user: ObjectLiteral, manager?: EntityManager, opts: Omit<LogOutEverywhereOptions, 'manager'> = {}): Promise<number> {
    const subject = this.options.logOutEverywhere.subjectOf(user);
    checkSubject(subject, 'logOutEverywhere.subjectOf(user)');
    return this.logOutEverywhere(subject, { ...opts, repeatAfterCommit: opts.repeatAfterCommit ?? true, manager });
  }
}
