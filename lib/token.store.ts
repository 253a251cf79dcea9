import { createHash } from 'node:crypto';
import { Inject, Injectable, Logger } from '@nestjs/common';
import type { Client as PgClient, Pool, PoolClient, QueryConfig, QueryResult } from 'pg';
import type { DataSource, EntityManager, Repository } from 'typeorm';
import type { Token } from './entities/token.entity.js';
import { REVOCATION_PURPOSE } from './token-resource.constants.js';
import {
  LOG_OUT_EVERYWHERE_PURPOSE,
  TOKEN_DATA_SOURCE,
  TOKEN_REPOSITORY,
  TOKEN_RESOURCE_OPTIONS,
} from './token-resource.internal-constants.js';
import { TokenResourceUnavailableError } from './token-resource.exceptions.js';
import { TokenStoreTimeoutError } from './token-store-timeout.error.js';
import type { LogOutMarker } from './log-out-everywhere/log-out-marker.js';
import type { ResolvedTokenResourceOptions } from './options/resolved-options.js';

/** The column that stamps a row with the id of the transaction that last wrote it (`Token.changedXid`). */
const CHANGED_XID = 'changed_xid';

/**
 * A SQL statement with a stable name, so that `pg` prepares it once per connection
 * (unless a transaction pooler is in between: see `TokenStore.query`).
 */
export interface Statement {
  name: string;
  text: string;
  /**
   * Outside a transaction, how long a call may wait for a connection and its answer
   * together before it fails with TokenResourceUnavailableError; a call that gave up
   * before it got a connection is never sent. It is also `pg`'s
   * `query_timeout`, after which the pool discards the connection: without it a connection
   * whose peer went silent mid-query (a network partition) would stay checked out for good.
   */
  timeoutMs?: number;
}

/** What a statement returned. */
export interface StatementResult<Row> {
  rows: Row[];
  rowCount: number;
}

/** The columns of a token's own row that decide whether it is revoked or admitted. */
export interface OwnStateRow {
  purpose: string;
  /** `expires_at > now()`, judged by the database as `getToken` is. */
  live: boolean;
  /** `expires_at` in milliseconds since the epoch, for a cached answer to judge `live` when it is used. */
  expires_ms: number;
  /** The row's own subject: a log-out of it revokes the row, whatever `sub` the checked token claims. */
  subject: string;
}

/** A row of the two-key revoked-check: the token's own row or its subject's log-out marker. */
export interface TokenStateRow extends OwnStateRow {
  jti: string;
  /** Only set on log-out-everywhere marker rows. */
  marker: LogOutMarker | null;
}

/**
 * The SQL of the token table, written out by hand where the ORM would cost round trips
 * or correctness: atomic conditional upserts, batched deletes and the one-query
 * revoked-check. Outside a caller's transaction statements go straight to the data
 * source's `pg` pool as named prepared statements (unnamed once a transaction pooler
 * rejected one), with no entity hydration.
 */
@Injectable()
export class TokenStore {
  /** The quoted table name of the configured entity. */
  readonly table: string;
  private readonly statementNames = new Map<string, string>();
  private readonly logger = new Logger(TokenStore.name);
  /**
   * Whether {@link query} sends statements named, so that each connection parses them once.
   * Turned off for good by the first error that shows a transaction pooler in between.
   * No option turns it off up front: detecting costs one resent statement per call in
   * flight at the first error, and the warning names the better fix (the pooler's own
   * support for prepared statements).
   */
  private sendsNamedStatements = true;
  /** The revoked-check statements, built on first use rather than on every request. */
  private jtiRevoked?: Statement;
  private tokenState?: Statement;
  private ownState?: Statement;
  private poll?: Statement;
  /**
   * The PostgreSQL channel on which an instance that wrote wakes the revocation caches of
   * every application instance (`RevocationCache`) to poll at once: a wake-up, never what
   * was written, which the poll reads from the table itself.
   */
  readonly revocationChannel: string;
  /**
   * The `SET` item that stamps a row with the writing transaction's id (`changed_xid`),
   * for every `UPDATE` (and `ON CONFLICT DO UPDATE`) of this library that can revoke a
   * token or change a check's answer; an `INSERT` stamps by the column's default. The
   * revocation caches of all instances poll stamped rows, so a write without it goes
   * unseen for up to `revocationCache.maxEntryAgeMs`.
   */
  readonly changeStamp = `${CHANGED_XID} = DEFAULT`;

