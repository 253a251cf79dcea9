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
  InvalidTokenError,
  Token,
  ExpungerService,
  REVOCATION_PURPOSE,
  TokenResourceConfigError,
  TokenResourceModule,
  TokenService,
} from '../lib/index.js';
import { ExpiredTokenDeleter } from '../lib/expunger/expired-token.deleter.js';
import { previousTick } from '../lib/expunger/expunge-schedule.js';
import { EXPUNGE_RECORD_JTI, EXPUNGE_RECORD_PURPOSE } from '../lib/token-resource.internal-constants.js';
import { readRunRecord, writeRunRecord } from './support/expunge-record.js';
import { signToken } from './support/jwt-fixtures.js';
import { createTokenApp, TEST_SECRET, typeOrmOptions } from './support/token-app.js';
import { useTokenTable } from './support/token-table.js';
import { waitFor } from './support/wait-for.js';

/** A second token table, through the module's custom-entity option. */
@Entity('other_tokens')
class OtherToken extends Token {}

const fixture = useTokenTable();
const { apps, countRows } = fixture;
const HOUR_MS = 3_600_000;

async function app(options: Parameters<typeof createTokenApp>[1] = {}): Promise<INestApplication> {
  const created = await createTokenApp(fixture.db.url, options);
  apps.push(created);
  return created;
}

async function bootFailure(options: Parameters<typeof createTokenApp>[1]): Promise<unknown> {
  return app(options).then(
    () => null,
    (error: unknown) => error,
  );
}

/** Inserts `count` rows `${prefix}-1..count` of `purpose` expiring at the SQL expression `expires` (may use `i`). */
async function insertRows(prefix: string, count: number, purpose: string, expires: string): Promise<void> {
  await fixture.admin.query(
    `INSERT INTO tokens (jti, subject, expires_at, purpose)
     SELECT $1 || '-' || i, 'subject-' || (i % 17), ${expires}, $2 FROM generate_series(1, $3::int) AS i`,
    [prefix, purpose, count],
  );
}

/** The jtis of the token rows, leaving out the expunger's run record. */
async function jtis(): Promise<string[]> {
  const { rows } = await fixture.admin.query<{ jti: string }>(`SELECT jti FROM tokens WHERE jti <> $1 ORDER BY jti`, [EXPUNGE_RECORD_JTI]);
  return rows.map((row) => row.jti);
}

/** `countRows` without the run record. */
function tokenRows(where = 'true'): Promise<number> {
  return countRows(`jti <> '${EXPUNGE_RECORD_JTI}' AND (${where})`);
}

function cronJobOf(a: INestApplication, name = EXPUNGE_JOB_NAME) {
  return a.get(SchedulerRegistry).getCronJob(name);
}

