import { Pacer } from '../lib/revocation-cache/pacer.js';

/** Pacer: the revocation cache's wake-ups and polls, one run at a time, bursts sharing the next. */

/** A task whose runs end only when the test says so. */
function gatedTask() {
  const ends: Array<() => void> = [];
  return {
    runs: () => ends.length,
    task: () => new Promise<void>((resolve) => ends.push(resolve)),
    end: async (run: number) => {
      ends[run]();
      // Lets the run's `finally` and the gap's timer (0 ms here) fire.
      await new Promise((resolve) => setTimeout(resolve, 5));
    },
  };
}

describe('Pacer', () => {
  it('runs one at a time: a burst of requests during a run shares one more run after it', async () => {
    const gated = gatedTask();
    const pacer = new Pacer(gated.task, 0);
    for (let i = 0; i < 100; i++) pacer.request();
    expect(gated.runs()).toBe(1);
    expect(pacer.running).toBe(true);
    await gated.end(0);
    expect(gated.runs()).toBe(2);
    await gated.end(1);
    expect(gated.runs()).toBe(2);
    expect(pacer.running).toBe(false);
  });

  it('starts runs at least the gap apart', async () => {
    const gated = gatedTask();
    const pacer = new Pacer(gated.task, 60_000);
    pacer.request();
    await gated.end(0);
    pacer.request();
    await new Promise((resolve) => setTimeout(resolve, 20));
    expect(gated.runs()).toBe(1);
    pacer.reset();
  });

  it('after reset, a run that never ended blocks nothing, and its end is ignored', async () => {
    const gated = gatedTask();
    const pacer = new Pacer(gated.task, 0);
    pacer.request();
    pacer.request();
    pacer.reset();
    pacer.request();
    expect(gated.runs()).toBe(2);
    // The forgotten run ends late: it must not start the request it no longer owns.
    await gated.end(0);
    expect(gated.runs()).toBe(2);
    expect(pacer.running).toBe(true);
    await gated.end(1);
    expect(pacer.running).toBe(false);
  });
});
