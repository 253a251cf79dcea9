import { afterAll, afterEach, beforeAll, beforeEach, expect, it, jest } from '@jest/globals';
import { Logger, type INestApplication } from '@nestjs/common';
import request from 'supertest';
import { TokenService } from '../lib/index.js';
import { RevocationCache } from '../lib/revocation-cache/revocation.cache.js';
import { TokenStore } from '../lib/token.store.js';
import { createGuardApp } from './support/guard-app.js';
import { GuardedSubjectController } from './support/guarded-controller.js';
import { proxyDatabase, type TcpProxy } from './support/tcp-proxy.js';
import { createTestDatabase, type TestDatabase } from './support/test-database.js';
import { waitFor } from './support/wait-for.js';

/**
 * The guard has no timer of its own: the store bounds the statements of its check by
 * `storeTimeoutMs`. Here the check takes the revocation cache's path for a new token of a
 * known subject (its own row first), and PostgreSQL goes silent mid-query.
 */

const STORE_TIMEOUT_MS = 1000;

let db: TestDatabase;
let proxy: TcpProxy;
let app: INestApplication;
let errors: jest.SpiedFunction<Logger['error']>;

beforeAll(async () => {
  db = await createTestDatabase();
});

beforeEach(async () => {
  let url: string;
  ({ proxy, url } = await proxyDatabase(db.url));
  app = await createGuardApp(url, {
    platform: 'express',
    // A long staleness bound keeps the cache in use while its listener is silent too.
    options: { storeTimeoutMs: STORE_TIMEOUT_MS, revocationCache: { enabled: true, maxStalenessMs: 60_000 } },
    controllers: [GuardedSubjectController],
  });
  await waitFor(() => app.get(RevocationCache).fresh, 10_000, 'the revocation cache to be fresh');
  errors = jest.spyOn(Logger.prototype, 'error').mockImplementation(() => undefined);
});

afterEach(async () => {
  errors.mockRestore();
  jest.restoreAllMocks();
  // Frozen connections never answer a goodbye either: drop them, so that closing is quick.
  proxy.cut();
  proxy.setMode('forward');
  await app.close();
  await proxy.close();
});

afterAll(async () => {
  await db?.drop();
});

/** A token the cache has not seen, whose subject's marker it knows after one admitted request with another token. */
async function cachedToken(subject: string): Promise<string> {
  const tokens = app.get(TokenService);
  expect((await get((await tokens.issueToken({ subject })).token)).status).toBe(200);
  return (await tokens.issueToken({ subject })).token;
}

function get(token: string) {
  return request(app.getHttpServer()).get('/guarded').set('Authorization', `Bearer ${token}`).timeout(5000);
}

function silence(): void {
  proxy.freeze();
  proxy.setMode('blackhole');
}

it('answers 503 within about storeTimeoutMs when the store goes silent on the revocation-cache path, logged as no answer within storeTimeoutMs', async () => {
  const token = await cachedToken('hana');
  const query = jest.spyOn(app.get(TokenStore), 'query');
  silence();
  const started = performance.now();
  const res = await get(token);
  const ms = performance.now() - started;
  expect({ status: res.status, message: res.body.message }).toEqual({ status: 503, message: 'token store unavailable' });
  expect(ms).toBeGreaterThanOrEqual(STORE_TIMEOUT_MS - 20);
  expect(ms).toBeLessThan(STORE_TIMEOUT_MS + 1500);
  expect(query.mock.calls.map(([statement]) => statement.name)).toEqual([expect.stringMatching(/^ntr_own_state_/)]);
  expect(String(errors.mock.calls[0]?.[0])).toContain(`token store unavailable (no answer within ${STORE_TIMEOUT_MS} ms)`);
});

it('bounds the whole check by storeTimeoutMs when, after a slow first read, the cache cannot vouch for the marker and the store goes silent', async () => {
  const SLOW_MS = 800;
  const token = await cachedToken('ines');
  const store = app.get(TokenStore);
  const query = jest.spyOn(store, 'query');
  // The token's own row comes late (the wait is before the store's timer starts, as a slow
  // event loop would have it)...
  query.mockImplementationOnce(async (statement, values) => {
    await new Promise((resolve) => setTimeout(resolve, SLOW_MS));
    return TokenStore.prototype.query.call(store, statement, values);
  });
  // ... then the cache cannot vouch for the marker any more, and the database goes silent.
  jest.spyOn(app.get(RevocationCache), 'confirms').mockImplementationOnce(() => {
    silence();
    return false;
  });
  const started = performance.now();
  const res = await get(token);
  const ms = performance.now() - started;
  expect(res.status).toBe(503);
  expect(query.mock.calls.map(([statement]) => statement.name)).toEqual([
    expect.stringMatching(/^ntr_own_state_/),
    expect.stringMatching(/^ntr_token_state_/),
  ]);
  // The second read gets what the first left of storeTimeoutMs, not storeTimeoutMs again.
  expect(ms).toBeGreaterThanOrEqual(STORE_TIMEOUT_MS - 20);
  expect(ms).toBeLessThan(SLOW_MS + STORE_TIMEOUT_MS - 400);
});