  constructor(
    @Inject(TOKEN_DATA_SOURCE) private readonly dataSource: DataSource,
    @Inject(TOKEN_REPOSITORY) readonly repository: Repository<Token>,
    @Inject(TOKEN_RESOURCE_OPTIONS) private readonly options: Pick<ResolvedTokenResourceOptions, 'storeTimeoutMs'>,
  ) {
    const { driver } = dataSource;
    this.table = repository.metadata.tablePath
      .split('.')
      .map((part) => driver.escape(part))
      .join('.');
    this.revocationChannel = `ntr_revoked_${createHash('sha1').update(this.table).digest('hex').slice(0, 16)}`;
  }

  /**
   * A new, unconnected `pg` client with the pool's own class and connection options, for
   * a session that must outlive a pooled checkout (the revocation cache's poll and `LISTEN`).
   *
   * @param session.role appended to the pool's `application_name`.
   * @param session.connectionTimeoutMillis used when the pool sets none.
   * @internal Kept out of the published declarations, which must not need `@types/pg`.
   */
  createSessionClient(session: { role: string; connectionTimeoutMillis: number }): PgClient {
    const pool = this.pool as Pool & {
      Client: new (options: unknown) => PgClient;
      options: { connectionTimeoutMillis?: number; application_name?: string };
    };
    return new pool.Client({
      ...pool.options,
      keepAlive: true,
      // The pool's own limit wins; a session must not wait forever where the pool would not.
      connectionTimeoutMillis: pool.options.connectionTimeoutMillis || session.connectionTimeoutMillis,
      // Names the session in pg_stat_activity, next to the application's own name.
      application_name: [pool.options.application_name, session.role].filter(Boolean).join(' '),
    });
  }

  /**
   * The data source's current `pg` pool, read on every call: `DataSource.destroy()` ends
   * the pool and `initialize()` makes a new one, and the store must follow it.
   */
  private get pool(): Pool {
    const pool = (this.dataSource.driver as unknown as { master?: Pool }).master;
    if (!pool) throw new TokenResourceUnavailableError('the token store is unavailable: its data source is not initialized');
    return pool;
  }

  /** Makes a named statement; the name hashes the text, so two tables never share one. */
  statement(label: string, text: string): Statement {
    let name = this.statementNames.get(text);
    if (!name) {
      name = `ntr_${label}_${createHash('sha1').update(text).digest('hex').slice(0, 10)}`;
      this.statementNames.set(text, name);
    }
    return { name, text };
  }

  /** A revoked-check statement: bounded by `storeTimeoutMs`, the only bound of the guard's check. */
  private checkStatement(label: string, text: string): Statement {
    return { ...this.statement(label, text), timeoutMs: this.options.storeTimeoutMs };
  }

  /**
   * Runs a statement in the caller's transaction when `manager` belongs to one, else in
   * autocommit on the pool.
   *
   * @throws TokenResourceUnavailableError when PostgreSQL cannot be reached.
   * @throws TypeError when `manager` belongs to another data source than the token table.
   */
  async execute<Row>(statement: Statement, values: unknown[], manager?: EntityManager): Promise<StatementResult<Row>> {
    // With a named data source, the application's default manager would silently run the
    // statement in another database (and another transaction than the caller thinks).
    if (manager && manager.connection !== this.dataSource) {
      throw new TypeError(
        `opts.manager belongs to data source '${nameOf(manager.connection)}', but the token table lives in '${nameOf(this.dataSource)}'; pass a manager of that data source.`,
      );
    }
    const runner = manager?.queryRunner;
    if (!runner || runner.isReleased) return this.query(statement, values);
    return this.whileAvailable(async () => {
      const result = await runner.query(statement.text, values, true);
      return { rows: result.records as Row[], rowCount: result.affected ?? result.records.length };
    });
  }

