import { afterEach, describe, expect, it, jest } from '@jest/globals';
import { TimeoutError, withTimeout } from '../lib/guard/with-timeout.js';

describe('withTimeout (bounds the guard store check)', () => {
  afterEach(() => {
    jest.useRealTimers();
  });

  it('settles like the work and clears its timer', async () => {
    jest.useFakeTimers();
    await expect(withTimeout(Promise.resolve(42), 1000)).resolves.toBe(42);
    expect(jest.getTimerCount()).toBe(0);
    await expect(withTimeout(Promise.reject(new Error('down')), 1000)).rejects.toThrow('down');
    expect(jest.getTimerCount()).toBe(0);
  });

  it('rejects with TimeoutError when the work never settles', async () => {
    jest.useFakeTimers();
    const pending = withTimeout(new Promise(() => undefined), 250);
    jest.advanceTimersByTime(250);
    await expect(pending).rejects.toBeInstanceOf(TimeoutError);
    await expect(pending).rejects.toMatchObject({ timeoutMs: 250 });
  });
});
