import { jest } from '@jest/globals';
import { Logger } from '@nestjs/common';
import { ExpungerService, REVOCATION_PURPOSE, type ExpungeRunResult } from '../lib/index.js';
import { proxyDatabase } from './support/tcp-proxy.js';
import { createTokenApp } from './support/token-app.js';
import { useTokenTable } from './support/token-table.js';
import { waitFor } from './support/wait-for.js';

const fixture = useTokenTable();
const { apps, countRows } = fixture;

it('three application instances expunging at once: one works, the others skip, every expired row goes and no live one', async () => {
  const instances = await Promise.all(
    [1, 2, 3].map(() => createTokenApp(fixture.db.url, { options: { expunge: { batchSize: 100 } } })),
  );
  apps.push(...instances);
  const expired = 9000;
  await fixture.admin.query(
    `INSERT INTO tokens (jti, subject, expires_at, purpose)
     SELECT 'old-' || i, 'subject-' || (i % 50), now() - interval '1 hour' - (i % 600) * interval '1 second',
            (ARRAY['user', 'confirm', '${REVOCATION_PURPOSE}'])[1 + i % 3]
       FROM generate_series(1, ${expired}) AS i`,
  );
  await fixture.admin.query(
    `INSERT INTO tokens (jti, subject, expires_at, purpose)
     SELECT 'live-' || i, 'subject-' || (i % 50), now() + (1 + i % 600) * interval '1 second',
            (ARRAY['user', 'confirm', '${REVOCATION_PURPOSE}'])[1 + i % 3]
       FROM generate_series(1, 3000) AS i`,
  );

  const results: ExpungeRunResult[] = await Promise.all(instances.map((instance) => instance.get(ExpungerService).run()));

  expect(results).toHaveLength(3);
  expect(results.reduce((sum, result) => sum + result.deleted, 0)).toBe(expired);
  // The lock let exactly one run do the work; those that found it held skipped at once.
  expect(results.filter((result) => result.deleted > 0)).toEqual([{ deleted: expired, skipped: false, durationMs: expect.any(Number) }]);
  const skipped = results.filter((result) => result.skipped);
  expect(skipped.length).toBeGreaterThanOrEqual(1);
  for (const result of skipped) expect(result.deleted).toBe(0);
  expect(await countRows(`jti LIKE 'old-%'`)).toBe(0);
  expect(await countRows(`jti LIKE 'live-%'`)).toBe(3000);
  expect(await countRows(`jti LIKE 'live-%' AND purpose = '${REVOCATION_PURPOSE}'`)).toBe(1000);
  expect(await fixture.advisoryLocks()).toEqual([]);
});

it('a run failing because the database is unreachable is logged, and the next scheduled run succeeds', async () => {
  const { proxy, url: proxiedUrl } = await proxyDatabase(fixture.db.url);
  const error = jest.spyOn(Logger.prototype, 'error');
  const log = jest.spyOn(Logger.prototype, 'log');
  const instance = await createTokenApp(proxiedUrl, {
    options: { expunge: { intervalHours: 0.0005 } }, // every 1.8 s
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
  expect(await countRows()).toBe(500);

  proxy.setMode('forward');
  // The run logs only after unlocking, a round trip after its deletes are visible: wait for the log.
  const succeeded = () => log.mock.calls.some(([message]) => /expunged 500 expired token rows/.test(String(message)));
  await waitFor(succeeded, 15_000, 'a later scheduled run to succeed');
  expect(await countRows()).toBe(0);
  // And the expunger still answers directly.
  expect(await expunger.run()).toMatchObject({ deleted: 0, skipped: false });
  await instance.close();
  await proxy.close();
});
