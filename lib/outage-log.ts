import { Injectable, Logger, type OnModuleDestroy } from '@nestjs/common';
import { TokenStoreTimeoutError } from './token-store-timeout.error.js';

/** What can be down: the token table's database, or the remote JWKS (`jwt.jwksUri`). */
export type OutageDependency = 'token store' | 'token keys';

/** The shortest time between two lines about one cause. */
const SUMMARY_INTERVAL_MS = 1000;
/** How often pending counts are checked; a summary comes at most this late. */
const TICK_MS = 250;
/** Causes told apart per outage; more fall under one shared cause, so memory stays bounded. */
const MAX_CAUSES = 20;

interface CauseTally {
  /** Requests refused since its last line. */
  refused: number;
  /** `performance.now()` of its last line. */
  loggedAt: number;
}

interface Outage {
  since: number;
  refused: number;
  causes: Map<string, CauseTally>;
}

/**
 * Logs outages of what the guard depends on without a line per refused request: an
 * unreachable database would otherwise log as many lines as requests come in. The first
 * refusal of each cause is logged at once, with its error; later ones are counted, and
 * each cause's count is logged at most once a second (`token store unavailable: 412
 * requests answered 503 in the last 1.0 s (ECONNREFUSED)`). The first answer after an
 * outage ends it with one line saying how long it lasted and how many requests it refused.
 * A cause is the error's code (`ECONNREFUSED`, a SQLSTATE), `no answer within N ms`, or
 * the error's message. Shared by every guard of the module; timers run only during an outage.
 */
@Injectable()
export class OutageLog implements OnModuleDestroy {
  private readonly logger = new Logger(OutageLog.name);
  private readonly outages = new Map<OutageDependency, Outage>();
  private timer?: NodeJS.Timeout;

  /**
   * Tells that `dependency` answered. Called on every admitted or refused token, so with
   * no outage on it costs one size check.
   */
  answered(dependency: OutageDependency): void {
    if (this.outages.size === 0) return;
    const outage = this.outages.get(dependency);
    if (outage === undefined) return;
    const now = performance.now();
    this.summarise(dependency, outage, now, 0);
    this.outages.delete(dependency);
    if (this.outages.size === 0) this.stopTimer();
    this.logger.log(`${dependency} available again after ${seconds(now - outage.since)} s (${requests(outage.refused)} answered 503)`);
  }

  /** Counts a request refused with `503` because `dependency` failed with `error`; never logs the token. */
  refused(dependency: OutageDependency, error: unknown): void {
    const now = performance.now();
    let outage = this.outages.get(dependency);
    if (outage === undefined) {
      outage = { since: now, refused: 0, causes: new Map() };
      this.outages.set(dependency, outage);
      this.timer ??= setInterval(() => this.tick(), TICK_MS).unref();
    }
    outage.refused++;
    let cause = causeOf(error);
    if (!outage.causes.has(cause) && outage.causes.size >= MAX_CAUSES) cause = 'other causes';
    const tally = outage.causes.get(cause);
    if (tally !== undefined) {
      tally.refused++;
      return;
    }
    outage.causes.set(cause, { refused: 0, loggedAt: now });
    this.logger.error(`${dependency} unavailable (${cause}), answering 503: ${describe(error)}`);
  }

  onModuleDestroy(): void {
    this.stopTimer();
  }

  private tick(): void {
    const now = performance.now();
    for (const [dependency, outage] of this.outages) this.summarise(dependency, outage, now, SUMMARY_INTERVAL_MS);
  }

  /** Logs the count of each cause that has refused requests and was last logged at least `minAgeMs` ago. */
  private summarise(dependency: OutageDependency, outage: Outage, now: number, minAgeMs: number): void {
    for (const [cause, tally] of outage.causes) {
      if (tally.refused === 0 || now - tally.loggedAt < minAgeMs) continue;
      this.logger.error(
        `${dependency} unavailable: ${requests(tally.refused)} answered 503 in the last ${seconds(now - tally.loggedAt)} s (${cause})`,
      );
      tally.refused = 0;
      tally.loggedAt = now;
    }
  }

  private stopTimer(): void {
    clearInterval(this.timer);
    this.timer = undefined;
  }
}

/** What the lines of one outage are grouped by: a stable code where the error has one. */
function causeOf(error: unknown): string {
  if (error instanceof TokenStoreTimeoutError) return `no answer within ${error.timeoutMs} ms`;
  // Not `instanceof`: errors of Node's own modules may come from another realm (a VM context).
  for (let e = error, depth = 0; typeof e === 'object' && e !== null && depth < 5; e = (e as { cause?: unknown }).cause, depth++) {
    const code = (e as { code?: unknown }).code;
    if (typeof code === 'string' && code !== '') return code;
    if ((e as { cause?: unknown }).cause === undefined) return oneLine((e as Error).message ?? 'unknown error').slice(0, 120);
  }
  return oneLine(String(error)).slice(0, 120);
}

function describe(error: unknown): string {
  return oneLine(error instanceof Error ? `${error.name}: ${error.message}` : String(error));
}

function oneLine(text: string): string {
  return text.replace(/\s+/g, ' ');
}

function seconds(ms: number): string {
  return (ms / 1000).toFixed(1);
}

function requests(n: number): string {
  return n === 1 ? '1 request' : `${n} requests`;
}
