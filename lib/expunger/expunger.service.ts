import { createHash } from 'node:crypto';
import {
  Inject,
  Injectable,
  Logger,
  Optional,
  type BeforeApplicationShutdown,
  type OnApplicationBootstrap,
  type OnModuleInit,
} from '@nestjs/common';
import { SchedulerRegistry } from '@nestjs/schedule';
import type { QueryRunner } from 'typeorm';
import type { ResolvedTokenResourceOptions } from '../options/resolved-options.js';
import { EXPUNGE_JOB_NAME, TOKEN_RESOURCE_OPTIONS } from '../token-resource.constants.js';
import { TokenResourceConfigError } from '../token-resource.exceptions.js';
import { TokenService } from '../token.service.js';
import { TokenStore } from '../token.store.js';

/** Outcome of one expunge run. */
export interface ExpungeRunResult {
  /** Rows this run deleted. */
  deleted: number;
  /** `true` when another run (here or in another instance) held the lock, so this one did nothing. */
  skipped: boolean;
  durationMs: number;
}

/** The largest delay `setInterval` honours: 2^31-1 ms (about 24.8 days). */
export const MAX_INTERVAL_MS = 2 ** 31 - 1;

const MS_PER_HOUR = 3_600_000;

/**
 * The advisory-lock key of the expunger of one table: the first 64 bits of a SHA-1 of
 * the quoted table name, so expungers of two token tables never block each other.
 * Advisory locks are per database, so the same table in two databases does not clash.
 */
export function expungeLockKey(table: string): string {
  return createHash('sha1').update(`nestjs-token-resource:expunge:${table}`).digest().readBigInt64BE(0).toString();
}

/** A query runner that can be released with an error, which makes `pg` destroy the connection. */
interface ReleasableWithError {
  releasePostgresConnection?(error?: unknown): Promise<void>;
}

/**
 * Deletes expired token rows on a schedule.
 *
 * At application bootstrap it registers an interval named {@link EXPUNGE_JOB_NAME}
 * with the host's `ScheduleModule.forRoot()` (unless `expunge.enabled` is false). Each
 * run takes a session-level `pg_try_advisory_lock` on a connection of its own, so that
 * of several instances sharing a database one does the work and the others return
 * `skipped: true` at once, and deletes in short batches on that connection. At shutdown
 * the interval is removed and a run in progress stops after its current batch.
 */
@Injectable()
export class ExpungerService implements OnModuleInit, OnApplicationBootstrap, BeforeApplicationShutdown {
  private readonly logger = new Logger(ExpungerService.name);
  private readonly lockKey: string;
  private current?: Promise<ExpungeRunResult>;
  private stopping?: AbortController;
  /** The name the interval is registered under, while it is. */
  private jobName?: string;

  constructor(
    @Inject(TOKEN_RESOURCE_OPTIONS) readonly options: ResolvedTokenResourceOptions,
    private readonly tokens: TokenService,
    private readonly store: TokenStore,
    @Optional() private readonly schedulerRegistry?: SchedulerRegistry,
  ) {
    this.lockKey = expungeLockKey(store.table);
  }

  /** The interval between scheduled runs, in milliseconds. */
  get intervalMs(): number {
    return Math.round(this.options.expunge.intervalHours * MS_PER_HOUR);
  }

  /**
   * Checks, before anything starts, that the job can be scheduled as configured.
   *
   * @throws TokenResourceConfigError when `ScheduleModule.forRoot()` is missing or the interval is out of range.
   */
  onModuleInit(): void {
    if (!this.options.expunge.enabled) return;
    if (!this.schedulerRegistry) {
      throw new TokenResourceConfigError(
        'nestjs-token-resource: the expunger is enabled but SchedulerRegistry is not available. Import ScheduleModule.forRoot() from @nestjs/schedule in your application module, or set expunge.enabled: false.',
      );
    }
    const ms = this.intervalMs;
    if (ms < 1 || ms > MAX_INTERVAL_MS) {
      throw new TokenResourceConfigError(
        `nestjs-token-resource: expunge.intervalHours must be between ${1 / MS_PER_HOUR} and ${Math.floor((MAX_INTERVAL_MS / MS_PER_HOUR) * 1000) / 1000} hours (setInterval accepts at most 2^31-1 ms), got ${this.options.expunge.intervalHours}.`,
      );
    }
  }

