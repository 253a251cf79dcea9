/**
 * Refresh benchmark: session rotations per second at concurrency 1 and BENCH_CONCURRENCY
 * (one caller per connection), side by side in one run:
 *
 * - raw pg: the writes of one rotation, by hand, in one transaction on a raw `pg` pool:
 *   `BEGIN`, the conditional UPDATE of the session row, the UPDATE that revokes the old
 *   refresh token's row, the INSERT of the new one, `COMMIT`;
 * - raw pg: the library's rotate statement (`SessionStatements.rotate`, the same writes as
 *   one statement) on the same pool, to tell the SQL's cost from the library's;
 * - `SessionService.refresh`: verifies the refresh token, rotates, signs the new pair.
 *
 * Every caller works on a session of its own, so no call waits for another's row lock.
 *
 *   npm run bench:refresh
 *
 * Environment: DATABASE_URL (else an embedded PostgreSQL), BENCH_CONCURRENCY (default 32),
 * BENCH_SECONDS (per window, default 2), BENCH_ROUNDS (default 6; every round runs each
 * variant once, in alternating order, and a ratio is the median of per-round ratios),
 * BENCH_ROWS (other tokens in the table, default 200,000).
 */
import 'reflect-metadata';
import { NestFactory } from '@nestjs/core';
import { SessionService } from '../lib/index.js';
import { SessionStatements } from '../lib/sessions/session.statements.js';
import { TokenStore } from '../lib/token.store.js';
import { benchAppModule } from './support/bench-app.js';
import { describeMachine, openBenchDatabase, printTable, runBench } from './support/bench-kit.js';
import { runInterleaved, type Variant } from './support/interleaved-rounds.js';

const CONCURRENCY = Number(process.env.BENCH_CONCURRENCY ?? 32);
const SECONDS = Number(process.env.BENCH_SECONDS ?? 2);
const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 6);
const ROWS = Number(process.env.BENCH_ROWS ?? 200_000);
const GOAL = 0.8;
const DAY = 86_400;

const RAW_ROTATE_SESSION = `
  UPDATE tokens SET extra_data = extra_data || $2::jsonb, expires_at = GREATEST(expires_at, to_timestamp($3::float8)), updated_at = now()
   WHERE jti = $1 AND purpose = 'session' AND expires_at > now() AND extra_data->'generation' = to_jsonb($4::int)`;
const RAW_SPEND = `UPDATE tokens SET purpose = 'revocation', updated_at = now() WHERE jti = $1 AND purpose = 'refresh'`;
const RAW_ISSUE = `INSERT INTO tokens (jti, subject, expires_at, purpose) VALUES ($1, $2, to_timestamp($3::float8), 'refresh')`;

/** A session a raw caller rotates: its row, subject and generation. */
interface RawSession {
  sid: string;
  subject: string;
  generation: number;
}

/** The state patch a rotation writes, the same shape as the library's. */
function rotation(generation: number) {
  const now = Date.now();
  const exp = (lifetime: number) => Math.floor(now / 1000 + lifetime);
  return { generation, lastRefreshedAt: now, access: { iat: now, exp: exp(900) }, refresh: { iat: now, exp: exp(30 * DAY) } };
}

/** Takes a free item for the length of one call, so that concurrent callers never share one. */
class FreeList<T> {
  constructor(private readonly items: T[]) {}
  async with(work: (item: T) => Promise<T>): Promise<void> {
    const item = this.items.pop();
    if (item === undefined) throw new Error('no free session: more callers than sessions');
    this.items.push(await work(item));
  }
}

