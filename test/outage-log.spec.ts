import { afterEach, beforeEach, describe, expect, it, jest } from '@jest/globals';
import { Logger } from '@nestjs/common';
import { TokenResourceUnavailableError } from '../lib/index.js';
import { OutageLog } from '../lib/outage-log.js';
import { TokenStoreTimeoutError } from '../lib/token-store-timeout.error.js';

/** The outage log's counting and timers, on a fake clock; the real outages are in guard-outage.e2e-spec.ts. */
describe('OutageLog', () => {
  let log: OutageLog;
  let errors: jest.SpiedFunction<Logger['error']>;
  let infos: jest.SpiedFunction<Logger['log']>;
  const lines = (spy: typeof errors) => spy.mock.calls.map((args) => String(args[0]));

  /** What pg's pool throws when the server refuses, wrapped as the store wraps it. */
  const refusal = () =>
    new TokenResourceUnavailableError('the token store is unavailable: connect ECONNREFUSED 127.0.0.1:5432', {
      cause: Object.assign(new Error('connect ECONNREFUSED 127.0.0.1:5432'), { code: 'ECONNREFUSED' }),
    });

  beforeEach(() => {
    jest.useFakeTimers();
    log = new OutageLog();
    errors = jest.spyOn(Logger.prototype, 'error').mockImplementation(() => undefined);
    infos = jest.spyOn(Logger.prototype, 'log').mockImplementation(() => undefined);
  });

  afterEach(() => {
    log.onModuleDestroy();
    jest.useRealTimers();
    errors.mockRestore();
    infos.mockRestore();
  });

  it('logs the first refusal at once, then the count of each second, and the end of the outage once', () => {
    for (let i = 0; i < 500; i++) {
      log.refused('token store', refusal());
      jest.advanceTimersByTime(5);
    }
    expect(lines(errors)).toEqual([
      'token store unavailable (ECONNREFUSED), answering 503: TokenResourceUnavailableError: the token store is unavailable: connect ECONNREFUSED 127.0.0.1:5432',
      'token store unavailable: 199 requests answered 503 in the last 1.0 s (ECONNREFUSED)',
      'token store unavailable: 200 requests answered 503 in the last 1.0 s (ECONNREFUSED)',
    ]);
    log.answered('token store');
    log.answered('token store');
    // The refusals since the last count are logged before the end, so the counts add up.
    expect(lines(errors).at(-1)).toBe('token store unavailable: 100 requests answered 503 in the last 0.5 s (ECONNREFUSED)');
    expect(lines(infos)).toEqual(['token store available again after 2.5 s (500 requests answered 503)']);
  });

  it('keeps the store and the keys apart, and tells causes by code along the cause chain, by timeout, else by message', () => {
    log.refused('token store', refusal());
    log.refused('token store', new TokenStoreTimeoutError(300));
    log.refused('token store', new TypeError('something unexpected'));
    log.refused(
      'token keys',
      new TokenResourceUnavailableError('the JWKS could not be fetched', {
        cause: new TypeError('fetch failed', { cause: Object.assign(new Error('x'), { code: 'ECONNREFUSED' }) }),
      }),
    );
    log.refused('token store', new TokenStoreTimeoutError(300));
    expect(lines(errors).map((line) => line.replace(/, answering 503: .*/, ''))).toEqual([
      'token store unavailable (ECONNREFUSED)',
      'token store unavailable (no answer within 300 ms)',
      'token store unavailable (something unexpected)',
      'token keys unavailable (ECONNREFUSED)',
    ]);
    log.answered('token keys');
    expect(lines(infos)).toEqual([expect.stringMatching(/^token keys available again after 0\.0 s \(1 request answered 503\)$/)]);
  });

  it('tells at most 20 causes apart in one outage, so that varied messages cannot grow it without bound', () => {
    for (let i = 0; i < 30; i++) log.refused('token store', new Error(`failure ${i}`));
    expect(lines(errors)).toHaveLength(21);
    expect(lines(errors)[20]).toMatch(/^token store unavailable \(other causes\), answering 503: Error: failure 20$/);
  });

  it('runs a timer only during an outage, and stops it on module destroy', () => {
    expect(jest.getTimerCount()).toBe(0);
    log.refused('token store', refusal());
    expect(jest.getTimerCount()).toBe(1);
    log.answered('token store');
    expect(jest.getTimerCount()).toBe(0);
    log.refused('token store', refusal());
    log.onModuleDestroy();
    expect(jest.getTimerCount()).toBe(0);
  });
});
