import { setImmediate as yieldToLoop } from 'node:timers/promises';

/** What one closed-loop measurement saw. */
export interface LoadResult {
  /** Calls completed inside the window. */
  ops: number;
  /** Length of the window in milliseconds. */
  elapsedMs: number;
  /** Latency of each completed call, in milliseconds. */
  latenciesMs: number[];
  /**
   * CPU time this process spent in the window (user + system, µs). Unlike throughput it
   * hardly moves with the load of other processes, so per call it shows the client-side
   * cost of a variant even on a shared machine.
   */
  cpuMicros: number;
}

/** How long calls answered from memory may keep the event loop from I/O, as a server's requests never do. */
const MAX_LOOP_HOLD_MS = 5;

/**
 * Calls `call(i)` back to back from `concurrency` workers for `durationMs` and times
 * each call. A call that is in flight when the window closes is awaited but not counted.
 * Workers let I/O run every {@link MAX_LOOP_HOLD_MS}: calls that resolve without I/O would
 * otherwise hold the event loop for the whole window (and a cache would miss its polls).
 */
export async function closedLoop(call: (i: number) => Promise<unknown>, concurrency: number, durationMs: number): Promise<LoadResult> {
  const latenciesMs: number[] = [];
  const cpuBefore = process.cpuUsage();
  const started = performance.now();
  const deadline = started + durationMs;
  let next = 0;
  let yieldedAt = started;
  await Promise.all(
    Array.from({ length: concurrency }, async () => {
      for (;;) {
        const before = performance.now();
        if (before >= deadline) return;
        await call(next++);
        const after = performance.now();
        if (after <= deadline) latenciesMs.push(after - before);
        if (after - yieldedAt > MAX_LOOP_HOLD_MS) {
          yieldedAt = after;
          await yieldToLoop();
        }
      }
    }),
  );
  const cpu = process.cpuUsage(cpuBefore);
  return { ops: latenciesMs.length, elapsedMs: durationMs, latenciesMs, cpuMicros: cpu.user + cpu.system };
}

/** Sums several windows of the same variant into one. */
export function mergeResults(results: LoadResult[]): LoadResult {
  return {
    ops: results.reduce((sum, r) => sum + r.ops, 0),
    elapsedMs: results.reduce((sum, r) => sum + r.elapsedMs, 0),
    latenciesMs: results.flatMap((r) => r.latenciesMs),
    cpuMicros: results.reduce((sum, r) => sum + r.cpuMicros, 0),
  };
}
