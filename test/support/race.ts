import { TokenAlreadyRevokedError } from '../../lib/index.js';

/** How the calls of a race ended. */
export interface Tally {
  succeeded: number;
  alreadyRevoked: number;
  other: unknown[];
}

/** Counts resolved calls, TokenAlreadyRevokedError rejections and any other outcome. */
export function tally(results: PromiseSettledResult<unknown>[]): Tally {
  const out: Tally = { succeeded: 0, alreadyRevoked: 0, other: [] };
  for (const result of results) {
    if (result.status === 'fulfilled') out.succeeded += 1;
    else if (result.reason instanceof TokenAlreadyRevokedError) out.alreadyRevoked += 1;
    else out.other.push(result.reason);
  }
  return out;
}

/**
 * Starts `callers` calls released by one gate, so that they reach the pool together; with
 * at least that many pooled connections open, each runs on a connection of its own.
 */
export async function raceCalls(callers: number, call: (i: number) => Promise<unknown>): Promise<Tally> {
  let open!: () => void;
  const gate = new Promise<void>((resolve) => {
    open = resolve;
  });
  const calls = Array.from({ length: callers }, (_, i) => gate.then(() => call(i)));
  open();
  return tally(await Promise.allSettled(calls));
}
