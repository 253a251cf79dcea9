import { jest } from '@jest/globals';
import type { INestApplication } from '@nestjs/common';
import { LogOutEverywhereService, TokenService } from '../lib/index.js';
import { logOutMarkerJti, type LogOutLevel } from '../lib/log-out-everywhere/log-out-marker.js';
import { createTestDatabase, type TestDatabase } from './support/test-database.js';
import { createTokenApp, dataSourceOf } from './support/token-app.js';

/**
 * The marker's `expires_at` follows the application clock, like everything it must outlive:
 * the log-out moment `at`, the `exp` of the tokens it revokes (`issueToken`) and the
 * expunger's cutoff. With the application clock ahead of the database, a marker dated by the
 * database clock expired, for the expunger, before the last token it revokes did.
 *
 * A file of its own: it moves `Date.now` and runs the expunger over the whole database.
 */

const DAY_MS = 86_400_000;
/** How far the application clock runs ahead of the database's here: more than a marker lives. */
const AHEAD_MS = 2 * DAY_MS;

let db: TestDatabase;
let app: INestApplication;

beforeAll(async () => {
  db = await createTestDatabase();
  app = await createTokenApp(db.url, { options: { expunge: { enabled: false }, logOutEverywhere: { markerLifetime: '1d' } } });
});

afterAll(async () => {
  await app?.close();
  await db?.drop();
});

/** Runs `work` with `Date.now` (the application clock) moved by `offsetMs`. */
async function withAppClock(offsetMs: number, work: () => Promise<void>): Promise<void> {
  const realNow = Date.now.bind(Date);
  const clock = jest.spyOn(Date, 'now').mockImplementation(() => realNow() + offsetMs);
  try {
    await work();
  } finally {
    clock.mockRestore();
  }
}

it('the marker expires markerLifetime after the later of the two clocks: it outlives the tokens it revokes, and the expunger keeps it', async () => {
  const tokens = app.get(TokenService);
  const logOut = app.get(LogOutEverywhereService);
  const markerOf = async (subject: string) =>
    (
      await dataSourceOf(app).query('SELECT expires_at, extra_data, now() AS db_now FROM tokens WHERE jti = $1', [logOutMarkerJti(subject)])
    )[0];

  await withAppClock(+AHEAD_MS, async () => {
    // The longest-lived token the module issues: exactly markerLifetime.
    const { token, expiresAt } = await tokens.issueToken({ subject: 'ahead', expiresIn: '1d' });
    await logOut.logOutEverywhere('ahead');
    const marker = await markerOf('ahead');
    const [level] = Object.values<LogOutLevel>(marker.extra_data.levels);
    expect(new Date(marker.expires_at).getTime()).toBeGreaterThanOrEqual(level.at + DAY_MS);
    expect(new Date(marker.expires_at).getTime()).toBeGreaterThanOrEqual(expiresAt.getTime());
    // The expunger judges by the same (application) clock: the marker must survive it.
    await tokens.expungeExpired();
    expect(await markerOf('ahead')).toBeDefined();
    expect(await tokens.tokenRevoked(token)).toBe(true);
  });

  // The other way round, the database's clock decides: a marker its own now() saw expired
  // would be expunged by an instance with a correct clock before its time.
  await withAppClock(-AHEAD_MS, async () => {
    await logOut.logOutEverywhere('behind');
    const marker = await markerOf('behind');
    expect(new Date(marker.expires_at).getTime()).toBeGreaterThanOrEqual(new Date(marker.db_now).getTime() + DAY_MS - 1000);
  });
});