describe('scheduling', () => {
  it('registers a cron job under EXPUNGE_JOB_NAME at 00:00 and 12:00 UTC by default', async () => {
    const job = cronJobOf(await app());
    const next = job.nextDate().toUTC();
    expect([0, 12]).toContain(next.hour);
    expect([next.minute, next.second, next.millisecond]).toEqual([0, 0, 0]);
    expect(next.toMillis() - Date.now()).toBeLessThanOrEqual(12 * HOUR_MS);
    const [first, second, third] = job.nextDates(3).map((date) => date.toMillis());
    expect([second - first, third - second]).toEqual([12 * HOUR_MS, 12 * HOUR_MS]);
  });

  it('a restart does not move the next run', async () => {
    const first = await app();
    const before = cronJobOf(first).nextDate().toMillis();
    await first.close();
    apps.splice(apps.indexOf(first), 1);
    const second = await app();
    expect(cronJobOf(second).nextDate().toMillis()).toBe(before);
  });

  it('runs at the times of expunge.cron, read in UTC', async () => {
    const job = cronJobOf(await app({ options: { expunge: { cron: '30 3 * * 1' } } }));
    const next = job.nextDate().toUTC();
    expect([next.weekday, next.hour, next.minute]).toEqual([1, 3, 30]);
  });

  it.each([
    [6, [0, 6, 12, 18]],
    [24, [0]],
    [1, Array.from({ length: 24 }, (_, hour) => hour)],
  ])('maps intervalHours %d onto runs on the hour from 00:00 UTC', async (intervalHours, hours) => {
    const job = cronJobOf(await app({ options: { expunge: { intervalHours } } }));
    const [first, second] = job.nextDates(2).map((date) => date.toUTC());
    expect(hours).toContain(first.hour);
    expect(first.minute).toBe(0);
    expect(second.toMillis() - first.toMillis()).toBe(intervalHours * HOUR_MS);
  });

  it.each([
    ['0 0,12 * * *', '2026-12-02T07:00:00.000Z', '2026-12-02T00:00:00.000Z'],
    ['0 0,12 * * *', '2026-12-02T12:00:00.000Z', '2026-12-02T12:00:00.000Z'],
    ['0 0,12 * * *', '2026-12-02T11:59:59.999Z', '2026-12-02T00:00:00.000Z'],
    ['30 3 * * 1', '2026-12-02T07:00:00.000Z', '2026-11-30T03:30:00.000Z'],
    ['*/2 * * * * *', '2026-12-02T07:00:03.500Z', '2026-12-02T07:00:02.000Z'],
    ['0 0 29 2 *', '2026-12-02T07:00:00.000Z', '2024-02-29T00:00:00.000Z'],
  ])('the schedule %s last fired before %s at %s', (cron, now, expected) => {
    expect(previousTick(cron, new Date(now))?.toISOString()).toBe(expected);
  });

  it.each([
    [
      'intervalHours that does not divide a day',
      { intervalHours: 5 },
      /expunge\.intervalHours must be a whole number of hours that divides 24.*expunge\.cron/,
    ],
    ['a fraction of an hour', { intervalHours: 0.5 }, /expunge\.intervalHours.*got 0\.5.*'\*\/30 \* \* \* \*'/],
    ['more than a day', { intervalHours: 48 }, /expunge\.intervalHours.*got 48/],
    ['both cron and intervalHours', { cron: '0 * * * *', intervalHours: 12 }, /expunge\.cron or expunge\.intervalHours, not both/],
    ['an invalid cron expression', { cron: 'every day at noon' }, /expunge\.cron 'every day at noon' is not a valid cron expression/],
    ['a cron field out of range', { cron: '61 * * * *' }, /expunge\.cron '61 \* \* \* \*' is not a valid cron expression/],
    ['a cron expression that never fires', { cron: '0 0 30 2 *' }, /expunge\.cron '0 0 30 2 \*' never fires/],
    ['a negative startupJitterSeconds', { startupJitterSeconds: -1 }, /expunge\.startupJitterSeconds must be a number from 0 to 86400/],
    ['a startupJitterSeconds over a day', { startupJitterSeconds: 100_000 }, /expunge\.startupJitterSeconds/],
  ])('refuses %s at boot', async (_label, expunge, message) => {
    const failure = await bootFailure({ options: { expunge } });
    expect(failure).toBeInstanceOf(TokenResourceConfigError);
    expect((failure as Error).message).toMatch(message);
  });

  it('does not register the job when expunge.enabled is false', async () => {
    const a = await app({ options: { expunge: { enabled: false } } });
    expect(a.get(SchedulerRegistry).doesExist('cron', EXPUNGE_JOB_NAME)).toBe(false);
    expect(a.get(SchedulerRegistry).getCronJobs().size).toBe(0);
  });

  it('fires on schedule and deletes expired rows by itself', async () => {
    // A run recorded as completed (even ahead of now): no start-up catch-up, so only the schedule can delete them.
    await writeRunRecord(fixture.admin, { completedAt: new Date(Date.now() + HOUR_MS) });
    await insertRows('old', 300, 'user', `now() - interval '1 hour'`);
    await insertRows('live', 100, 'user', `now() + interval '1 hour'`);
    const run = jest.spyOn(ExpungerService.prototype, 'run');
    await app({ options: { expunge: { cron: '*/2 * * * * *', startupJitterSeconds: 0, batchSize: 50 } } });
    expect(await tokenRows()).toBe(400);
    await waitFor(async () => (await tokenRows(`jti LIKE 'old-%'`)) === 0, 15_000, 'the scheduled run');
    expect(run).toHaveBeenCalled();
    expect(await tokenRows(`jti LIKE 'live-%'`)).toBe(100);
  });

  it('stops the job at shutdown', async () => {
    const a = await app({ options: { expunge: { cron: '* * * * * *' } } });
    const registry = a.get(SchedulerRegistry);
    const deleteExpired = jest.spyOn(a.get(ExpiredTokenDeleter), 'deleteExpired');
    expect(registry.doesExist('cron', EXPUNGE_JOB_NAME)).toBe(true);
    await a.close();
    const callsAtClose = deleteExpired.mock.calls.length;
    expect(registry.doesExist('cron', EXPUNGE_JOB_NAME)).toBe(false);
    await new Promise((resolve) => setTimeout(resolve, 2500));
    expect(deleteExpired).toHaveBeenCalledTimes(callsAtClose);
  });

  it('gives a second token table in the same application a job of its own, each expunging its table', async () => {
    const a = await app({
      typeOrm: {
        entities: [Token, OtherToken],
        migrations: [CreateTokensTable1763900000000, createTokensTableMigration('other_tokens')],
      },
      imports: [TokenResourceModule.forRoot({ jwt: { secret: TEST_SECRET }, entity: OtherToken, expunge: { cron: '* * * * * *' } })],
      options: { expunge: { cron: '* * * * * *' } },
    });
    const registry = a.get(SchedulerRegistry);
    expect([...registry.getCronJobs().keys()].sort()).toEqual([EXPUNGE_JOB_NAME, `${EXPUNGE_JOB_NAME}:other_tokens`]);
    await insertRows('old', 20, 'user', `now() - interval '1 day'`);
    await fixture.admin.query(`INSERT INTO other_tokens (jti, subject, expires_at, purpose)
                       SELECT 'other-' || i, 's', now() - interval '1 day', 'user' FROM generate_series(1, 20) AS i`);
    const otherCount = async () =>
      (await fixture.admin.query<{ n: number }>(`SELECT count(*)::int AS n FROM other_tokens WHERE jti <> $1`, [EXPUNGE_RECORD_JTI]))
        .rows[0].n;
    await waitFor(async () => (await tokenRows()) === 0 && (await otherCount()) === 0, 15_000, 'both tables to be expunged');
    // Each table keeps its own run record.
    await waitFor(async () => (await readRunRecord(fixture.admin, 'other_tokens'))?.completedAt != null, 5000, "the other table's record");
    await a.close();
    expect(registry.getCronJobs().size).toBe(0);
    await fixture.admin.query('DROP TABLE other_tokens');
  });

  it('fails at start-up with a clear error when ScheduleModule.forRoot() is missing', async () => {
    const build = (enabled: boolean) =>
      Test.createTestingModule({
        imports: [
          TypeOrmModule.forRoot(typeOrmOptions(fixture.db.url)),
          TokenResourceModule.forRoot({ jwt: { secret: TEST_SECRET }, expunge: { enabled } }),
        ],
      })
        .compile()
        .then(async (moduleRef) => {
          const created = moduleRef.createNestApplication({ logger: false });
          apps.push(created);
          await created.init();
          return created;
        });
    const failure = await build(true).then(
      () => null,
      (error: unknown) => error,
    );
    expect(failure).toBeInstanceOf(TokenResourceConfigError);
    expect((failure as Error).message).toMatch(/ScheduleModule\.forRoot\(\)/);
    // Without the expunger, the schedule module is not needed.
    await expect(build(false)).resolves.toBeDefined();
  });
});

