import { afterAll, afterEach, beforeAll, describe, expect, it, jest } from '@jest/globals';
import { Logger, type INestApplication } from '@nestjs/common';
import pg from 'pg';
import request from 'supertest';
import { DataSource } from 'typeorm';
import { TokenService } from '../lib/index.js';
import { createGuardApp, PLATFORMS, type Platform } from './support/guard-app.js';
import { GuardedSubjectController } from './support/guarded-controller.js';
import { proxyDatabase, type TcpProxy } from './support/tcp-proxy.js';
import { createTestDatabase, type TestDatabase } from './support/test-database.js';

const STORE_TIMEOUT_MS = 300;

const UNAVAILABLE = { statusCode: 503, error: 'Service Unavailable', message: 'token store unavailable' };

async function asAdmin<T>(work: (client: pg.Client) => Promise<T>): Promise<T> {
  const client = new pg.Client({ connectionString: process.env.DATABASE_URL });
  await client.connect();
  try {
    return await work(client);
  } finally {
    await client.end();
  }
}

describe.each(PLATFORMS)('RevokedTokenGuard when the token store fails, on %s', (platform: Platform) => {
  let db: TestDatabase;
  let proxy: TcpProxy;
  let app: INestApplication;
  let token: string;
  let logged: jest.SpiedFunction<Logger['error']>;
  let loggedInfo: jest.SpiedFunction<Logger['log']>;
  /** Requests the guard answered 503 in the current test. */
  let refused: number;

  /** GETs the guarded route with the token; a hang fails the test after 5 s instead of passing. */
  async function get(): Promise<{ status: number; body: unknown; ms: number; challenge?: string }> {
    const started = performance.now();
    const res = await request(app.getHttpServer()).get('/guarded').set('Authorization', `Bearer ${token}`).timeout(5000);
    if (res.status === 503) refused++;
    return { status: res.status, body: res.body, ms: performance.now() - started, challenge: res.headers['www-authenticate'] };
  }

  /** Retries until the guard admits again (a few pooled connections may still be dying). */
  async function recovered(): Promise<number> {
    let status = 0;
    for (let attempt = 0; attempt < 20 && status !== 200; attempt++) {
      ({ status } = await get());
      if (status !== 200) await new Promise((resolve) => setTimeout(resolve, 100));
    }
    return status;
  }

  /** Cuts every pooled connection and waits until the pool has noticed, so no query races a dying one. */
  async function cutConnections(): Promise<void> {
    proxy.cut();
    const pool = (app.get(DataSource).driver as unknown as { master: { totalCount: number } }).master;
    for (let i = 0; i < 100 && pool.totalCount > 0; i++) await new Promise((resolve) => setTimeout(resolve, 10));
    expect(pool.totalCount).toBe(0);
  }

  beforeAll(async () => {
    db = await createTestDatabase();
    let url: string;
    ({ proxy, url } = await proxyDatabase(db.url));
    app = await createGuardApp(url, {
      platform,
      options: { storeTimeoutMs: STORE_TIMEOUT_MS },
      controllers: [GuardedSubjectController],
    });
    ({ token } = await app.get(TokenService).issueToken({ subject: 'olivia' }));
  });

  beforeEach(() => {
    refused = 0;
    logged = jest.spyOn(Logger.prototype, 'error');
    loggedInfo = jest.spyOn(Logger.prototype, 'log');
  });

  afterEach(async () => {
    logged.mockRestore();
    loggedInfo.mockRestore();
    proxy.setMode('forward');
  });

  afterAll(async () => {
    await app?.close();
    await proxy?.close();
    await db?.drop();
  });

  /**
   * The error lines logged so far: each refusal is counted in exactly one of them, either
   * the first of its cause (`..., answering 503: <error>`) or a count of those since.
   */
  function outageLines(): { lines: string[]; counted: number } {
    const lines = logged.mock.calls.map((args) => String(args[0]));
    let counted = 0;
    for (const line of lines) {
      expect(line).not.toContain(token);
      expect(line).not.toContain(token.split('.')[2]);
      expect(line).not.toMatch(/\n/);
      const summary = /^token store unavailable: (\d+) requests? answered 503 in the last \d+\.\d s \(.+\)$/.exec(line);
      if (summary) counted += Number(summary[1]);
      else if (/^token store unavailable \(.+\), answering 503: \S/.test(line)) counted++;
      else throw new Error(`unexpected error line: ${line}`);
    }
    return { lines, counted };
  }

  /**
   * Once the store answered again: every refused request was counted, and the end of each
   * outage logged once. Requests that race may end an outage and start another (a 200
   * between 503s): `outages` says how many there may be.
   */
  function expectOutageLogged(outages: { atMost: number } = { atMost: 1 }): void {
    expect(refused).toBeGreaterThan(0);
    expect(outageLines().counted).toBe(refused);
    const recoveries = loggedInfo.mock.calls.map((args) => String(args[0])).filter((line) => line.includes('available again'));
    expect(recoveries.length).toBeGreaterThanOrEqual(1);
    expect(recoveries.length).toBeLessThanOrEqual(outages.atMost);
    let recovered = 0;
    for (const line of recoveries) {
      const ended = /^token store available again after \d+\.\d s \((\d+) requests? answered 503\)$/.exec(line);
      expect(ended).not.toBeNull();
      recovered += Number(ended![1]);
    }
    expect(recovered).toBe(refused);
  }

  it('answers 200 while the store is up', async () => {
    expect((await get()).status).toBe(200);
    expect(logged).not.toHaveBeenCalled();
  });

  it('answers 503 while the database refuses connections, and 200 again once it is back', async () => {
    await cutConnections();
    proxy.setMode('reset');
    const down = await get();
    expect(down.status).toBe(503);
    expect(down.body).toEqual(UNAVAILABLE);
    // The token is not at fault: no WWW-Authenticate challenge asks for other credentials.
    expect(down.challenge).toBeUndefined();
    expect(down.ms).toBeLessThan(STORE_TIMEOUT_MS + 1000);
    // The first failure is logged at once.
    expect(outageLines().lines).toHaveLength(1);
    proxy.setMode('forward');
    expect(await recovered()).toBe(200);
    expectOutageLogged();
  });

  it('answers 503 within storeTimeoutMs while the database never answers, even with the pool exhausted, and 200 once it is back', async () => {
    await cutConnections();
    proxy.setMode('blackhole');
    // More requests than the pool has connections: the extra ones wait in pg-pool's queue.
    const answers = await Promise.all(Array.from({ length: 15 }, () => get()));
    for (const answer of answers) {
      expect(answer.status).toBe(503);
      expect(answer.body).toEqual(UNAVAILABLE);
      expect(answer.challenge).toBeUndefined();
      expect(answer.ms).toBeGreaterThanOrEqual(STORE_TIMEOUT_MS - 20);
      expect(answer.ms).toBeLessThan(STORE_TIMEOUT_MS + 1500);
    }
    expect(proxy.held()).toBeGreaterThan(0);
    // One timeout, the store's, so one cause: its first line and at most a count or two.
    expect(outageLines().lines.length).toBeLessThanOrEqual(3);
    for (const line of outageLines().lines) expect(line).toContain(`(no answer within ${STORE_TIMEOUT_MS} ms)`);
    expect(logged.mock.calls[0].join(' ')).toContain(`no answer within ${STORE_TIMEOUT_MS} ms`);
    proxy.setMode('forward');
    expect(await recovered()).toBe(200);
    expectOutageLogged();
  });

  it('recovers without a restart when every pooled connection goes silent mid-query (a partition that never heals)', async () => {
    const pool = (app.get(DataSource).driver as unknown as { master: pg.Pool & { options: { max: number } } }).master;
    // Fill the pool with idle connections, so that the first `max` requests below land on one.
    const clients = await Promise.all(Array.from({ length: pool.options.max }, () => pool.connect()));
    for (const client of clients) client.release();
    expect(pool.totalCount).toBe(pool.options.max);
    proxy.freeze();
    const answers = await Promise.all(Array.from({ length: pool.options.max + 2 }, () => get()));
    // Those on a frozen connection answer 503. The two queued behind them may get a new
    // connection, which the proxy forwards, once pg's query_timeout has discarded a frozen
    // one: that can beat the guard's own timer of the same length, and then they rightly
    // answer 200. Nothing else is an acceptable answer.
    expect(answers.filter((answer) => answer.status === 503).length).toBeGreaterThanOrEqual(pool.options.max);
    for (const answer of answers) expect([200, 503]).toContain(answer.status);
    // The frozen connections never answer again; only if pg gave up on them (and the pool
    // dropped them) can new connections be made.
    expect(await recovered()).toBe(200);
    // Each 200 of the two queued requests may end the outage between 503s.
    expectOutageLogged({ atMost: 3 });
  });

  it('answers 503 while the DataSource is destroyed, and 200 once it is initialized again, without a restart', async () => {
    const dataSource = app.get(DataSource);
    await dataSource.destroy();
    const down = await get();
    expect(down.status).toBe(503);
    expect(down.body).toEqual(UNAVAILABLE);
    expect(outageLines().lines).toHaveLength(1);
    await dataSource.initialize();
    expect((await get()).status).toBe(200);
    expectOutageLogged();
  });

  it('answers 503 when PostgreSQL terminates the connections and rejects new ones, 200 once it accepts again', async () => {
    await asAdmin(async (admin) => {
      await admin.query(`ALTER DATABASE ${db.name} ALLOW_CONNECTIONS false`);
      await admin.query('SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1', [db.name]);
    });
    try {
      // A terminated pooled client may fail its query or be replaced by a new one that is
      // refused: either way the answer is 503, never a 500 and never admitted.
      for (let i = 0; i < 3; i++) {
        const down = await get();
        expect(down.status).toBe(503);
        expect(down.body).toEqual(UNAVAILABLE);
      }
    } finally {
      await asAdmin((admin) => admin.query(`ALTER DATABASE ${db.name} ALLOW_CONNECTIONS true`));
    }
    expect(await recovered()).toBe(200);
    expectOutageLogged();
  });

  it('answers 503, never 500, to any other error from the store, and never admits', async () => {
    // A hang is the store's to bound (see the silent-database tests and guard-timeout.spec.ts).
    const spy = jest
      .spyOn(TokenService.prototype, 'checkClaims')
      .mockRejectedValueOnce(new TypeError('something unexpected'))
      .mockRejectedValueOnce('not even an Error');
    try {
      for (const failed of [await get(), await get()])
        expect({ status: failed.status, body: failed.body }).toEqual({ status: 503, body: UNAVAILABLE });
      // Two causes, each logged at once.
      expect(outageLines().lines).toHaveLength(2);
      expect(logged.mock.calls[0].join(' ')).toContain('TypeError: something unexpected');
      expect(logged.mock.calls[1].join(' ')).toContain('not even an Error');
    } finally {
      spy.mockRestore();
    }
    expect((await get()).status).toBe(200);
    expectOutageLogged();
  });

  it('logs a long outage in a few lines rather than one per refused request, and its end in one', async () => {
    await cutConnections();
    proxy.setMode('reset');
    // At least a hundred requests over at least 2.5 s, sixteen at a time, as a busy instance
    // gets them (a loaded machine takes longer for them, and may log a line more per second).
    const started = performance.now();
    const statuses: number[] = [];
    while (performance.now() - started < 2500 || statuses.length < 100) {
      statuses.push(...(await Promise.all(Array.from({ length: 16 }, () => get()))).map((answer) => answer.status));
      await new Promise((resolve) => setTimeout(resolve, 40));
    }
    const seconds = Math.ceil((performance.now() - started) / 1000);
    expect(statuses.every((status) => status === 503)).toBe(true);
    // One line at once, then one a second with the count since the last.
    const { lines, counted } = outageLines();
    expect(lines.length).toBeGreaterThanOrEqual(2);
    expect(lines.length).toBeLessThanOrEqual(seconds + 2);
    expect(lines.length * 10).toBeLessThan(statuses.length);
    expect(counted).toBeLessThanOrEqual(refused);
    proxy.setMode('forward');
    expect(await recovered()).toBe(200);
    expectOutageLogged();
  });
});
