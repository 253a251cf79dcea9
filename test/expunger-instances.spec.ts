import { jest } from '@jest/globals';
import type { INestApplication } from '@nestjs/common';
import { Logger } from '@nestjs/common';
import { ExpungerService, REVOCATION_PURPOSE, type ExpungeRunResult } from '../lib/index.js';
import { ExpiredTokenDeleter } from '../lib/expunger/expired-token.deleter.js';
import { readRunRecord, writeRunRecord } from './support/expunge-record.js';
import { startPgBouncer } from './support/pgbouncer.js';
import { proxyDatabase } from './support/tcp-proxy.js';
import { createTokenApp } from './support/token-app.js';
import { useTokenTable } from './support/token-table.js';
import { waitFor } from './support/wait-for.js';

const fixture = useTokenTable();
const { apps, countRows } = fixture;

/** Inserts `count` expired rows `${prefix}-1..count`, a second apart, of every purpose. */
async function insertExpired(prefix: string, count: number): Promise<void> {
  await fixture.admin.query(
    `INSERT INTO tokens (jti, subject, expires_at, purpose)
     SELECT $1 || '-' || i, 'subject-' || (i % 50), now() - interval '1 hour' - (i % 600) * interval '1 second',
            (ARRAY['user', 'confirm', '${REVOCATION_PURPOSE}'])[1 + i % 3]
       FROM generate_series(1, $2::int) AS i`,
    [prefix, count],
  );
}

async function instances(count: number, url: string, options: Parameters<typeof createTokenApp>[1]): Promise<INestApplication[]> {
  const created = await Promise.all(Array.from({ length: count }, () => createTokenApp(url, options)));
  apps.push(...created);
  return created;
}

/** Log lines of completed runs. */
function completedRuns(log: jest.SpiedFunction<Logger['log']>): string[] {
  return log.mock.calls.map(([message]) => String(message)).filter((message) => /^expunged \d+ expired token rows/.test(message));
}

it('three application instances expunging at once: one works, the others skip, every expired row goes and no live one', async () => {
  const three = await instances(3, fixture.db.url, { options: { expunge: { enabled: false, batchSize: 100 } } });
  const expired = 9000;
  await insertExpired('old', expired);
  await fixture.admin.query(
    `INSERT INTO tokens (jti, subject, expires_at, purpose)
     SELECT 'live-' || i, 'subject-' || (i % 50), now() + (1 + i % 600) * interval '1 second',
            (ARRAY['user', 'confirm', '${REVOCATION_PURPOSE}'])[1 + i % 3]
       FROM generate_series(1, 3000) AS i`,
  );

  const results: ExpungeRunResult[] = await Promise.all(three.map((instance) => instance.get(ExpungerService).run()));

  expect(results).toHaveLength(3);
  expect(results.reduce((sum, result) => sum + result.deleted, 0)).toBe(expired);
  // The lease let exactly one run do the work; those that found it held skipped at once.
  expect(results.filter((result) => result.deleted > 0)).toEqual([{ deleted: expired, skipped: false, durationMs: expect.any(Number) }]);
  const skipped = results.filter((result) => result.skipped);
  expect(skipped.length).toBeGreaterThanOrEqual(1);
  for (const result of skipped) expect(result.deleted).toBe(0);
  expect(await countRows(`jti LIKE 'old-%'`)).toBe(0);
  expect(await countRows(`jti LIKE 'live-%'`)).toBe(3000);
  expect(await countRows(`jti LIKE 'live-%' AND purpose = '${REVOCATION_PURPOSE}'`)).toBe(1000);
  expect(await readRunRecord(fixture.admin)).toMatchObject({ leaseUntil: null, deleted: expired });
});

