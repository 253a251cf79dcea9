import type { INestApplication } from '@nestjs/common';
import { TokenResourceUnavailableError, TokenService } from '../lib/index.js';
import { proxyDatabase, type TcpProxy } from './support/tcp-proxy.js';
import { createTestDatabase, type TestDatabase } from './support/test-database.js';
import { createTokenApp } from './support/token-app.js';

/**
 * Direct revoked-checks (no guard and no guard timer in between) when PostgreSQL goes
 * silent mid-query: `tokenRevoked` documents TokenResourceUnavailableError, never a hang
 * and never pg's own error.
 */

const STORE_TIMEOUT_MS = 300;

let db: TestDatabase;
let proxy: TcpProxy;
let app: INestApplication;

beforeAll(async () => {
  db = await createTestDatabase();
  let url: string;
  ({ proxy, url } = await proxyDatabase(db.url));
  app = await createTokenApp(url, { options: { storeTimeoutMs: STORE_TIMEOUT_MS, expunge: { enabled: false } } });
});

afterAll(async () => {
  proxy.setMode('forward');
  await app.close();
  await proxy.close();
  await db.drop();
});

it('rejects tokenRevoked and jtiRevoked with TokenResourceUnavailableError once storeTimeoutMs passes on a silent connection', async () => {
  const tokens = app.get(TokenService);
  const { token, jti } = await tokens.issueToken({ subject: 'silent' });
  expect(await tokens.tokenRevoked(token)).toBe(false);
  proxy.freeze();
  proxy.setMode('blackhole');
  const started = Date.now();
  await expect(tokens.tokenRevoked(token)).rejects.toBeInstanceOf(TokenResourceUnavailableError);
  await expect(tokens.jtiRevoked(jti)).rejects.toBeInstanceOf(TokenResourceUnavailableError);
  expect(Date.now() - started).toBeLessThan(20 * STORE_TIMEOUT_MS);
});