  /**
   * Runs a statement in autocommit on a connection of the pool, as a named prepared
   * statement unless a pooler rejected one (see {@link sendsNamedStatements}). With
   * `timeoutMs`, a connection that arrives after the caller got its timeout is given back
   * unused: no check runs on the database after its caller stopped waiting. The
   * revoked-check calls it directly: it never joins a caller's transaction, and on every
   * request each extra closure or `await` between the caller and `pg` shows in bench:check.
   *
   * @throws TokenResourceUnavailableError when PostgreSQL cannot be reached in time.
   */
  query<Row>(statement: Statement, values: unknown[]): Promise<StatementResult<Row>> {
    let pool: Pool;
    try {
      pool = this.pool;
    } catch (error) {
      // eslint-disable-next-line @typescript-eslint/prefer-promise-reject-errors -- the getter throws only TokenResourceUnavailableError
      return Promise.reject(error);
    }
    return new Promise((resolve, reject) => {
      const timeoutMs = statement.timeoutMs;
      let answered = false;
      // pg's query_timeout only starts once a connection is checked out, and the pool may wait
      // for one forever (connectionTimeoutMillis defaults to none): bound the whole call.
      const timer =
        timeoutMs === undefined
          ? undefined
          : setTimeout(() => {
              answered = true;
              reject(new TokenStoreTimeoutError(timeoutMs));
            }, timeoutMs);
      pool.connect((connectError, client, release) => {
        if (answered) {
          if (client) release();
          return;
        }
        if (connectError) {
          clearTimeout(timer);
          answered = true;
          reject(asUnavailable(connectError));
          return;
        }
        this.send(
          client!,
          release,
          statement,
          values,
          () => !answered,
          (error, result) => {
            clearTimeout(timer);
            if (answered) return;
            answered = true;
            if (error) reject(asUnavailable(error));
            else resolve(toResult<Row>(result!));
          },
        );
      });
    });
  }

  /**
   * Sends `statement` on a checked-out `client` and gives the client back, as `pg`'s
   * `pool.query` would: a client that failed is discarded (a timed-out one is still busy).
   * A named statement a pooler rejected is sent again, unnamed, on the same client, while
   * its caller still `wants` the answer.
   */
  private send(
    client: PoolClient,
    release: (error?: Error) => void,
    statement: Statement,
    values: unknown[],
    wanted: () => boolean,
    done: (error: Error | undefined, result?: QueryResult) => void,
  ): void {
    let finished = false;
    const finish = (error: Error | undefined, result?: QueryResult) => {
      if (finished) return;
      finished = true;
      client.removeListener('error', finish);
      release(error);
      done(error, result);
    };
    // A checked-out client that loses its connection emits 'error' before failing its query.
    client.once('error', finish);
    const run = (named: boolean) => {
      // `query_timeout` is honoured by pg's Client.query but missing from @types/pg's QueryConfig.
      const config = {
        name: named ? statement.name : undefined,
        text: statement.text,
        values,
        query_timeout: statement.timeoutMs,
      } as QueryConfig;
      client.query(config, (error: Error | undefined, result: QueryResult) => {
        if (error && named && this.rejectedByPooler(error) && wanted()) run(false);
        else finish(error, result);
      });
    };
    run(this.sendsNamedStatements);
  }

  /**
   * Whether `error` is a transaction pooler's answer to a named statement: prepared on
   * one server connection, it is missing (26000) or already there (42P05) on the next. In
   * both cases the statement did not run, so it is safe to send again: `pg` sends Parse
   * (named only the first time on a client), Bind, Describe, Execute and Sync together;
   * 42P05 fails the Parse and 26000 the Bind, and after an error PostgreSQL skips every
   * message up to the Sync, so Execute is never reached. On the first such error the
   * store stops naming statements, for good, and warns once.
   */
  private rejectedByPooler(error: Error): boolean {
    const code = (error as { code?: unknown }).code;
    if (code !== '42P05' && code !== '26000') return false;
    if (this.sendsNamedStatements) {
      this.sendsNamedStatements = false;
      this.logger.warn(
        `token table ${this.table} of data source '${nameOf(this.dataSource)}': PostgreSQL rejected a named prepared statement ` +
          `(${code}: ${error.message}); a transaction-pooling proxy (PgBouncer, pool_mode = transaction) is probably in between. ` +
          'Sending unnamed statements from now on, parsed again on every call. To keep prepared statements and silence this, ' +
          "enable the pooler's own support for them (PgBouncer 1.21+: max_prepared_statements) or use session pooling.",
      );
    }
    return true;
  }

