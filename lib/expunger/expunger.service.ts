import { randomUUID } from 'node:crypto';
import { hostname } from 'node:os';
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
import { CronJob } from 'cron';
import type { DataSource, QueryRunner } from 'typeorm';
import { NO_METRICS, TokenResourceMetrics } from '../observability/token-resource-metrics.js';
import type { ResolvedTokenResourceOptions } from '../options/resolved-options.js';
import { EXPUNGE_JOB_NAME } from '../token-resource.constants.js';
import { TOKEN_DATA_SOURCE, TOKEN_RESOURCE_OPTIONS } from '../token-resource.internal-constants.js';
import { TokenResourceConfigError } from '../token-resource.exceptions.js';
import { TokenStore } from '../token.store.js';
import { ExpiredTokenDeleter } from './expired-token.deleter.js';
import { EXPUNGE_TIME_ZONE, previousTick } from './expunge-schedule.js';
import { EXPUNGE_LEASE_MS, ExpungeRunRecord } from './expunge-run-record.js';
import { withExpungeSession } from './expunge-session.js';

/** Outcome of one expunge run. */
export interface ExpungeRunResult {
  /** Rows this run deleted. */
  deleted: number;
  /**
   * `true` when this run did nothing: another run (here or in another instance) held the
   * lease, or, for a start-up catch-up, a run had completed since the last scheduled time.
   */
  skipped: boolean;
  /** How long the run took, in milliseconds. */
  durationMs: number;
}

/** A run's lease is renewed between batches once this much of it has passed. */
const RENEW_AFTER_MS = EXPUNGE_LEASE_MS / 3;

/**
 * Deletes expired token rows on a schedule.
 *
 * At application bootstrap it registers a cron job named {@link EXPUNGE_JOB_NAME} with
 * the host's `ScheduleModule.forRoot()` (unless `expunge.enabled` is false), firing at the
 * fixed UTC times of `expunge.cron`, so that restarts never postpone a run. A booting
 * instance catches up, after a random delay of up to `expunge.startupJitterSeconds`,
 * when no run completed since the schedule last fired. Runs of all instances sharing a
 * table take turns through a lease in the table's run record; at shutdown the job is
 * removed and a run in progress stops after its current batch.
 */
@Injectable()
export class ExpungerService implements OnModuleInit, OnApplicationBootstrap, BeforeApplicationShutdown {
  private readonly logger = new Logger(ExpungerService.name);
  private readonly record: ExpungeRunRecord;
  private current?: Promise<ExpungeRunResult>;
  private stopping?: AbortController;
  /** The name the cron job is registered under, while it is. */
  private jobName?: string;
  /** The pending start-up catch-up, or its retry once a lease held elsewhere lapses. */
  private catchUpTimer?: NodeJS.Timeout;

  constructor(
    @Inject(TOKEN_RESOURCE_OPTIONS) readonly options: ResolvedTokenResourceOptions,
    @Inject(TOKEN_DATA_SOURCE) private readonly dataSource: DataSource,
    private readonly deleter: ExpiredTokenDeleter,
    private readonly store: TokenStore,
    @Optional() private readonly schedulerRegistry?: SchedulerRegistry,
    @Optional() private readonly metrics: TokenResourceMetrics = NO_METRICS,
  ) {
    this.record = new ExpungeRunRecord(store);
  }

  /**
   * Checks, before anything starts, that the job can be scheduled.
   *
   * @throws TokenResourceConfigError when `ScheduleModule.forRoot()` is missing.
   */
  onModuleInit(): void {
    if (this.options.expunge.enabled && !this.schedulerRegistry) {
      throw new TokenResourceConfigError(
        'nestjs-token-resource: the expunger is enabled but SchedulerRegistry is not available. Import ScheduleModule.forRoot() from @nestjs/schedule in your application module, or set expunge.enabled: false.',
      );
    }
  }

  /**
   * Registers the cron job under {@link EXPUNGE_JOB_NAME} (or, for a second token table
   * in the same application, under `EXPUNGE_JOB_NAME + ':' + table`) and plans the
   * start-up catch-up.
   */
  onApplicationBootstrap(): void {
    if (!this.options.expunge.enabled || !this.schedulerRegistry) return;
    // Not unref'd, like @nestjs/schedule's own jobs: a worker process whose only job is
    // the expunger must stay alive.
    const job = CronJob.from({
      cronTime: this.options.expunge.cron,
      timeZone: EXPUNGE_TIME_ZONE,
      onTick: () => this.tick(),
      start: false,
    });
    this.jobName = this.schedulerRegistry.doesExist('cron', EXPUNGE_JOB_NAME)
      ? `${EXPUNGE_JOB_NAME}:${this.store.repository.metadata.tablePath}`
      : EXPUNGE_JOB_NAME;
    this.schedulerRegistry.addCronJob(this.jobName, job);
    job.start();
    this.planCatchUp(Math.random() * this.options.expunge.startupJitterSeconds * 1000);
  }

