import { performance } from 'node:perf_hooks';

/**
 * Runs an asynchronous task one run at a time, each started at least `gapMs` after the
 * previous one: requests made while a run is on its way or waiting share the next run, so
 * a burst of requests costs one run per gap however long it lasts.
 */
export class Pacer {
  /** Counts runs and resets: a run's end counts only if nothing started or reset since. */
  private generation = 0;
  private busy = false;
  private pending = false;
  private lastStart = -Infinity;
  private timer?: NodeJS.Timeout;

  constructor(
    private readonly task: () => Promise<unknown>,
    private readonly gapMs: number,
  ) {}

  /** Whether a run is on its way. */
  get running(): boolean {
    return this.busy;
  }

  /** Runs the task now, or as soon as the run on its way has ended and the gap has passed. */
  request(): void {
    if (this.busy || this.timer) {
      this.pending = true;
      return;
    }
    const wait = this.lastStart + this.gapMs - performance.now();
    if (wait > 0) {
      this.timer = setTimeout(() => {
        this.timer = undefined;
        this.run();
      }, wait).unref();
      return;
    }
    this.run();
  }

  /** Forgets the run on its way (which may never end: a silent connection) and any request. */
  reset(): void {
    this.generation++;
    this.busy = false;
    this.pending = false;
    clearTimeout(this.timer);
    this.timer = undefined;
  }

  private run(): void {
    const generation = ++this.generation;
    this.busy = true;
    this.pending = false;
    this.lastStart = performance.now();
    // The task handles its own failures; a rejection here must not go unhandled.
    void this.task()
      .catch(() => undefined)
      .finally(() => {
        if (generation !== this.generation) return;
        this.busy = false;
        if (this.pending) this.request();
      });
  }
}