describe('catching up at boot', () => {
  it('a boot with no completed run since the schedule last fired runs one at once with startupJitterSeconds 0', async () => {
    await insertRows('old', 50, 'user', `now() - interval '1 day'`);
    await app({ options: { expunge: { startupJitterSeconds: 0 } } });
    // The record is written once the run has finished, just after its last delete.
    await waitFor(async () => (await readRunRecord(fixture.admin))?.completedAt != null, 5000, 'the catch-up run');
    expect(await tokenRows()).toBe(0);
    expect((await readRunRecord(fixture.admin))?.deleted).toBe(50);
  });

  it('runs within startupJitterSeconds', async () => {
    await insertRows('old', 50, 'user', `now() - interval '1 day'`);
    const booted = Date.now();
    await app({ options: { expunge: { startupJitterSeconds: 2 } } });
    await waitFor(async () => (await readRunRecord(fixture.admin))?.completedAt != null, 5000, 'the catch-up run');
    // The delay, plus the boot and the run themselves.
    expect(Date.now() - booted).toBeLessThan(2000 + 2000);
    expect(await tokenRows()).toBe(0);
  });

  it('a run completed before the schedule last fired does not count', async () => {
    const now = new Date();
    const lastTick = Date.UTC(now.getUTCFullYear(), now.getUTCMonth(), now.getUTCDate(), now.getUTCHours() >= 12 ? 12 : 0);
    await writeRunRecord(fixture.admin, { completedAt: new Date(lastTick - 60_000) });
    await insertRows('old', 10, 'user', `now() - interval '1 day'`);
    await app({ options: { expunge: { startupJitterSeconds: 0 } } });
    await waitFor(async () => (await tokenRows()) === 0, 5000, 'the catch-up run');
  });

  it('a boot right after a completed run does not run again', async () => {
    const first = await app({ options: { expunge: { enabled: false } } });
    expect(await first.get(ExpungerService).run()).toMatchObject({ skipped: false });
    const recorded = await readRunRecord(fixture.admin);
    // Rows a second run would delete.
    await insertRows('old', 10, 'user', `now() - interval '1 day'`);
    const deleteExpired = jest.spyOn(ExpiredTokenDeleter.prototype, 'deleteExpired');
    await app({ options: { expunge: { startupJitterSeconds: 0 } } });
    await new Promise((resolve) => setTimeout(resolve, 1500));
    expect(deleteExpired).not.toHaveBeenCalled();
    expect(await tokenRows()).toBe(10);
    expect(await readRunRecord(fixture.admin)).toEqual(recorded);
  });

  it('waits out the lease of an instance that died mid-run, then catches up', async () => {
    await writeRunRecord(fixture.admin, { leaseUntil: new Date(Date.now() + 3000), holder: 'a crashed instance' });
    await insertRows('old', 10, 'user', `now() - interval '1 day'`);
    await app({ options: { expunge: { startupJitterSeconds: 0 } } });
    await new Promise((resolve) => setTimeout(resolve, 500));
    // The lease still holds: nothing yet.
    expect(await tokenRows()).toBe(10);
    await waitFor(async () => (await tokenRows()) === 0, 8000, 'the catch-up once the lease lapsed');
    expect((await readRunRecord(fixture.admin))?.holder).not.toBe('a crashed instance');
  });
});

