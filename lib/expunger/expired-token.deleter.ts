import { Inject, Injectable, Logger, Optional } from '@nestjs/common';
import type { DataSource, QueryRunner } from 'typeorm';
import { NO_METRICS, TokenResourceMetrics } from '../observability/token-resource-metrics.js';
import type { ResolvedTokenResourceOptions } from '../options/resolved-options.js';
import { TOKEN_DATA_SOURCE, TOKEN_RESOURCE_OPTIONS } from '../token-resource.internal-constants.js';
import { TokenStore, type Statement, type StatementResult } from '../token.store.js';
import { withExpungeSession } from './expunge-session.js';

/** Options of `TokenService.expungeExpired`. */
export interface ExpungeExpiredOptions {
  /** Once aborted, stop after the batch in progress. */
  signal?: AbortSignal;
  /** Called after each batch with the rows it deleted and its duration in milliseconds. */
  onBatch?: (deleted: number, durationMs: number) => void;
}

/** Options of one pass of {@link ExpiredTokenDeleter.deleteExpired}. */
export interface ExpungePassOptions extends ExpungeExpiredOptions {
  /** The connection to delete on, outside any transaction. Default: one checked out for the pass. */
  session?: QueryRunner;
  /** Awaited before each batch, for example to renew a lease (and abort `signal` when it is lost). */
  betweenBatches?: () => Promise<void>;
}

/**
 * How long a batch waits for a row lock before it gives its range up to the careful path.
 * Well under PostgreSQL's default `deadlock_timeout` (1 s), so in a deadlock it is always
 * the expunger that yields.
 */
const LOCK_TIMEOUT_MS = 200;

/**
 * Opens a batch's transaction in one round trip. The settings are transaction-local, so
 * they end with it, also behind a transaction-mode pooler where the next transaction of
 * this client may run on another server connection and this one serve another client.
 * A deletion lost in a crash is merely redone by the next run, so batches need not wait
 * for their WAL to reach disk: asynchronous commit makes each batch far cheaper.
 */
const BEGIN_BATCH = `BEGIN; SET LOCAL lock_timeout = ${LOCK_TIMEOUT_MS}; SET LOCAL synchronous_commit = off`;

/** How many jtis of rows that could not be deleted a warning names. */
const REPORTED_JTIS = 5;

function errorCode(error: unknown): string | undefined {
  const withCode = error as { code?: unknown; driverError?: { code?: unknown } } | undefined;
  const code = withCode?.code ?? withCode?.driverError?.code;
  return typeof code === 'string' ? code : undefined;
}

/** `lock_not_available` (a `lock_timeout`) or `deadlock_detected`: another transaction holds a row. */
function isLockConflict(error: unknown): boolean {
  const code = errorCode(error);
  return code === '55P03' || code === '40P01';
}

/**
 * The database refused to delete a row: an integrity constraint (such as an application's
 * foreign key referencing it) or a trigger raising an exception.
 */
function isRowRefusal(error: unknown): boolean {
  const code = errorCode(error);
  return code !== undefined && (code.startsWith('23') || code === 'P0001');
}

/** The state of one pass. */
interface Pass {
  session: QueryRunner;
  cutoff: Date;
  opts: ExpungePassOptions;
  refused: { count: number; jtis: string[]; reason?: string };
}

/**
 * Deletes the token rows whose `expiresAt` passed more than `jwt.clockToleranceSeconds`
 * ago, walking the `expires_at` index in batches of `expunge.batchSize`, each its own
 * short transaction: an index-only query finds where the batch ends, then one range
 * `DELETE` takes it. A range that holds a row another transaction has locked, or one the
 * database refuses to delete, is redone carefully: its rows are deleted by `jti`,
 * skipping locked rows, and a refused group is split until the refused rows are singled
 * out, skipped and reported. Every step moves past what it handled, so a pass always ends.
 */
@Injectable()
export class ExpiredTokenDeleter {
  private readonly logger = new Logger(ExpiredTokenDeleter.name);

