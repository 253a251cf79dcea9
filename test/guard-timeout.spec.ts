import { afterAll, beforeAll, expect, it, jest } from '@jest/globals';
import { Logger, type INestApplication } from '@nestjs/common';
import request from 'supertest';
import { TokenService } from '../lib/index.js';
import { LogOutMarkerCache } from '../lib/marker-cache/log-out-marker.cache.js';
import { TokenStore } from '../lib/token.store.js';
import { createGuardApp } from './support/guard-app.js';
import { GuardedSubjectController } from './support/guarded-controller.js';
import { proxyDatabase, type TcpProxy } from './support/tcp-proxy.js';
import { createTestDatabase, type TestDatabase } from './support/test-database.js';
import { waitFor } from './support/wait-for.js';

/**
 * The guard has no timer of its own: the store bounds every statement of its check by
 * `storeTimeoutMs`. Here the check takes the log-out marker cache's path (the token's own
 * row only), and PostgreSQL goes silent mid-query.
 */

const STORE_TIMEOUT_MS = 300;

let db: TestDatabase;
let proxy: TcpProxy;
let app: INestApplication;

beforeAll(async () => {
  db = await createTestDatabase();
  let url: string;
  ({ proxy, url } = await proxyDatabase(db.url));
  app = await createGuardApp(url, {
    platform: 'express',
    // A long staleness bound keeps the cache in use while its listener is silent too.
    options: { storeTimeoutMs: STORE_TIMEOUT_MS, logOutMarkerCache: { enabled: true, maxStalenessMs: 60_000 } },
    controllers: [GuardedSubjectController],
  });
});

afterAll(async () => {
  // Frozen connections never answer a goodbye either: drop them, so that closing is quick.
  proxy?.cut();
  proxy?.setMode('forward');
  await app?.close();
  await proxy?.close();
  await db?.drop();
});

it('answers 503 within about storeTimeoutMs when the store goes silent on the marker-cache path, logged as no answer within storeTimeoutMs', async () => {
  const { token } = await app.get(TokenService).issueToken({ subject: 'hana' });
  const get = () => request(app.getHttpServer()).get('/guarded').set('Authorization', `Bearer ${token}`).timeout(5000);
  await waitFor(() => app.get(LogOutMarkerCache).fresh, 10_000, 'the marker cache to be fresh');
  // The first check reads both keys and leaves the subject's marker in the cache.
  expect((await get()).status).toBe(200);
  const query = jest.spyOn(app.get(TokenStore), 'query');
  const errors = jest.spyOn(Logger.prototype, 'error').mockImplementation(() => undefined);
  try {
    proxy.freeze();
    proxy.setMode('blackhole');
    const started = performance.now();
    const res = await get();
    const ms = performance.now() - started;
    expect({ status: res.status, message: res.body.message }).toEqual({ status: 503, message: 'token store unavailable' });
    expect(ms).toBeGreaterThanOrEqual(STORE_TIMEOUT_MS - 20);
    expect(ms).toBeLessThan(STORE_TIMEOUT_MS + 1500);
    expect(query.mock.calls.map(([statement]) => statement.name)).toEqual([expect.stringMatching(/^ntr_own_state_/)]);
    expect(String(errors.mock.calls[0]?.[0])).toContain(`token store unavailable (no answer within ${STORE_TIMEOUT_MS} ms)`);
  } finally {
    errors.mockRestore();
    query.mockRestore();
  }
});