describe('run()', () => {
  it('deletes exactly the expired rows of every purpose, keeps the grace, over several batches', async () => {
    const a = await app({
      options: { expunge: { enabled: false, batchSize: 7 }, jwt: { secret: TEST_SECRET, clockToleranceSeconds: 60 } },
    });
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

    const onBatch = jest.fn();
    const deleter = a.get(ExpiredTokenDeleter);
    const deleteExpired = deleter.deleteExpired.bind(deleter);
    jest.spyOn(deleter, 'deleteExpired').mockImplementation((opts) => deleteExpired({ ...opts, onBatch }));
    const result = await a.get(ExpungerService).run();

    expect(result).toEqual({ deleted: 104, skipped: false, durationMs: expect.any(Number) });
    expect(await jtis()).toEqual(kept);
    expect(onBatch.mock.calls.length).toBeGreaterThanOrEqual(Math.ceil(104 / 7));
    for (const [deleted] of onBatch.mock.calls) expect(deleted).toBeLessThanOrEqual(7);
    // Nothing left to do: a second run deletes nothing.
    expect((await a.get(ExpungerService).run()).deleted).toBe(0);
  });

  it('holds a lease in the run record while it runs, then frees it and records the completed run', async () => {
    const a = await app({ options: { expunge: { enabled: false, batchSize: 10 } } });
    await insertRows('old', 35, 'user', `now() - interval '1 day'`);
    const deleter = a.get(ExpiredTokenDeleter);
    const deleteExpired = deleter.deleteExpired.bind(deleter);
    let duringRun: Awaited<ReturnType<typeof readRunRecord>>;
    jest.spyOn(deleter, 'deleteExpired').mockImplementation(async (opts) => {
      duringRun = await readRunRecord(fixture.admin);
      return deleteExpired(opts);
    });
    const started = new Date();
    expect((await a.get(ExpungerService).run()).deleted).toBe(35);

    expect(duringRun!.leaseUntil!.getTime()).toBeGreaterThan(Date.now() + 50_000);
    expect(duringRun!.holder).toContain(`pid ${process.pid}`);
    expect(duringRun!.completedAt).toBeNull();
    const after = await readRunRecord(fixture.admin);
    expect(after).toMatchObject({ leaseUntil: null, holder: duringRun!.holder, deleted: 35 });
    expect(after!.completedAt!.getTime()).toBeGreaterThanOrEqual(started.getTime() - 1000);
    // Far enough ahead that no run deletes it.
    expect(after!.expiresAt.getTime()).toBeGreaterThan(Date.now() + 300 * 24 * HOUR_MS);
  });

  it('renews its lease as batches go, and stops when another run has taken the lease over', async () => {
    const a = await app({ options: { expunge: { enabled: false, batchSize: 10 } } });
    await insertRows('old', 200, 'user', `now() - interval '1 day' - i * interval '1 second'`);
    // Each reading of the clock is 10 s later: the run renews its lease between batches.
    const realNow = performance.now.bind(performance);
    let skew = 0;
    jest.spyOn(performance, 'now').mockImplementation(() => realNow() + (skew += 10_000));
    const leases: number[] = [];
    const warn = jest.spyOn(Logger.prototype, 'warn');
    const deleter = a.get(ExpiredTokenDeleter);
    const deleteExpired = deleter.deleteExpired.bind(deleter);
    jest.spyOn(deleter, 'deleteExpired').mockImplementation((opts) =>
      deleteExpired({
        ...opts,
        betweenBatches: async () => {
          await opts?.betweenBatches?.();
          leases.push((await readRunRecord(fixture.admin))!.leaseUntil!.getTime());
          // After a few batches another instance takes the lease over, as if this one had stalled past it.
          if (leases.length === 5)
            await writeRunRecord(fixture.admin, { leaseUntil: new Date(Date.now() + 60_000), holder: 'another instance' });
        },
      }),
    );

    const result = await a.get(ExpungerService).run();
    expect(result.skipped).toBe(false);
    expect(new Set(leases.slice(0, 5)).size).toBeGreaterThan(1);
    // It stopped early, and left the other instance's lease alone.
    expect(result.deleted).toBeLessThan(200);
    expect(await tokenRows()).toBe(200 - result.deleted);
    expect(warn).toHaveBeenCalledWith(expect.stringMatching(/lease lapsed and another run took it over/));
    expect(await readRunRecord(fixture.admin)).toMatchObject({ holder: 'another instance', completedAt: null });
  });

  it('skips at once while another run holds the lease, and runs once it lapsed', async () => {
    const a = await app({ options: { expunge: { enabled: false } } });
    await insertRows('old', 20, 'user', `now() - interval '1 day'`);
    await writeRunRecord(fixture.admin, { leaseUntil: new Date(Date.now() + 1500), holder: 'another instance' });

    const skipped = await a.get(ExpungerService).run();
    expect(skipped).toEqual({ deleted: 0, skipped: true, durationMs: expect.any(Number) });
    expect(skipped.durationMs).toBeLessThan(1000);
    expect(await tokenRows()).toBe(20);

    await waitFor(async () => (await readRunRecord(fixture.admin))!.leaseUntil!.getTime() < Date.now() - 100, 3000, 'the lease to lapse');
    expect(await a.get(ExpungerService).run()).toMatchObject({ deleted: 20, skipped: false });
  });

  it('a failed run frees its lease at once, so that the next run need not wait for it to lapse', async () => {
    const a = await app({ options: { expunge: { enabled: false } } });
    await insertRows('old', 20, 'user', `now() - interval '1 day'`);
    await fixture.admin.query(`CREATE FUNCTION refuse_delete() RETURNS trigger LANGUAGE plpgsql AS $$
      BEGIN RAISE EXCEPTION 'deletes are switched off' USING ERRCODE = 'insufficient_privilege'; END $$`);
    await fixture.admin.query('CREATE TRIGGER refuse_delete BEFORE DELETE ON tokens FOR EACH ROW EXECUTE FUNCTION refuse_delete()');
    try {
      await expect(a.get(ExpungerService).run()).rejects.toThrow(/deletes are switched off/);
      expect(await readRunRecord(fixture.admin)).toMatchObject({ leaseUntil: null, completedAt: null });
    } finally {
      await fixture.admin.query('DROP TRIGGER refuse_delete ON tokens; DROP FUNCTION refuse_delete()');
    }
    expect(await a.get(ExpungerService).run()).toMatchObject({ deleted: 20, skipped: false });
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
      // TokenService.expungeExpired() never waits either.
      expect(await a.get(TokenService).expungeExpired()).toBe(0);
      // The batch settings ended with their transactions: every pooled connection has the defaults.
      const pool = (a.get(DataSource).driver as unknown as { master: pg.Pool }).master;
      const clients = await Promise.all(Array.from({ length: pool.totalCount }, () => pool.connect()));
      try {
        for (const client of clients) {
          expect((await client.query('SHOW lock_timeout')).rows[0].lock_timeout).toBe('0');
          expect((await client.query('SHOW synchronous_commit')).rows[0].synchronous_commit).toBe('on');
        }
      } finally {
        for (const client of clients) client.release();
      }
    } finally {
      await holder.query('COMMIT');
      await holder.end();
    }
    expect(await a.get(ExpungerService).run()).toMatchObject({ deleted: 2, skipped: false });
    expect(await tokenRows()).toBe(0);
  });

  it('skips and reports rows the database refuses to delete, deletes every other, and runs to completion', async () => {
    const a = await app({ options: { expunge: { enabled: false, batchSize: 100 } } });
    await insertRows('old', 1000, 'user', `now() - interval '1 day' - i * interval '1 second'`);
    // More than a batch sharing one expires_at, one of them referenced too.
    await insertRows('tie', 250, 'user', `date_trunc('second', now()) - interval '2 days'`);
    await fixture.admin.query('CREATE TABLE app_sessions (id serial PRIMARY KEY, token_jti text NOT NULL REFERENCES tokens (jti))');
    try {
      const referenced = ['old-7', 'old-500', 'old-501', 'old-1000', 'tie-3'];
      await fixture.admin.query('INSERT INTO app_sessions (token_jti) SELECT unnest($1::text[])', [referenced]);
      const warn = jest.spyOn(Logger.prototype, 'warn');
      const started = Date.now();

      expect(await a.get(ExpungerService).run()).toMatchObject({ deleted: 1245, skipped: false });
      expect(Date.now() - started).toBeLessThan(10_000);
      expect(await jtis()).toEqual([...referenced].sort());
      expect(warn).toHaveBeenCalledTimes(1);
      const [message] = warn.mock.calls[0] as [string];
      expect(message).toMatch(
        /^5 expired rows of "tokens" could not be deleted and were skipped \(for example jti .*\): .*foreign key constraint .*"app_sessions"/,
      );
      for (const jti of message.match(/for example jti ([^)]*)\)/)![1].split(', ')) expect(referenced).toContain(jti);
      expect((await readRunRecord(fixture.admin))?.completedAt).not.toBeNull();

      // Later runs try them again, without failing, and take each once nothing refers to it.
      warn.mockClear();
      expect(await a.get(ExpungerService).run()).toMatchObject({ deleted: 0, skipped: false });
      expect(warn).toHaveBeenCalledWith(expect.stringMatching(/^5 expired rows/));
      await fixture.admin.query(`DELETE FROM app_sessions WHERE token_jti IN ('old-7', 'tie-3')`);
      expect(await a.get(ExpungerService).run()).toMatchObject({ deleted: 2, skipped: false });
    } finally {
      await fixture.admin.query('DROP TABLE app_sessions');
    }
  });

  it('does not spin on -infinity rows another transaction holds, and takes edge values in its stride', async () => {
    const a = await app({ options: { expunge: { enabled: false, batchSize: 5 } } });
    await insertRows('minus-infinity', 12, 'user', `'-infinity'`);
    await insertRows('ancient', 3, 'user', `'4713-11-24 00:00:00+00 BC'::timestamptz + i * interval '1 microsecond'`);
    await insertRows('old', 20, 'user', `now() - interval '1 day' - i * interval '1 second'`);
    await insertRows('infinity', 2, 'user', `'infinity'`);
    const holder = new pg.Client({ connectionString: fixture.db.url });
    await holder.connect();
    try {
      await holder.query('BEGIN');
      // More than a batch of them, so that no range can get past them.
      await holder.query(`SELECT 1 FROM tokens WHERE jti = ANY ($1::text[]) FOR UPDATE`, [
        Array.from({ length: 8 }, (_, i) => `minus-infinity-${i + 1}`),
      ]);
      let timer: NodeJS.Timeout | undefined;
      const outcome = await Promise.race([
        a.get(ExpungerService).run(),
        new Promise((resolve) => {
          timer = setTimeout(() => resolve('still running after 10 s'), 10_000);
        }),
      ]);
      clearTimeout(timer);
      expect(outcome).toMatchObject({ deleted: 4 + 3 + 20, skipped: false });
    } finally {
      await holder.query('COMMIT');
      await holder.end();
    }
    expect(await a.get(ExpungerService).run()).toMatchObject({ deleted: 8, skipped: false });
    expect(await jtis()).toEqual(['infinity-1', 'infinity-2']);
  });

  it('logs how many rows a successful run deleted and how long it took', async () => {
    const a = await app({ options: { expunge: { enabled: false } } });
    await insertRows('old', 12, 'user', `now() - interval '1 day'`);
    const log = jest.spyOn(Logger.prototype, 'log');
    await a.get(ExpungerService).run();
    expect(log).toHaveBeenCalledWith(expect.stringMatching(/expunged 12 expired token rows from "tokens" in \d+ ms/));
  });

  it('lets the batch in progress finish at shutdown, frees its lease, and the next boot finishes the job', async () => {
    const a = await app({ options: { expunge: { enabled: false, batchSize: 100 } } });
    await insertRows('old', 30_000, 'user', `now() - interval '1 day' - i * interval '1 ms'`);
    const running = a.get(ExpungerService).run();
    await waitFor(async () => (await tokenRows()) < 30_000, 10_000, 'the first batch');
    await a.close();
    const result = await running;
    expect(result.skipped).toBe(false);
    expect(result.deleted).toBeGreaterThan(0);
    // It stopped early, and its count is exactly what is gone.
    expect(result.deleted).toBeLessThan(30_000);
    expect(await tokenRows()).toBe(30_000 - result.deleted);
    // Cut short, the run is not recorded as completed: the next instance to boot catches up.
    expect(await readRunRecord(fixture.admin)).toMatchObject({ leaseUntil: null, completedAt: null });
    await app({ options: { expunge: { startupJitterSeconds: 0 } } });
    await waitFor(async () => (await tokenRows()) === 0, 15_000, 'the next boot to catch up');
  });
});

