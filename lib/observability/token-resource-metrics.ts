import type { OnModuleDestroy, OnModuleInit } from '@nestjs/common';
import type { DataSource, EntityManager } from 'typeorm';
import { registerSubscriber } from '../typeorm/register-subscriber.js';
import { METER_NAME, METRIC_NAMES, SECONDS_BUCKETS, type CheckOutcome, type RevocationKind } from './metric-names.js';
import { importOptional } from './optional-import.js';
import { PostCommitCounts } from './post-commit-counts.js';

/*
 * The few shapes of `@opentelemetry/api` the library uses, written out so that neither its
 * code nor its published declarations need the package: it is an optional peer.
 */
type Attributes = Readonly<Record<string, string>>;
interface Counter {
  add(value: number, attributes?: Attributes): void;
}
interface Histogram {
  record(value: number, attributes?: Attributes): void;
}
interface InstrumentOptions {
  description?: string;
  unit?: string;
  advice?: { explicitBucketBoundaries?: number[] };
}
interface ObservableResult {
  observe(value: number, attributes?: Attributes): void;
}
interface ObservableCounter {
  addCallback(callback: (result: ObservableResult) => void): void;
}
interface Meter {
  createCounter(name: string, options?: InstrumentOptions): Counter;
  createObservableCounter(name: string, options?: InstrumentOptions): ObservableCounter;
  createHistogram(name: string, options?: InstrumentOptions): Histogram;
}
interface OpenTelemetryApi {
  metrics: { getMeter(name: string): Meter };
}

const NO_INSTRUMENT: Counter & Histogram = { add: () => undefined, record: () => undefined };

/** Attribute objects made once, rather than one per call. */
const OUTCOMES: Readonly<Record<CheckOutcome, Attributes>> = {
  admitted: { outcome: 'admitted' },
  revoked: { outcome: 'revoked' },
  not_recognised: { outcome: 'not_recognised' },
  invalid: { outcome: 'invalid' },
  unavailable: { outcome: 'unavailable' },
};
const KINDS: Readonly<Record<RevocationKind, Attributes>> = {
  token: { kind: 'token' },
  jti: { kind: 'jti' },
  log_out_everywhere: { kind: 'log_out_everywhere' },
  password_change: { kind: 'password_change' },
  session: { kind: 'session' },
};
const HIT: Attributes = { result: 'hit' };
const MISS: Attributes = { result: 'miss' };
const OUTCOME_NAMES = Object.keys(OUTCOMES) as CheckOutcome[];

/**
 * The counts of the two per-request counters, kept in memory and read by the SDK when it
 * collects (observable counters): on the hot path a counter then costs an increment, not a
 * second trip through the SDK's attribute handling after the histogram's. One set per meter,
 * shared by every module instance of the process, as a synchronous counter's would be.
 */
interface HotCounts {
  checks: Record<CheckOutcome, number>;
  lookups: { hit: number; miss: number };
}

const hotCountsByMeter = new WeakMap<Meter, HotCounts>();

function hotCountsOf(meter: Meter | undefined): HotCounts {
  let counts = meter && hotCountsByMeter.get(meter);
  if (counts) return counts;
  counts = { checks: { admitted: 0, revoked: 0, not_recognised: 0, invalid: 0, unavailable: 0 }, lookups: { hit: 0, miss: 0 } };
  if (!meter) return counts;
  hotCountsByMeter.set(meter, counts);
  const { checks, lookups } = counts;
  meter
    .createObservableCounter(METRIC_NAMES.checks, {
      description: 'Bearer tokens checked by RevokedTokenGuard or RevokedTokenCheck, by outcome',
    })
    .addCallback((result) => {
      for (const outcome of OUTCOME_NAMES) result.observe(checks[outcome], OUTCOMES[outcome]);
    });
  meter
    .createObservableCounter(METRIC_NAMES.cacheLookups, {
      description: 'Revocation checks answered from the revocation cache (hit) or the store (miss)',
    })
    .addCallback((result) => {
      result.observe(lookups.hit, HIT);
      result.observe(lookups.miss, MISS);
    });
  return counts;
}

/**
 * The library's OpenTelemetry instruments, on the meter `nestjs-token-resource` of the
 * global `MeterProvider`, created once when the module starts. Without
 * `@opentelemetry/api` installed, or without an SDK registered before the application is
 * created, every method does nothing.
 *
 * Not exported from the package root: the instruments are the public interface (README
 * "Observability"); this class is how the library's own services record them.
 */
