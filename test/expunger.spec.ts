import { jest } from '@jest/globals';
import type { INestApplication } from '@nestjs/common';
import { Logger } from '@nestjs/common';
import { SchedulerRegistry } from '@nestjs/schedule';
import { Test } from '@nestjs/testing';
import { TypeOrmModule } from '@nestjs/typeorm';
import pg from 'pg';
import { DataSource } from 'typeorm';
import { Entity } from 'typeorm';
import {
  CreateTokensTable1763900000000,
  createTokensTableMigration,
  EXPUNGE_JOB_NAME,
  Token,
  ExpungerService,
  REVOCATION_PURPOSE,
  TokenResourceConfigError,
  TokenResourceModule,
  TokenService,
  TokenStore,
} from '../lib/index.js';
import { expungeLockKey } from '../lib/expunger/expunger.service.js';
import { createTokenApp, TEST_SECRET, typeOrmOptions } from './support/token-app.js';
import { useTokenTable } from './support/token-table.js';
import { waitFor } from './support/wait-for.js';

/** A second token table, through the module's custom-entity option. */
@Entity('other_tokens')
class OtherToken extends Token {}

const fixture = useTokenTable();
const { apps, countRows } = fixture;

async function app(options: Parameters<typeof createTokenApp>[1] = {}): Promise<INestApplication> {
  const created = await createTokenApp(fixture.db.url, options);
  apps.push(created);
  return created;
}

/** Inserts `count` rows `${prefix}-1..count` of `purpose` expiring at the SQL expression `expires` (may use `i`). */
async function insertRows(prefix: string, count: number, purpose: string, expires: string): Promise<void> {
  await fixture.admin.query(
    `INSERT INTO tokens (jti, subject, expires_at, purpose)
     SELECT $1 || '-' || i, 'subject-' || (i % 17), ${expires}, $2 FROM generate_series(1, $3::int) AS i`,
    [prefix, purpose, count],
  );
}

async function jtis(): Promise<string[]> {
  const { rows } = await fixture.admin.query<{ jti: string }>('SELECT jti FROM tokens ORDER BY jti');
  return rows.map((row) => row.jti);
}

describe('scheduling', () => {
  const idleTimeoutOf = (a: INestApplication) =>
    (a.get(SchedulerRegistry).getInterval(EXPUNGE_JOB_NAME) as { _idleTimeout: number })._idleTimeout;

  it('registers the job under EXPUNGE_JOB_NAME every 12 hours by default', async () => {
    const a = await app();
    expect(a.get(SchedulerRegistry).doesExist('interval', EXPUNGE_JOB_NAME)).toBe(true);
    expect(idleTimeoutOf(a)).toBe(12 * 3_600_000);
  });

  it('registers an interval that does not divide a day exactly (5 hours)', async () => {
    const a = await app({ options: { expunge: { intervalHours: 5 } } });
    expect(idleTimeoutOf(a)).toBe(5 * 3_600_000);
    expect(a.get(ExpungerService).intervalMs).toBe(18_000_000);
  });

  it('does not register the job when expunge.enabled is false', async () => {
    const a = await app({ options: { expunge: { enabled: false } } });
    expect(a.get(SchedulerRegistry).doesExist('interval', EXPUNGE_JOB_NAME)).toBe(false);
    expect(a.get(SchedulerRegistry).getIntervals()).toEqual([]);
  });

  it('fires on schedule and deletes expired rows by itself', async () => {
    await insertRows('old', 300, 'user', `now() - interval '1 hour'`);
    await insertRows('live', 100, 'user', `now() + interval '1 hour'`);
    const run = jest.spyOn(ExpungerService.prototype, 'run');
    const a = await app({ options: { expunge: { intervalHours: 0.0005, batchSize: 50 } } }); // 1.8 s
    expect(idleTimeoutOf(a)).toBe(1800);
    expect(await countRows()).toBe(400);
    await waitFor(async () => (await countRows(`jti LIKE 'old-%'`)) === 0, 15_000, 'the scheduled run');
    expect(run).toHaveBeenCalled();
    expect(await countRows(`jti LIKE 'live-%'`)).toBe(100);
  });

  it('stops the job at shutdown', async () => {
    const a = await app({ options: { expunge: { intervalHours: 0.0005 } } });
    const registry = a.get(SchedulerRegistry);
    const run = jest.spyOn(a.get(ExpungerService), 'run');
    expect(registry.doesExist('interval', EXPUNGE_JOB_NAME)).toBe(true);
    await a.close();
    expect(registry.doesExist('interval', EXPUNGE_JOB_NAME)).toBe(false);
    await new Promise((resolve) => setTimeout(resolve, 2500));
    expect(run).not.toHaveBeenCalled();
  });

  it('gives a second token table in the same application a job of its own, each expunging its table', async () => {
    const a = await app({
      typeOrm: {
        entities: [Token, OtherToken],
        migrations: [CreateTokensTable1763900000000, createTokensTableMigration('other_tokens')],
      },
      imports: [TokenResourceModule.forRoot({ jwt: { secret: TEST_SECRET }, entity: OtherToken, expunge: { intervalHours: 0.0005 } })],
      options: { expunge: { intervalHours: 0.0005 } },
    });
    const registry = a.get(SchedulerRegistry);
    expect(registry.getIntervals().sort()).toEqual([EXPUNGE_JOB_NAME, `${EXPUNGE_JOB_NAME}:other_tokens`]);
    await insertRows('old', 20, 'user', `now() - interval '1 day'`);
    await fixture.admin.query(`INSERT INTO other_tokens (jti, subject, expires_at, purpose)
                       SELECT 'other-' || i, 's', now() - interval '1 day', 'user' FROM generate_series(1, 20) AS i`);
    const otherCount = async () => (await fixture.admin.query<{ n: number }>('SELECT count(*)::int AS n FROM other_tokens')).rows[0].n;
    await waitFor(async () => (await countRows()) === 0 && (await otherCount()) === 0, 15_000, 'both tables to be expunged');
    await a.close();
    expect(registry.getIntervals()).toEqual([]);
    await fixture.admin.query('DROP TABLE other_tokens');
  });

  it('fails at start-up with a clear error when ScheduleModule.forRoot() is missing', async () => {
    const build = (enabled: boolean) =>
      Test.createTestingModule({
        imports: [
          TypeOrmModule.forRoot(typeOrmOptions(fixture.db.url)),
          TokenResourceModule.forRoot({ jwt: { secret: TEST_SECRET }, expunge: { enabled } }),
        ],
      }).compile().then(async (moduleRef) => {
        const created = moduleRef.createNestApplication({ logger: false });
        apps.push(created);
        await created.init();
        return created;
      });
    const failure = await build(true).then(() => null, (error: unknown) => error);
    expect(failure).toBeInstanceOf(TokenResourceConfigError);
    expect((failure as Error).message).toMatch(/ScheduleModule\.forRoot\(\)/);
    // Without the expunger, the schedule module is not needed.
    await expect(build(false)).resolves.toBeDefined();
  });

  it('rejects an interval longer than setInterval can honour', async () => {
    const failure = await app({ options: { expunge: { intervalHours: 600 } } }).then(() => null, (error: unknown) => error);
    expect(failure).toBeInstanceOf(TokenResourceConfigError);
    expect((failure as Error).message).toMatch(/expunge\.intervalHours.*2\^31-1/);
    // The largest accepted value still registers exactly.
    const a = await app({ options: { expunge: { intervalHours: 596 } } });
    expect(idleTimeoutOf(a)).toBe(596 * 3_600_000);
  });
});