  /**
   * Runs store work (raw SQL or a repository call), reporting a lost or missing connection
   * as TokenResourceUnavailableError, so that every caller can fail closed on one error type.
   */
  async whileAvailable<T>(work: () => Promise<T>): Promise<T> {
    try {
      return await work();
    } catch (error) {
      throw asUnavailable(error);
    }
  }

  /**
   * Runs repository reads on a connection to the primary, given back to the pool after.
   * Under TypeORM `replication`, `find` and `findOne` go to a replica, which may not have
   * replayed what this instance has just written (a token `issueToken` stored, a
   * revocation): every read of the library goes to the primary, as the revoked-check does.
   *
   * @throws TokenResourceUnavailableError when PostgreSQL cannot be reached.
   */
  readPrimary<T>(work: (repository: Repository<Token>) => Promise<T>): Promise<T> {
    return this.whileAvailable(async () => {
      const runner = this.dataSource.createQueryRunner('master');
      try {
        return await work(runner.manager.getRepository<Token>(this.repository.target));
      } finally {
        await runner.release();
      }
    });
  }

  /**
   * The SQL that reads only a token's own row, for when the subject's log-out marker is
   * already known (`RevocationCache`): the same one-key probe as `jtiRevoked`.
   */
  ownStateStatement(): Statement {
    return (this.ownState ??= this.checkStatement(
      'own_state',
      `
      SELECT purpose, expires_at > now() AS live, (extract(epoch FROM expires_at) * 1000)::float8 AS expires_ms, subject
        FROM ${this.table} WHERE jti = $1`,
    ));
  }

  /**
   * The SQL that flips or inserts a revocation row, stamped for the revocation caches;
   * returns a row only if this call revoked. A stored row's expiry is never shortened (its
   * token must stay revoked as long as it lives), and with `$4` it is kept as it is. A
   * stored row of another subject is never flipped: revoking is for the `jti`'s owner.
   */
  revokeStatement(): Statement {
    return this.statement(
      'revoke',
      `
      INSERT INTO ${this.table} AS t (jti, subject, expires_at, purpose)
      VALUES ($1, $2, $3, '${REVOCATION_PURPOSE}')
      ON CONFLICT (jti) DO UPDATE
        SET purpose = '${REVOCATION_PURPOSE}',
            expires_at = CASE WHEN $4::boolean THEN t.expires_at ELSE GREATEST(t.expires_at, EXCLUDED.expires_at) END,
            updated_at = now(), ${this.changeStamp}
        WHERE t.purpose <> '${REVOCATION_PURPOSE}' AND t.subject = EXCLUDED.subject
      RETURNING 1 AS revoked`,
    );
  }

  /**
   * The SQL that upserts a token row unless it is revoked; returns a row only if it wrote.
   *
   * @param stamped stamp the row for the revocation caches: a cached "not stored" (or
   *   another purpose, which a log-out's filter may treat otherwise) must not outlive the
   *   write. Unstamped (`changed_xid` 0, which no poll reads) only for a `jti` no cache can
   *   know yet: one `issueToken` has just drawn.
   */
  storeStatement(stamped: boolean): Statement {
    return this.statement(
      stamped ? 'store' : 'store_new',
      `
      INSERT INTO ${this.table} AS t (jti, subject, expires_at, purpose, extra_data${stamped ? '' : `, ${CHANGED_XID}`})
      VALUES ($1, $2, $3, $4, $5${stamped ? '' : ', 0'})
      ON CONFLICT (jti) DO UPDATE
        SET subject = EXCLUDED.subject, expires_at = EXCLUDED.expires_at, purpose = EXCLUDED.purpose,
            extra_data = EXCLUDED.extra_data, updated_at = now(), ${this.changeStamp}
        WHERE t.purpose <> '${REVOCATION_PURPOSE}'
      RETURNING 1 AS stored`,
    );
  }

