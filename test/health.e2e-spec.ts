import { afterAll, beforeAll, describe, expect, it, jest } from '@jest/globals';
import { Controller, Get, type INestApplication } from '@nestjs/common';
import { HealthCheck, HealthCheckService, TerminusModule } from '@nestjs/terminus';
import request from 'supertest';
import { RevocationCache, SkipTokenCheck, TokenStoreHealthIndicator } from '../lib/index.js';
import { createGuardApp } from './support/guard-app.js';
import { proxyDatabase, type TcpProxy } from './support/tcp-proxy.js';
import { createTestDatabase, type TestDatabase } from './support/test-database.js';
import { waitFor } from './support/wait-for.js';

const STORE_TIMEOUT_MS = 300;

/** A health controller as an application writes it: the indicator is injected with no provider of its own. */
@Controller('health')
@SkipTokenCheck()
class HealthController {
  constructor(
    private readonly health: HealthCheckService,
    private readonly tokenStore: TokenStoreHealthIndicator,
  ) {}

  @Get()
  @HealthCheck()
  check() {
    return this.health.check([() => this.tokenStore.isHealthy()]);
  }

  @Get('named')
  @HealthCheck()
  named() {
    return this.health.check([() => this.tokenStore.isHealthy('tokens')]);
  }
}

let db: TestDatabase;

beforeAll(async () => {
  db = await createTestDatabase();
});

afterAll(async () => {
  await db?.drop();
});

describe('TokenStoreHealthIndicator through a real outage', () => {
  let proxy: TcpProxy;
  let app: INestApplication;

  beforeAll(async () => {
    let url: string;
    ({ proxy, url } = await proxyDatabase(db.url));
    app = await createGuardApp(url, {
      platform: 'express',
      options: { storeTimeoutMs: STORE_TIMEOUT_MS },
      imports: [TerminusModule.forRoot({ logger: false })],
      controllers: [HealthController],
    });
  });

  afterAll(async () => {
    await app?.close();
    await proxy?.close();
  });

  const health = (path = '/health') => request(app.getHttpServer()).get(path).timeout(5000);

  it('is up while the store answers, down with the cause while it does not, and up again', async () => {
    const up = await health();
    expect(up.status).toBe(200);
    expect(up.body).toMatchObject({ status: 'ok', info: { tokenStore: { status: 'up' } } });
    // No revocation cache: nothing to say about it.
    expect(up.body.info.tokenStore).toEqual({ status: 'up' });

    proxy.setMode('reset');
    proxy.cut();
    try {
      const down = await health();
      expect(down.status).toBe(503);
      expect(down.body).toMatchObject({ status: 'error', error: { tokenStore: { status: 'down' } } });
      expect(down.body.error.tokenStore.message).toMatch(/token store is unavailable/);
      expect(typeof down.body.error.tokenStore.code).toBe('string');
    } finally {
      proxy.setMode('forward');
    }

    await waitFor(async () => (await health()).status === 200, 10_000, 'the health check to be up again');
    expect((await health()).body.info.tokenStore).toEqual({ status: 'up' });
  });

  it('is down, within storeTimeoutMs, when the database stops answering', async () => {
    proxy.setMode('blackhole');
    proxy.cut();
    try {
      const down = await health();
      expect(down.status).toBe(503);
      expect(down.body.error.tokenStore).toEqual({
        status: 'down',
        message: `the token store gave no answer within ${STORE_TIMEOUT_MS} ms`,
      });
    } finally {
      proxy.setMode('forward');
    }
    await waitFor(async () => (await health()).status === 200, 10_000, 'the health check to be up again');
  });

  it('reports under the key it is given', async () => {
    const res = await health('/health/named');
    expect(res.status).toBe(200);
    expect(res.body.info).toEqual({ tokens: { status: 'up' } });
  });
});

describe('TokenStoreHealthIndicator with the revocation cache on', () => {
  let app: INestApplication;

  beforeAll(async () => {
    app = await createGuardApp(db.url, {
      platform: 'express',
      options: { revocationCache: { enabled: true } },
      imports: [TerminusModule.forRoot({ logger: false })],
      controllers: [HealthController],
    });
  });

  afterAll(async () => {
    await app?.close();
  });

  it('reports whether the cache is fresh', async () => {
    const cache = app.get(RevocationCache);
    await waitFor(() => cache.fresh, 10_000, 'the revocation cache to be fresh');
    const res = await request(app.getHttpServer()).get('/health').timeout(5000);
    expect(res.status).toBe(200);
    expect(res.body.info.tokenStore).toEqual({ status: 'up', revocationCache: { fresh: true } });
    // A stale cache leaves the store's health alone: checks go to the store, which answers.
    const indicator = app.get(TokenStoreHealthIndicator);
    const freshness = jest.spyOn(cache, 'fresh', 'get').mockReturnValue(false);
    try {
      expect(await indicator.isHealthy()).toEqual({ tokenStore: { status: 'up', revocationCache: { fresh: false } } });
    } finally {
      freshness.mockRestore();
    }
  });
});