export class TokenResourceMetrics implements OnModuleInit, OnModuleDestroy {
  private readonly checkCounts: HotCounts['checks'];
  private readonly lookupCounts: HotCounts['lookups'];
  private readonly checkDuration: Histogram;
  private readonly revocations: Counter;
  private readonly expungeDeleted: Counter;
  private readonly expungeDuration: Histogram;
  private readonly reuseDetected: Counter;
  private readonly postCommit = new PostCommitCounts();
  private unregister?: () => void;

  /**
   * Loads `@opentelemetry/api` if it is installed and takes the meter of the global
   * `MeterProvider` registered by then.
   *
   * @param dataSource the token table's, whose commits release revocations counted inside a transaction.
   */
  static async load(dataSource?: DataSource): Promise<TokenResourceMetrics> {
    const api = await importOptional<OpenTelemetryApi>('@opentelemetry/api');
    return new TokenResourceMetrics(api?.metrics.getMeter(METER_NAME), dataSource);
  }

  /** @param meter `undefined`: record nothing. */
  constructor(
    meter: Meter | undefined,
    private readonly dataSource?: DataSource,
  ) {
    const counter = (name: string, description: string): Counter => meter?.createCounter(name, { description }) ?? NO_INSTRUMENT;
    const seconds = (name: string, description: string): Histogram =>
      meter?.createHistogram(name, { description, unit: 's', advice: { explicitBucketBoundaries: SECONDS_BUCKETS } }) ?? NO_INSTRUMENT;
    ({ checks: this.checkCounts, lookups: this.lookupCounts } = hotCountsOf(meter));
    this.checkDuration = seconds(METRIC_NAMES.checkDuration, 'Time to check one bearer token, verification and store included');
    this.revocations = counter(METRIC_NAMES.revocations, 'Committed revocations, by kind');
    this.expungeDeleted = counter(METRIC_NAMES.expungeDeleted, 'Expired token rows deleted');
    this.expungeDuration = seconds(METRIC_NAMES.expungeDuration, 'Time of one expunge run that was not skipped');
    this.reuseDetected = counter(METRIC_NAMES.refreshReuseDetected, 'Refresh tokens presented again after rotation');
  }

  /** Starts counting revocations made inside transactions on their commit. */
  onModuleInit(): void {
    if (this.dataSource) this.unregister = registerSubscriber(this.dataSource, this.postCommit);
  }

  /** Leaves a shared data source without the subscriber. */
  onModuleDestroy(): void {
    this.unregister?.();
    this.unregister = undefined;
  }

  /**
   * One check of a bearer token.
   *
   * @param startedMs `performance.now()` when the check started.
   */
  checked(outcome: CheckOutcome, startedMs: number): void {
    this.checkCounts[outcome]++;
    // Without attributes: the SDK hashes an attribute set on every record, a visible share
    // of a check the revocation cache answers. The outcomes are counted in `token_resource.checks`.
    this.checkDuration.record((performance.now() - startedMs) / 1000);
  }

  /**
   * One revocation written: counted now, or, when `manager` is inside a transaction, once that
   * transaction commits (never when it rolls back).
   */
  revoked(kind: RevocationKind, manager?: EntityManager): void {
    const attributes = KINDS[kind];
    const runner = manager?.queryRunner;
    if (runner && !runner.isReleased && runner.isTransactionActive && this.unregister) {
      this.postCommit.add(runner, () => this.revocations.add(1, attributes));
    } else {
      this.revocations.add(1, attributes);
    }
  }

  /** Rows an expunge batch deleted (each batch commits on its own). */
  expunged(rows: number): void {
    if (rows > 0) this.expungeDeleted.add(rows);
  }

  /** One expunge run that was not skipped, finished or failed. */
  expungeRan(durationMs: number): void {
    this.expungeDuration.record(durationMs / 1000);
  }

  /** A refresh token presented again after it was rotated (its session is then revoked). */
  refreshReuseDetected(): void {
    this.reuseDetected.add(1);
  }

  /** One revocation check with the revocation cache on: answered from memory (`hit`) or not. */
  cacheLookup(hit: boolean): void {
    if (hit) this.lookupCounts.hit++;
    else this.lookupCounts.miss++;
  }
}

/** For services built with `new` outside the module: records nothing. */
export const NO_METRICS = new TokenResourceMetrics(undefined);