async function main(): Promise<void> {
  const database = await openBenchDatabase();
  const app = await NestFactory.createApplicationContext(benchAppModule(database.url, { poolSize: CONCURRENCY }), {
    logger: ['error', 'warn'],
  });
  try {
    const service = app.get(SessionService);
    const rotate = new SessionStatements(app.get(TokenStore)).rotate;
    const raw = database.pool(CONCURRENCY);
    const sessionsPerVariant = CONCURRENCY * 2;

    console.log(`filling tokens with ${ROWS} other rows and ${sessionsPerVariant} sessions per variant ...`);
    await raw.query(`
      INSERT INTO tokens (jti, subject, expires_at, purpose)
      SELECT md5(i::text), 'user-' || (i % 50000), now() + interval '1 day', 'user' FROM generate_series(1, ${ROWS}) AS i`);
    const librarySessions: string[] = [];
    for (let k = 0; k < sessionsPerVariant; k++) librarySessions.push((await service.start({ subject: `library-${k}` })).refreshToken);
    const rawSessions = (prefix: string): RawSession[] =>
      Array.from({ length: sessionsPerVariant }, (_, k) => ({ sid: `${prefix}-${k}`, subject: `${prefix}-${k}`, generation: 0 }));
    const byHand = rawSessions('by-hand');
    const oneStatement = rawSessions('one-statement');
    for (const session of [...byHand, ...oneStatement]) {
      const state = { ...rotation(0), createdAt: Date.now(), claims: null, extraData: null };
      await raw.query(
        `INSERT INTO tokens (jti, subject, expires_at, purpose, extra_data) VALUES ($1, $2, to_timestamp($3::float8), 'session', $4),
                ($5, $2, to_timestamp($3::float8), 'refresh', NULL)`,
        [`session:${session.sid}`, session.subject, state.refresh.exp, state, `${session.sid}.r0`],
      );
    }
    await raw.query('VACUUM (ANALYZE) tokens');

    const library = new FreeList(librarySessions);
    const handFree = new FreeList(byHand);
    const statementFree = new FreeList(oneStatement);
    const variants: Variant[] = [
      {
        name: 'raw pg: rotation in one transaction',
        call: () =>
          handFree.with(async (session) => {
            const next = rotation(session.generation + 1);
            const client = await raw.connect();
            try {
              await client.query('BEGIN');
              const { rowCount } = await client.query({
                name: 'raw_rotate_session',
                text: RAW_ROTATE_SESSION,
                values: [`session:${session.sid}`, next, next.refresh.exp, session.generation],
              });
              if (rowCount !== 1) throw new Error(`session ${session.sid} did not rotate`);
              await client.query({ name: 'raw_spend', text: RAW_SPEND, values: [`${session.sid}.r${session.generation}`] });
              await client.query({
                name: 'raw_issue',
                text: RAW_ISSUE,
                values: [`${session.sid}.r${next.generation}`, session.subject, next.refresh.exp],
              });
              await client.query('COMMIT');
            } catch (error) {
              await client.query('ROLLBACK').catch(() => undefined);
              throw error;
            } finally {
              client.release();
            }
            return { ...session, generation: next.generation };
          }),
      },
      {
        name: "raw pg: the library's rotate statement",
        call: () =>
          statementFree.with(async (session) => {
            const next = rotation(session.generation + 1);
            const { rowCount } = await raw.query({
              name: rotate.name,
              text: rotate.text,
              values: [
                `session:${session.sid}`,
                session.subject,
                `${session.sid}.r${session.generation}`,
                session.generation,
                next,
                next.refresh.exp,
                `${session.sid}.r${next.generation}`,
                `${session.sid}.a${next.generation}`,
                next.access.exp,
                'user',
                false,
              ],
            });
            if (rowCount !== 1) throw new Error(`session ${session.sid} did not rotate`);
            return { ...session, generation: next.generation };
          }),
      },
      { name: 'SessionService.refresh', call: () => library.with(async (token) => (await service.refresh(token)).refreshToken) },
    ];
    const ratios: Array<[string, string]> = [
      ['SessionService.refresh', 'raw pg: rotation in one transaction'],
      ["raw pg: the library's rotate statement", 'raw pg: rotation in one transaction'],
    ];

    const results = await runInterleaved(variants, [1, CONCURRENCY], ROUNDS, SECONDS);

    console.log(await describeMachine(database));
    console.log(
      `each call rotates a session of its own (autocommit or one transaction, synchronous_commit on); ${ROWS} other rows; pools of ${CONCURRENCY} connections; ${ROUNDS} x ${SECONDS} s per variant and concurrency, interleaved`,
    );
    printTable(results.tableRows(variants, [1, CONCURRENCY]));
    for (const [ours, theirs] of ratios) {
      const parts = [1, CONCURRENCY].map((c) => results.describeRatio(ours, theirs, c));
      const met = [1, CONCURRENCY].every((c) => results.medianRatio(ours, theirs, c) >= GOAL);
      console.log(`ratio ${ours} / ${theirs}: ${parts.join(', ')} (goal >= ${GOAL}x on the median: ${met ? 'met' : 'MISSED'})`);
    }
  } finally {
    await app.close().catch(() => undefined);
    await database.close();
  }
}

runBench(main);