describe('the run record', () => {
  it('is invisible to the token API, which refuses to write over it', async () => {
    const a = await app({ options: { expunge: { enabled: false } } });
    await a.get(ExpungerService).run();
    const before = await readRunRecord(fixture.admin);
    expect(before).toBeDefined();
    const tokens = a.get(TokenService);

    expect(await tokens.getToken({ jti: EXPUNGE_RECORD_JTI })).toBeNull();
    expect(await tokens.getToken({ jti: EXPUNGE_RECORD_JTI, purpose: EXPUNGE_RECORD_PURPOSE })).toBeNull();
    expect(await tokens.getToken({ token: await signToken({ jti: EXPUNGE_RECORD_JTI }) })).toBeNull();
    expect(await tokens.getConfirmationChanges(EXPUNGE_RECORD_JTI, EXPUNGE_RECORD_PURPOSE)).toBeNull();
    await expect(tokens.listTokens('')).rejects.toThrow(TypeError);
    await expect(tokens.revokeJti(EXPUNGE_RECORD_JTI, 'mallory')).rejects.toThrow(InvalidTokenError);
    await expect(tokens.revoke(await signToken({ jti: EXPUNGE_RECORD_JTI }))).rejects.toThrow(InvalidTokenError);
    await expect(tokens.storeToken({ token: await signToken({ jti: 'expunger:other' }), purpose: 'user' })).rejects.toThrow(
      InvalidTokenError,
    );
    await expect(tokens.storeToken({ token: await signToken({ jti: 'another' }), purpose: EXPUNGE_RECORD_PURPOSE })).rejects.toThrow(
      TypeError,
    );
    expect(await tokens.jtiRevoked(EXPUNGE_RECORD_JTI)).toBe(false);

    expect(await readRunRecord(fixture.admin)).toEqual(before);
    expect(await countRows(`purpose = '${EXPUNGE_RECORD_PURPOSE}'`)).toBe(1);
  });
});