  /**
   * Registers the interval under {@link EXPUNGE_JOB_NAME} (or, for a second token table
   * in the same application, under `EXPUNGE_JOB_NAME + ':' + table`).
   */
  onApplicationBootstrap(): void {
    if (!this.options.expunge.enabled || !this.schedulerRegistry) return;
    // Not unref'd, like @nestjs/schedule's own intervals: a worker process whose only
    // job is the expunger must stay alive.
    const interval = setInterval(() => void this.tick(), this.intervalMs);
    // A second token table in the same application gets a job of its own.
    this.jobName = this.schedulerRegistry.doesExist('interval', EXPUNGE_JOB_NAME)
      ? `${EXPUNGE_JOB_NAME}:${this.store.repository.metadata.tablePath}`
      : EXPUNGE_JOB_NAME;
    this.schedulerRegistry.addInterval(this.jobName, interval);
  }

  /** Removes the interval and waits for a run in progress to finish its current batch. */
  async beforeApplicationShutdown(): Promise<void> {
    if (this.jobName && this.schedulerRegistry?.doesExist('interval', this.jobName)) {
      this.schedulerRegistry.deleteInterval(this.jobName);
    }
    this.jobName = undefined;
    this.stopping?.abort();
    await this.current?.catch(() => undefined);
  }

  /**
   * Runs one expunge: deletes the rows whose `expiresAt` passed more than
   * `jwt.clockToleranceSeconds` ago, in batches of `expunge.batchSize`. Returns
   * `skipped: true` at once when another run holds the table's advisory lock.
   * Logs its outcome; a failure is logged and rethrown.
   */
  async run(): Promise<ExpungeRunResult> {
    if (this.current) return { deleted: 0, skipped: true, durationMs: 0 };
    const started = performance.now();
    const stopping = (this.stopping = new AbortController());
    const running = this.expunge(stopping.signal, started);
    this.current = running;
    try {
      const result = await running;
      if (!result.skipped) {
        this.logger.log(`expunged ${result.deleted} expired token rows from ${this.store.table} in ${Math.round(result.durationMs)} ms`);
      } else {
        this.logger.debug(`expunge of ${this.store.table} skipped: another run holds the lock`);
      }
      return result;
    } catch (error) {
      this.logger.error(
        `expunge of ${this.store.table} failed after ${Math.round(performance.now() - started)} ms; the next run will retry: ${(error as Error)?.message ?? error}`,
        (error as Error)?.stack,
      );
      throw error;
    } finally {
      this.current = undefined;
    }
  }

  /** The scheduled callback: a failing run is already logged and must not stop later ones. */
  private async tick(): Promise<void> {
    try {
      await this.run();
    } catch {
      // logged by run()
    }
  }

  private async expunge(signal: AbortSignal, started: number): Promise<ExpungeRunResult> {
    const runner = this.store.repository.manager.connection.createQueryRunner('master');
    let locked = false;
    let broken: unknown;
    try {
      const rows: Array<{ locked: boolean }> = await runner.query('SELECT pg_try_advisory_lock($1::bigint) AS locked', [this.lockKey]);
      locked = rows[0]?.locked === true;
      if (!locked) return { deleted: 0, skipped: true, durationMs: performance.now() - started };
      const deleted = await this.tokens.expungeExpired({ manager: runner.manager, signal });
      return { deleted, skipped: false, durationMs: performance.now() - started };
    } catch (error) {
      broken = error;
      throw error;
    } finally {
      await this.unlockAndRelease(runner, locked, broken);
    }
  }

  /**
   * Unlocks and returns the connection to the pool. After a failed run, or when the
   * unlock cannot be confirmed, the connection is destroyed instead, which ends its
   * session and so its lock and settings: a pooled connection must never keep them.
   */
  private async unlockAndRelease(runner: QueryRunner, locked: boolean, failure: unknown): Promise<void> {
    let destroyWith: unknown = failure;
    if (locked && !runner.isReleased) {
      try {
        const rows: Array<{ unlocked: boolean }> = await runner.query('SELECT pg_advisory_unlock($1::bigint) AS unlocked', [this.lockKey]);
        if (rows[0]?.unlocked !== true) destroyWith ??= new Error('pg_advisory_unlock did not release the expunge lock');
      } catch (error) {
        destroyWith = error;
      }
    }
    try {
      const releasable = runner as QueryRunner & ReleasableWithError;
      if (destroyWith !== undefined && typeof releasable.releasePostgresConnection === 'function') {
        await releasable.releasePostgresConnection(destroyWith instanceof Error ? destroyWith : new Error(String(destroyWith)));
      } else {
        await runner.release();
      }
    } catch (error) {
      this.logger.warn(`could not release the expunge connection: ${(error as Error)?.message ?? error}`);
    }
  }
}