  /** Removes the job and waits for a run in progress to finish its current batch. */
  async beforeApplicationShutdown(): Promise<void> {
    clearTimeout(this.catchUpTimer);
    this.catchUpTimer = undefined;
    if (this.jobName && this.schedulerRegistry?.doesExist('cron', this.jobName)) {
      this.schedulerRegistry.deleteCronJob(this.jobName);
    }
    this.jobName = undefined;
    this.stopping?.abort();
    await this.current?.catch(() => undefined);
  }

  /**
   * Runs one expunge: deletes the rows whose `expiresAt` passed more than
   * `jwt.clockToleranceSeconds` ago, in batches of `expunge.batchSize`, and records
   * the run as completed. Returns `skipped: true` at once when another run holds the
   * lease. Logs its outcome; a failure is logged and rethrown.
   */
  run(): Promise<ExpungeRunResult> {
    return this.runUnless(undefined);
  }

  /** The scheduled callback: a failing run is already logged and must not stop later ones. */
  private async tick(): Promise<void> {
    await this.run().catch(() => undefined);
  }

  private planCatchUp(delayMs: number): void {
    clearTimeout(this.catchUpTimer);
    this.catchUpTimer = setTimeout(() => void this.catchUp(), delayMs);
  }

  /**
   * Runs unless one completed since the schedule last fired. When another run holds the
   * lease, looks again once it lapses: its holder may have died mid-run.
   */
  private async catchUp(): Promise<void> {
    this.catchUpTimer = undefined;
    // A schedule that has not fired for years asks only for a first run ever.
    const since = previousTick(this.options.expunge.cron, new Date()) ?? new Date(0);
    try {
      const result = await this.runUnless(since);
      if (!result.skipped) return;
      const state = await withExpungeSession(this.dataSource, (session) => this.record.read(session));
      const done = state?.completedAt != null && state.completedAt >= since;
      // Unless the application shut down meanwhile.
      if (!done && state?.leaseUntil && this.jobName) {
        this.planCatchUp(Math.max(0, state.leaseUntil.getTime() - state.now.getTime()) + 1000);
      }
    } catch {
      // runUnless() logged it; the next scheduled run retries.
    }
  }

  private async runUnless(completedSince: Date | undefined): Promise<ExpungeRunResult> {
    if (this.current) return { deleted: 0, skipped: true, durationMs: 0 };
    const started = performance.now();
    const stopping = (this.stopping = new AbortController());
    const running = withExpungeSession(this.dataSource, (session) => this.expunge(session, stopping, completedSince, started));
    this.current = running;
    try {
      const result = await running;
      if (!result.skipped) {
        this.metrics.expungeRan(result.durationMs);
        this.logger.log(`expunged ${result.deleted} expired token rows from ${this.store.table} in ${Math.round(result.durationMs)} ms`);
      } else {
        this.logger.debug(
          `expunge of ${this.store.table} skipped: another run holds the lease${completedSince ? ' or one completed since it was due' : ''}`,
        );
      }
      return result;
    } catch (error) {
      this.metrics.expungeRan(performance.now() - started);
      this.logger.error(
        `expunge of ${this.store.table} failed after ${Math.round(performance.now() - started)} ms; the next run will retry: ${(error as Error)?.message ?? error}`,
        (error as Error)?.stack,
      );
      throw error;
    } finally {
      this.current = undefined;
    }
  }

  private async expunge(
    session: QueryRunner,
    stopping: AbortController,
    completedSince: Date | undefined,
    started: number,
  ): Promise<ExpungeRunResult> {
    const holder = `${hostname()} pid ${process.pid} run ${randomUUID()}`;
    if (!(await this.record.take(session, holder, completedSince))) {
      return { deleted: 0, skipped: true, durationMs: performance.now() - started };
    }
    let renewedAt = performance.now();
    const renewLease = async () => {
      if (performance.now() - renewedAt < RENEW_AFTER_MS) return;
      if (await this.record.renew(session, holder)) {
        renewedAt = performance.now();
        return;
      }
      this.logger.warn(`expunge of ${this.store.table} stopped: its lease lapsed and another run took it over`);
      stopping.abort();
    };
    let deleted: number;
    try {
      deleted = await this.deleter.deleteExpired({ session, signal: stopping.signal, betweenBatches: renewLease });
    } catch (error) {
      // Best effort: if the lease cannot be freed now, it lapses on its own.
      await this.record.release(session, holder, false, 0).catch(() => undefined);
      throw error;
    }
    // A run stopped early (shutdown, lost lease) is not complete: a booting instance catches up.
    await this.record.release(session, holder, !stopping.signal.aborted, deleted);
    return { deleted, skipped: false, durationMs: performance.now() - started };
  }
}