  /** The `expires_at` of the row `$3` rows past `$1`: rows in `[$1, bound)` make one batch. */
  private readonly boundStatement: Statement;
  /** One batch: a range DELETE on the index, `[$1, $3)` below the cutoff `$2` (no RETURNING). */
  private readonly rangeStatement: Statement;
  /** The first `expires_at` after `$1` below the cutoff: where to go on after a careful range. */
  private readonly nextStatement: Statement;
  /** A page of the jtis with `$1 <= expires_at <= $2` below the cutoff, after the jti `$4`. */
  private readonly listStatement: Statement;
  /** Deletes the listed rows that are still expired, skipping those others hold locked. */
  private readonly deleteListedStatement: Statement;

  constructor(
    @Inject(TOKEN_RESOURCE_OPTIONS) private readonly options: ResolvedTokenResourceOptions,
    @Inject(TOKEN_DATA_SOURCE) private readonly dataSource: DataSource,
    private readonly store: TokenStore,
    @Optional() private readonly metrics: TokenResourceMetrics = NO_METRICS,
  ) {
    const table = store.table;
    this.boundStatement = store.statement(
      'expunge_bound',
      `
      SELECT expires_at::text AS bound FROM ${table}
       WHERE expires_at >= $1::timestamptz AND expires_at < $2::timestamptz
       ORDER BY expires_at OFFSET $3 LIMIT 1`,
    );
    this.rangeStatement = store.statement(
      'expunge_range',
      `
      DELETE FROM ${table}
       WHERE expires_at >= $1::timestamptz
         AND expires_at < LEAST($2::timestamptz, COALESCE($3::timestamptz, $2::timestamptz))`,
    );
    this.nextStatement = store.statement(
      'expunge_next',
      `
      SELECT expires_at::text AS next FROM ${table}
       WHERE expires_at > $1::timestamptz AND expires_at < $2::timestamptz
       ORDER BY expires_at LIMIT 1`,
    );
    this.listStatement = store.statement(
      'expunge_list',
      `
      SELECT jti FROM ${table}
       WHERE expires_at >= $1::timestamptz AND expires_at <= $2::timestamptz AND expires_at < $3::timestamptz
         AND ($4::text IS NULL OR jti > $4::text)
       ORDER BY jti LIMIT $5`,
    );
    this.deleteListedStatement = store.statement(
      'expunge_listed',
      `
      DELETE FROM ${table}
       WHERE ctid = ANY (ARRAY(
         SELECT ctid FROM ${table}
          WHERE jti = ANY ($1::text[]) AND expires_at < $2::timestamptz
            FOR UPDATE SKIP LOCKED))`,
    );
  }

  /**
   * Deletes every expired row it can, in batches. Rows other transactions hold locked
   * are skipped and left to the next pass; rows the database refuses to delete are
   * skipped and reported in one warning (their count and a few jtis).
   *
   * @returns how many rows were deleted.
   */
  async deleteExpired(opts: ExpungePassOptions = {}): Promise<number> {
    const session = opts.session;
    if (!session) return withExpungeSession(this.dataSource, (own) => this.deleteExpired({ ...opts, session: own }));
    const pass: Pass = {
      session,
      cutoff: new Date(Date.now() - this.options.jwt.clockToleranceSeconds * 1000),
      // Counted per batch, as each commits: a pass that fails later has still deleted these.
      opts: {
        ...opts,
        onBatch: (rows, durationMs) => {
          this.metrics.expunged(rows);
          opts.onBatch?.(rows, durationMs);
        },
      },
      refused: { count: 0, jtis: [] },
    };
    const batchSize = this.options.expunge.batchSize;
    let deleted = 0;
    let from: string | null = '-infinity';
    while (from !== null && !opts.signal?.aborted) {
      await opts.betweenBatches?.();
      if (opts.signal?.aborted) break;
      const start: string = from;
      const started = performance.now();
      const { rows } = await this.execute<{ bound: string | null }>(pass, this.boundStatement, [start, pass.cutoff, batchSize]);
      const bound: string | null = rows[0]?.bound ?? null;
      if (bound === start) {
        // More than a batch of rows share this expires_at: no range can split them.
        deleted += await this.deleteCarefully(pass, start, start);
        from = await this.nextAfter(pass, start);
        continue;
      }
      try {
        const batch = await this.inBatch(pass, () => this.execute(pass, this.rangeStatement, [start, pass.cutoff, bound]));
        deleted += batch.rowCount;
        pass.opts.onBatch?.(batch.rowCount, performance.now() - started);
        from = bound;
      } catch (error) {
        if (!isLockConflict(error) && !isRowRefusal(error)) throw error;
        deleted += await this.deleteCarefully(pass, start, bound ?? 'infinity');
        from = bound === null ? null : await this.nextAfter(pass, bound);
      }
    }
    this.reportRefusals(pass);
    return deleted;
  }

