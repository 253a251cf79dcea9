import { percentile } from './bench-kit.js';
import { closedLoop, mergeResults, type LoadResult } from './closed-loop.js';

/** One thing a benchmark times: `call(i)` is its `i`-th call. */
export interface Variant {
  name: string;
  call: (i: number) => Promise<unknown>;
}

/** The windows each variant ran, per concurrency, in round order. */
export class RoundResults {
  private readonly windows = new Map<string, LoadResult[]>();

  add(name: string, concurrency: number, result: LoadResult): void {
    const key = `${name}@${concurrency}`;
    this.windows.set(key, [...(this.windows.get(key) ?? []), result]);
  }

  has(name: string, concurrency: number): boolean {
    return this.windows.has(`${name}@${concurrency}`);
  }

  /** All windows of a variant at a concurrency, summed. */
  merged(name: string, concurrency: number): LoadResult {
    return mergeResults(this.windows.get(`${name}@${concurrency}`)!);
  }

  /** Calls per second over all windows of a variant at a concurrency. */
  throughput(name: string, concurrency: number): number {
    const r = this.merged(name, concurrency);
    return (r.ops * 1000) / r.elapsedMs;
  }

  /** One table row per variant and concurrency that ran: ops/s, latency, Node CPU per call. */
  tableRows(variants: Variant[], concurrencies: number[]): Array<Record<string, string | number>> {
    return concurrencies.flatMap((concurrency) =>
      variants
        .filter((variant) => this.has(variant.name, concurrency))
        .map((variant) => {
          const r = this.merged(variant.name, concurrency);
          return {
            variant: variant.name,
            conc: String(concurrency),
            'ops/s': Math.round((r.ops * 1000) / r.elapsedMs),
            'p50 ms': percentile(r.latenciesMs, 50),
            'p99 ms': percentile(r.latenciesMs, 99),
            'node CPU µs/op': (r.cpuMicros / r.ops).toFixed(1),
          };
        }),
    );
  }

  /**
   * The ratio of `ours` to `theirs` within each round, sorted. Each round runs every
   * variant once, back to back, so both sides of a ratio see the same machine.
   */
  roundRatios(ours: string, theirs: string, concurrency: number): number[] {
    const a = this.windows.get(`${ours}@${concurrency}`)!;
    const b = this.windows.get(`${theirs}@${concurrency}`)!;
    return a.map((window, i) => window.ops / b[i].ops).sort((x, y) => x - y);
  }

  /** The median of {@link roundRatios}: it resists bursts of other load on a shared machine. */
  medianRatio(ours: string, theirs: string, concurrency: number): number {
    const sorted = this.roundRatios(ours, theirs, concurrency);
    return sorted[Math.floor((sorted.length - 1) / 2)] / 2 + sorted[Math.ceil((sorted.length - 1) / 2)] / 2;
  }

  /** `c=N: 0.95x (rounds 0.90-1.01, totals 0.96x)` for one concurrency. */
  describeRatio(ours: string, theirs: string, concurrency: number): string {
    const sorted = this.roundRatios(ours, theirs, concurrency);
    const totals = this.throughput(ours, concurrency) / this.throughput(theirs, concurrency);
    return `c=${concurrency}: ${this.medianRatio(ours, theirs, concurrency).toFixed(2)}x (rounds ${sorted[0].toFixed(2)}-${sorted.at(-1)!.toFixed(2)}, totals ${totals.toFixed(2)}x)`;
  }
}

/** The unmeasured run of a variant right before each of its windows. */
const LEAD_IN_MS = 250;

/**
 * Runs every variant at each concurrency: a short warm-up each, then `rounds` rounds in
 * which each variant runs once for `seconds`, in alternating order, each window after a
 * full garbage collection (when Node runs with `--expose-gc`) and a short unmeasured lead-in.
 */
export async function runInterleaved(variants: Variant[], concurrencies: number[], rounds: number, seconds: number): Promise<RoundResults> {
  const results = new RoundResults();
  for (const concurrency of concurrencies) {
    // Warm-up: every connection prepares its statements, the JIT settles.
    for (const variant of variants) await closedLoop(variant.call, concurrency, 500);
    for (let round = 0; round < rounds; round++) {
      for (const variant of round % 2 === 0 ? variants : [...variants].reverse()) {
        // What the window before left behind (its garbage, a cache it filled) is paid for
        // here, unmeasured: a variant that follows a fast, allocating one would otherwise
        // pay its collections, and only in the rounds in which it follows it.
        (globalThis as { gc?: () => void }).gc?.();
        await closedLoop(variant.call, concurrency, LEAD_IN_MS);
        results.add(variant.name, concurrency, await closedLoop(variant.call, concurrency, seconds * 1000));
      }
    }
  }
  return results;
}