describe('run()', () => {
  it('deletes exactly the expired rows of every purpose, keeps the grace, over several batches', async () => {
    const a = await app({ options: { expunge: { enabled: false, batchSize: 7 }, jwt: { secret: TEST_SECRET, clockToleranceSeconds: 60 } } });
    // Expired beyond the 60 s grace: gone.
    await insertRows('old-user', 40, 'user', `now() - interval '2 minutes' - i * interval '1 second'`);
    await insertRows('old-confirm', 13, 'confirm', `now() - interval '3 days'`);
    await insertRows('old-revocation', 21, REVOCATION_PURPOSE, `now() - interval '61 seconds' - i * interval '1 ms'`);
    // Many rows sharing one expires_at (more than a batch), as tokens expiring in the same second do.
    await insertRows('old-tie', 30, 'user', `date_trunc('second', now()) - interval '1 hour'`);
    // Expired but inside the grace: kept.
    await insertRows('grace-user', 5, 'user', `now() - interval '30 seconds'`);
    await insertRows('grace-revocation', 5, REVOCATION_PURPOSE, `now() - interval '50 seconds'`);
    // Unexpired, including revocations of unexpired tokens: kept.
    await insertRows('live-user', 9, 'user', `now() + interval '1 hour'`);
    await insertRows('live-revocation', 11, REVOCATION_PURPOSE, `now() + i * interval '1 minute'`);
    await a.get(TokenService).revokeJti('never-expires', 'someone');
    const kept = (await jtis()).filter((jti) => !jti.startsWith('old-'));
    expect(kept).toHaveLength(31);

    const execute = jest.spyOn(a.get(TokenStore), 'execute');
    const result = await a.get(ExpungerService).run();

    expect(result).toEqual({ deleted: 104, skipped: false, durationMs: expect.any(Number) });
    expect(await jtis()).toEqual(kept);
    expect(execute.mock.calls.length).toBeGreaterThanOrEqual(Math.ceil(104 / 7));
    // Nothing left to do: a second run deletes nothing.
    expect((await a.get(ExpungerService).run()).deleted).toBe(0);
  });

  it('runs its batches on the connection that holds the advisory lock, and unlocks it', async () => {
    const a = await app({ options: { expunge: { enabled: false, batchSize: 10 } } });
    await insertRows('old', 35, 'user', `now() - interval '1 day'`);
    const key = expungeLockKey(a.get(TokenStore).table);
    const batchPids: number[] = [];
    let lockHolder: number | undefined;
    const execute = a.get(TokenStore).execute.bind(a.get(TokenStore));
    jest.spyOn(a.get(TokenStore), 'execute').mockImplementation(async (statement, values, manager) => {
      lockHolder = (await fixture.advisoryLocks()).find((lock) => lock.key === String(key))?.pid;
      const [{ pid }] = (await manager!.query('SELECT pg_backend_pid() AS pid')) as Array<{ pid: number }>;
      batchPids.push(pid);
      return execute(statement, values, manager);
    });
    expect((await a.get(ExpungerService).run()).deleted).toBe(35);
    expect(batchPids.length).toBeGreaterThanOrEqual(4);
    expect(new Set(batchPids)).toEqual(new Set([lockHolder]));
    expect(await fixture.advisoryLocks()).toEqual([]);
  });

  it('skips at once while another session holds the lock of its table, and not of another table', async () => {
    const a = await app({ options: { expunge: { enabled: false } } });
    await insertRows('old', 20, 'user', `now() - interval '1 day'`);
    const table = a.get(TokenStore).table;
    expect(expungeLockKey(table)).not.toBe(expungeLockKey('"other_tokens"'));

    await fixture.admin.query('SELECT pg_advisory_lock($1::bigint)', [expungeLockKey('"other_tokens"')]);
    await fixture.admin.query('SELECT pg_advisory_lock($1::bigint)', [expungeLockKey(table)]);
    const skipped = await a.get(ExpungerService).run();
    expect(skipped).toMatchObject({ deleted: 0, skipped: true });
    expect(skipped.durationMs).toBeLessThan(1000);
    expect(await countRows()).toBe(20);

    await fixture.admin.query('SELECT pg_advisory_unlock($1::bigint)', [expungeLockKey(table)]);
    // Only the other table's expunger is locked out now.
    expect(await a.get(ExpungerService).run()).toMatchObject({ deleted: 20, skipped: false });
    await fixture.admin.query('SELECT pg_advisory_unlock_all()');
  });

  it('does not wait on expired rows another transaction holds: skips them, and the next run takes them', async () => {
    const a = await app({ options: { expunge: { enabled: false, batchSize: 10 } } });
    await insertRows('old', 45, 'user', `now() - interval '1 day' - i * interval '1 second'`);
    const holder = new pg.Client({ connectionString: fixture.db.url });
    await holder.connect();
    try {
      await holder.query('BEGIN');
      await holder.query(`SELECT 1 FROM tokens WHERE jti IN ('old-7', 'old-30') FOR UPDATE`);
      const started = Date.now();
      const result = await a.get(ExpungerService).run();
      expect(result).toMatchObject({ deleted: 43, skipped: false });
      expect(Date.now() - started).toBeLessThan(5000);
      expect(await jtis()).toEqual(['old-30', 'old-7']);
      // The direct, pool-based expungeExpired() never waits either.
      expect(await a.get(TokenService).expungeExpired()).toBe(0);
      // The session went back to the pool with its lock_timeout reset: every pooled connection has the default.
      const pool = (a.get(DataSource).driver as unknown as { master: pg.Pool }).master;
      const clients = await Promise.all(Array.from({ length: pool.totalCount }, () => pool.connect()));
      try {
        for (const client of clients) expect((await client.query('SHOW lock_timeout')).rows[0].lock_timeout).toBe('0');
      } finally {
        for (const client of clients) client.release();
      }
    } finally {
      await holder.query('COMMIT');
      await holder.end();
    }
    expect(await a.get(ExpungerService).run()).toMatchObject({ deleted: 2, skipped: false });
    expect(await countRows()).toBe(0);
  });

  it('logs how many rows a successful run deleted and how long it took', async () => {
    const a = await app({ options: { expunge: { enabled: false } } });
    await insertRows('old', 12, 'user', `now() - interval '1 day'`);
    const log = jest.spyOn(Logger.prototype, 'log');
    await a.get(ExpungerService).run();
    expect(log).toHaveBeenCalledWith(expect.stringMatching(/expunged 12 expired token rows from "tokens" in \d+ ms/));
  });

  it('lets the batch in progress finish at shutdown, then unlocks', async () => {
    const a = await app({ options: { expunge: { enabled: false, batchSize: 100 } } });
    await insertRows('old', 30_000, 'user', `now() - interval '1 day' - i * interval '1 ms'`);
    const running = a.get(ExpungerService).run();
    await waitFor(async () => (await countRows()) < 30_000, 10_000, 'the first batch');
    await a.close();
    const result = await running;
    expect(result.skipped).toBe(false);
    expect(result.deleted).toBeGreaterThan(0);
    // It stopped early, and its count is exactly what is gone.
    expect(result.deleted).toBeLessThan(30_000);
    expect(await countRows()).toBe(30_000 - result.deleted);
    expect(await fixture.advisoryLocks()).toEqual([]);
  });
});