  /** Deletes the rows with `from <= expires_at <= to` by jti, a page of `batchSize` at a time. */
  private async deleteCarefully(pass: Pass, from: string, to: string): Promise<number> {
    const batchSize = this.options.expunge.batchSize;
    let deleted = 0;
    let after: string | null = null;
    for (;;) {
      const { rows }: StatementResult<{ jti: string }> = await this.execute(pass, this.listStatement, [
        from,
        to,
        pass.cutoff,
        after,
        batchSize,
      ]);
      if (rows.length > 0)
        deleted += await this.deleteListed(
          pass,
          rows.map((row) => row.jti),
        );
      if (rows.length < batchSize || pass.opts.signal?.aborted) return deleted;
      after = rows[rows.length - 1].jti;
    }
  }

  /** Deletes listed rows; a group the database refuses is halved until the refused rows stand alone. */
  private async deleteListed(pass: Pass, jtis: string[]): Promise<number> {
    const started = performance.now();
    try {
      const { rowCount } = await this.inBatch(pass, () => this.execute(pass, this.deleteListedStatement, [jtis, pass.cutoff]));
      pass.opts.onBatch?.(rowCount, performance.now() - started);
      return rowCount;
    } catch (error) {
      if (!isLockConflict(error) && !isRowRefusal(error)) throw error;
      if (jtis.length === 1) {
        // A row whose references another transaction holds locked is left for the next pass.
        if (isRowRefusal(error)) this.refuse(pass, jtis[0], error);
        return 0;
      }
      const half = Math.ceil(jtis.length / 2);
      return (await this.deleteListed(pass, jtis.slice(0, half))) + (await this.deleteListed(pass, jtis.slice(half)));
    }
  }

  private async nextAfter(pass: Pass, value: string): Promise<string | null> {
    const { rows } = await this.execute<{ next: string }>(pass, this.nextStatement, [value, pass.cutoff]);
    return rows[0]?.next ?? null;
  }

  /** Runs `work` in a transaction of its own with the batch settings; rolls it back on failure. */
  private async inBatch<T>(pass: Pass, work: () => Promise<T>): Promise<T> {
    await pass.session.query(BEGIN_BATCH);
    let result: T;
    try {
      result = await work();
      await pass.session.query('COMMIT');
    } catch (error) {
      // A failure of the rollback itself (a lost connection) replaces the error: the pass ends.
      await pass.session.query('ROLLBACK');
      throw error;
    }
    return result;
  }

  private execute<Row>(pass: Pass, statement: Statement, values: unknown[]): Promise<StatementResult<Row>> {
    return this.store.execute<Row>(statement, values, pass.session.manager);
  }

  private refuse(pass: Pass, jti: string, error: unknown): void {
    pass.refused.count++;
    if (pass.refused.jtis.length < REPORTED_JTIS) pass.refused.jtis.push(jti);
    pass.refused.reason ??= (error as Error)?.message ?? String(error);
  }

  private reportRefusals(pass: Pass): void {
    const { count, jtis, reason } = pass.refused;
    if (count === 0) return;
    this.logger.warn(
      `${count} expired rows of ${this.store.table} could not be deleted and were skipped (for example jti ${jtis.join(', ')}): ${reason}. Later runs try them again; remove what holds them (such as a foreign key without ON DELETE CASCADE or SET NULL).`,
    );
  }
}
