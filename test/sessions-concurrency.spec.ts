import { afterAll, afterEach, beforeAll, describe, expect, it } from '@jest/globals';
import type { INestApplication } from '@nestjs/common';
import pg from 'pg';
import {
  RefreshTokenReusedError,
  SessionService,
  TokenAlreadyRevokedError,
  type SessionTokens,
  type TokenResourceModuleOptions,
} from '../lib/index.js';
import { guardAnswer } from './support/guard-answer.js';
import { uniqueSubject } from './support/jwt-fixtures.js';
import { createSessionApp } from './support/session-app.js';
import { createRoomyDatabase, type RoomyDatabase } from './support/roomy-server.js';

const CALLERS = 100;
let db: RoomyDatabase;
let admin: pg.Client;
let app: INestApplication | undefined;

beforeAll(async () => {
  db = await createRoomyDatabase(CALLERS + 20);
  // The first application runs the migration.
  await (await createSessionApp(db.url)).close();
  admin = new pg.Client({ connectionString: db.url });
  await admin.connect();
});

afterEach(async () => {
  await app?.close();
  app = undefined;
});

afterAll(async () => {
  await admin?.end();
  await db?.close();
});

/** An application with a connection for every caller, so that each refresh runs on a connection of its own. */
async function roomyApp(options: Partial<TokenResourceModuleOptions>): Promise<INestApplication> {
  app = await createSessionApp(db.url, options, CALLERS + 5);
  return app;
}

async function countRows(where: string): Promise<number> {
  return (await admin.query<{ n: number }>(`SELECT count(*)::int AS n FROM tokens WHERE ${where}`)).rows[0].n;
}

/** Opens `n` pooled connections of `app` and gives them back, so that the race does not wait for connects. */
async function warm(app: INestApplication, n: number): Promise<void> {
  const service = app.get(SessionService);
  await Promise.all(Array.from({ length: n }, () => service.list(uniqueSubject())));
}

/** Refreshes `token` from `CALLERS` callers released together, and sorts out what each got. */
async function race(app: INestApplication, token: string): Promise<{ pairs: SessionTokens[]; errors: unknown[] }> {
  const service = app.get(SessionService);
  let open!: () => void;
  const gate = new Promise<void>((resolve) => (open = resolve));
  const calls = Array.from({ length: CALLERS }, () => gate.then(() => service.refresh(token)));
  open();
  const results = await Promise.allSettled(calls);
  return {
    pairs: results.flatMap((r) => (r.status === 'fulfilled' ? [r.value] : [])),
    errors: results.flatMap((r) => (r.status === 'rejected' ? [r.reason as unknown] : [])),
  };
}

describe(`${CALLERS} concurrent refreshes of one refresh token`, () => {
  it('give exactly one pair; with no reuse interval the others are reuse and end the session', async () => {
    const strict = await roomyApp({});
    await warm(strict, CALLERS);
    const first = await strict.get(SessionService).start({ subject: uniqueSubject() });
    const { pairs, errors } = await race(strict, first.refreshToken);
    expect(pairs).toHaveLength(1);
    expect(errors).toHaveLength(CALLERS - 1);
    for (const error of errors) expect([RefreshTokenReusedError, TokenAlreadyRevokedError]).toContain((error as object).constructor);
    expect(errors.some((error) => error instanceof RefreshTokenReusedError)).toBe(true);
    // Exactly one rotation was written: one successor refresh token, then the session ended.
    expect(await countRows(`starts_with(jti, '${first.sessionId}.r1.')`)).toBe(1);
    expect(await guardAnswer(strict, pairs[0].accessToken)).toEqual({ status: 401, message: 'token revoked' });
  });

  it('within the reuse interval all converge on the one successor pair, and the session lives on', async () => {
    const lenient = await roomyApp({ sessions: { reuseIntervalSeconds: 60 } });
    await warm(lenient, CALLERS);
    const first = await lenient.get(SessionService).start({ subject: uniqueSubject() });
    const { pairs, errors } = await race(lenient, first.refreshToken);
    expect(errors).toEqual([]);
    expect(new Set(pairs.map((pair) => `${pair.accessToken} ${pair.refreshToken}`)).size).toBe(1);
    expect(await countRows(`starts_with(jti, '${first.sessionId}.r1.')`)).toBe(1);
    expect(await guardAnswer(lenient, pairs[0].accessToken)).toEqual({ status: 200 });
    await expect(lenient.get(SessionService).refresh(pairs[0].refreshToken)).resolves.toMatchObject({ sessionId: first.sessionId });
  });
});