  /**
   * The SQL of the revocation cache's poll, on one snapshot: that snapshot's `xmax` and
   * in-progress transaction ids (`xip`), and the `jti`, `subject` and `purpose` of every
   * row stamped by a transaction the previous poll's snapshot did not see: one that had
   * not started (`>= $1`, its `xmax`) or was in progress (`= ANY ($2)`, its `xip`). Every
   * other id below that `xmax` had ended then, and its rows were read then. Ids are text:
   * 64-bit, beyond a JavaScript number's exact range.
   */
  pollStatement(): Statement {
    return (this.poll ??= this.statement(
      'poll',
      `
      SELECT pg_snapshot_xmax(s)::text AS xmax, ARRAY(SELECT pg_snapshot_xip(s)::text) AS xip,
             (SELECT json_agg(json_build_array(jti, subject, purpose)) FROM ${this.table}
               WHERE ${CHANGED_XID} >= $1::bigint OR ${CHANGED_XID} = ANY ($2::bigint[])) AS changed
        FROM pg_current_snapshot() AS s`,
    ));
  }

  /** The SQL of `jtiRevoked`: one primary-key probe. Built once: it runs on every check. */
  jtiRevokedStatement(): Statement {
    return (this.jtiRevoked ??= this.checkStatement(
      'jti_revoked',
      `
      SELECT 1 FROM ${this.table} WHERE jti = $1 AND purpose = '${REVOCATION_PURPOSE}'`,
    ));
  }

  /**
   * The SQL that reads a token's own row (`$1`), its subject's log-out marker (`$2`) and its
   * session's row (`$3`, `NULL` for a token of no session) in one primary-key index scan;
   * `extra_data` is read only from the marker. Plain text parameters keep PostgreSQL's cached generic plan (an `= ANY($1::text[])` of
   * unknown length would be re-planned on every execution) and spare `pg` an array literal.
   */
  tokenStateStatement(): Statement {
    return (this.tokenState ??= this.checkStatement(
      'token_state',
      `
      SELECT jti, purpose, expires_at > now() AS live, (extract(epoch FROM expires_at) * 1000)::float8 AS expires_ms, subject,
             CASE WHEN purpose = '${LOG_OUT_EVERYWHERE_PURPOSE}' THEN extra_data END AS marker
        FROM ${this.table}
       WHERE jti IN ($1, $2, $3)`,
    ));
  }
}

function nameOf(dataSource: DataSource): string {
  return (dataSource.options as { name?: string }).name ?? 'default';
}

function toResult<Row>(result: QueryResult): StatementResult<Row> {
  return { rows: result.rows as Row[], rowCount: result.rowCount ?? result.rows.length };
}

/** A connection error as TokenResourceUnavailableError; any other error as it is. */
function asUnavailable<E>(error: E): E | TokenResourceUnavailableError {
  if (!isConnectionError(error)) return error;
  return new TokenResourceUnavailableError(`the token store is unavailable: ${(error as Error).message}`, { cause: error });
}

const CONNECTION_ERROR_CODES = new Set([
  'ECONNREFUSED',
  'ECONNRESET',
  'ETIMEDOUT',
  'ENOTFOUND',
  'EPIPE',
  'EHOSTUNREACH',
  'ENETUNREACH',
  '57P01',
  '57P02',
  '57P03',
  '08000',
  '08001',
  '08003',
  '08004',
  '08006',
  '53300',
]);

function isConnectionError(error: unknown): boolean {
  const code = (error as { code?: unknown })?.code;
  if (typeof code === 'string' && CONNECTION_ERROR_CODES.has(code)) return true;
  const message = (error as Error)?.message ?? '';
  return /Connection terminated|timeout exceeded when trying to connect|Query read timeout|Client has encountered a connection error|Cannot use a pool after calling end|Connection is not established|not connected|Driver not Connected/i.test(
    message,
  );
}