it('through a transaction-mode PgBouncer, of several instances running at once exactly one works and the others skip, round after round', async () => {
  const bouncer = await startPgBouncer(fixture.db.url, 2);
  try {
    const four = await instances(4, bouncer.urlFor(fixture.db.url), {
      options: { expunge: { enabled: false, batchSize: 500 } },
      typeOrm: { migrationsRun: false },
    });
    // Each instance opens its connections before the measured rounds.
    for (const instance of four) expect(await instance.get(ExpungerService).run()).toMatchObject({ skipped: false });
    for (let round = 1; round <= 3; round++) {
      await insertExpired(`round-${round}`, 20_000);
      const settled = await Promise.allSettled(four.map((instance) => instance.get(ExpungerService).run()));
      expect(settled.filter((outcome) => outcome.status === 'rejected')).toEqual([]);
      const results = settled.map((outcome) => (outcome as PromiseFulfilledResult<ExpungeRunResult>).value);
      expect(results.filter((result) => !result.skipped)).toEqual([{ deleted: 20_000, skipped: false, durationMs: expect.any(Number) }]);
      expect(results.filter((result) => result.skipped)).toHaveLength(3);
      expect(await countRows(`jti LIKE 'round-%'`)).toBe(0);
      expect(await readRunRecord(fixture.admin)).toMatchObject({ leaseUntil: null, deleted: 20_000 });
    }
    // Nothing is left held on PgBouncer's server connections: each instance runs again on its own.
    for (const instance of four) expect(await instance.get(ExpungerService).run()).toMatchObject({ skipped: false });
  } finally {
    await Promise.all(apps.splice(1).map((app) => app.close().catch(() => undefined)));
    await bouncer.stop();
  }
});

it.each([0, 1])('five instances booting together (startupJitterSeconds %d) catch up once', async (startupJitterSeconds) => {
  await insertExpired('old', 5000);
  const log = jest.spyOn(Logger.prototype, 'log');
  const deleteExpired = jest.spyOn(ExpiredTokenDeleter.prototype, 'deleteExpired');
  await instances(5, fixture.db.url, { options: { expunge: { startupJitterSeconds } } });
  await waitFor(async () => (await readRunRecord(fixture.admin))?.completedAt != null, 10_000, 'the catch-up run');
  // Every instance's catch-up has come due by now.
  await new Promise((resolve) => setTimeout(resolve, startupJitterSeconds * 1000 + 1000));
  expect(await countRows(`jti LIKE 'old-%'`)).toBe(0);
  expect(completedRuns(log)).toEqual([expect.stringMatching(/^expunged 5000 expired token rows/)]);
  expect(deleteExpired).toHaveBeenCalledTimes(1);
});

it('a run failing because the database is unreachable is logged, and the next scheduled run succeeds', async () => {
  const { proxy, url: proxiedUrl } = await proxyDatabase(fixture.db.url);
  const error = jest.spyOn(Logger.prototype, 'error');
  const log = jest.spyOn(Logger.prototype, 'log');
  // A completed run on record: only the schedule runs here, no start-up catch-up.
  await writeRunRecord(fixture.admin, { completedAt: new Date(Date.now() + 3_600_000) });
  const instance = await createTokenApp(proxiedUrl, {
    options: { expunge: { cron: '*/2 * * * * *' } },
    typeOrm: { migrationsRun: false, extra: { connectionTimeoutMillis: 1000 } },
  });
  apps.push(instance);
  const expunger = instance.get(ExpungerService);
  await fixture.admin.query(`INSERT INTO tokens (jti, subject, expires_at, purpose)
                     SELECT 'old-' || i, 's', now() - interval '1 day', 'user' FROM generate_series(1, 500) AS i`);

  proxy.setMode('reset');
  proxy.cut();
  // Called directly, the failure is logged and reported.
  await expect(expunger.run()).rejects.toBeDefined();
  expect(error).toHaveBeenCalledWith(expect.stringMatching(/expunge of "tokens" failed .*next run will retry/), expect.anything());
  // The scheduled tick fails too, without stopping the schedule.
  error.mockClear();
  await waitFor(() => error.mock.calls.length > 0, 10_000, 'a failing scheduled run to be logged');
  expect(await countRows(`jti LIKE 'old-%'`)).toBe(500);

  proxy.setMode('forward');
  // The run logs only after freeing its lease, a round trip after its deletes are visible: wait for the log.
  const succeeded = () => log.mock.calls.some(([message]) => /expunged 500 expired token rows/.test(String(message)));
  await waitFor(succeeded, 15_000, 'a later scheduled run to succeed');
  expect(await countRows(`jti LIKE 'old-%'`)).toBe(0);
  // And the expunger still answers directly.
  expect(await expunger.run()).toMatchObject({ deleted: 0, skipped: false });
  await instance.close();
  await proxy.close();
});
