/**
 * Announcement benchmark: what a `pg_notify` in the same statement costs a revoking
 * write. Revocations per second of the library's revoke upsert (`TokenStore.revokeStatement`)
 * on a raw `pg` pool, with and without a `pg_notify` of the revoked jti in the same
 * statement (one transaction either way), side by side in one run, at concurrency 1 and
 * BENCH_CONCURRENCY, each caller on its own connection. Listeners stand for the other
 * instances: PostgreSQL serializes the commits of notifying transactions, and the queue
 * they write is read by every listening session.
 *
 *   npm run bench:announce
 *
 * Environment: DATABASE_URL (else an embedded PostgreSQL), BENCH_CONCURRENCY (default 32),
 * BENCH_SECONDS (per window, default 2), BENCH_ROUNDS (default 6; every round runs each
 * variant once, in alternating order, and the ratio is the median of per-round ratios),
 * BENCH_LISTENERS (sessions listening on the channel, default 2).
 */
import 'reflect-metadata';
import { NestFactory } from '@nestjs/core';
import pg from 'pg';
import { TokenStore } from '../lib/token.store.js';
import { benchAppModule } from './support/bench-app.js';
import { describeMachine, openBenchDatabase, printTable } from './support/bench-kit.js';
import { runInterleaved, type Variant } from './support/interleaved-rounds.js';

const CONCURRENCY = Number(process.env.BENCH_CONCURRENCY ?? 32);
const SECONDS = Number(process.env.BENCH_SECONDS ?? 2);
const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 6);
const LISTENERS = Number(process.env.BENCH_LISTENERS ?? 2);
const CHANNEL = 'ntr_bench_revocations';
const GOAL = 0.8;

async function main(): Promise<void> {
  const database = await openBenchDatabase();
  const app = await NestFactory.createApplicationContext(benchAppModule(database.url, { poolSize: 1 }), { logger: ['error', 'warn'] });
  const listeners: pg.Client[] = [];
  try {
    const revoke = app.get(TokenStore).revokeStatement();
    // The same upsert, its revocation announced from the same statement: a write that revokes
    // nothing announces nothing.
    const announced = {
      name: 'raw_revoke_announced',
      text: `WITH revoked AS (${revoke.text}) SELECT revoked, pg_notify('${CHANNEL}', $1) FROM revoked`,
    };
    const raw = database.pool(CONCURRENCY);
    let notifications = 0;
    for (let k = 0; k < LISTENERS; k++) {
      const listener = new pg.Client({ connectionString: database.url });
      await listener.connect();
      listener.on('notification', () => notifications++);
      await listener.query(`LISTEN ${CHANNEL}`);
      listeners.push(listener);
    }

    // Every call revokes a jti never seen before, as revoking a live, unstored token does.
    let written = 0;
    const values = () => [`bench-${written++}`, `user-${written % 50_000}`, new Date(Date.now() + 86_400_000), false];
    const variants: Variant[] = [
      { name: 'raw pg: revoke upsert', call: () => raw.query({ name: revoke.name, text: revoke.text, values: values() }) },
      {
        name: 'raw pg: revoke upsert + pg_notify',
        call: () => raw.query({ name: announced.name, text: announced.text, values: values() }),
      },
      {
        // For comparison only: announced after the commit, in a transaction that writes no
        // WAL, so it does not hold the notify lock across a commit flush. A crash between
        // the two statements loses the announcement.
        name: 'raw pg: revoke upsert, then pg_notify',
        call: async () => {
          const client = await raw.connect();
          try {
            const [jti] = values();
            await client.query({ name: revoke.name, text: revoke.text, values: [jti, ...values().slice(1)] });
            await client.query({ name: 'raw_announce', text: `SELECT pg_notify('${CHANNEL}', $1)`, values: [jti] });
          } finally {
            client.release();
          }
        },
      },
    ];
    const answer = await raw.query({ name: announced.name, text: announced.text, values: values() });
    if (answer.rowCount !== 1) throw new Error(`the announced revoke wrote ${answer.rowCount} rows`);

    const results = await runInterleaved(variants, [1, CONCURRENCY], ROUNDS, SECONDS);
    await new Promise((resolve) => setTimeout(resolve, 500));
    const announcedCalls = variants
      .slice(1)
      .reduce((sum, variant) => sum + results.merged(variant.name, 1).ops + results.merged(variant.name, CONCURRENCY).ops, 0);

    console.log(await describeMachine(database));
    console.log(
      `each call revokes a new jti (INSERT ... ON CONFLICT, autocommit, synchronous_commit on); pool: ${CONCURRENCY} connections; ${LISTENERS} listening sessions; ${ROUNDS} x ${SECONDS} s per variant and concurrency, interleaved`,
    );
    printTable(results.tableRows(variants, [1, CONCURRENCY]));
    if (LISTENERS > 0)
      console.log(
        `notifications received per listener: ${Math.round(notifications / LISTENERS)} (announced writes timed: ${announcedCalls})`,
      );
    for (const variant of variants.slice(1)) {
      const parts = [1, CONCURRENCY].map((c) => results.describeRatio(variant.name, variants[0].name, c));
      const met = [1, CONCURRENCY].every((c) => results.medianRatio(variant.name, variants[0].name, c) >= GOAL);
      console.log(`ratio ${variant.name} / revoke upsert: ${parts.join(', ')} (goal >= ${GOAL}x on the median: ${met ? 'met' : 'MISSED'})`);
    }
  } finally {
    await Promise.all(listeners.map((listener) => listener.end().catch(() => undefined)));
    await app.close().catch(() => undefined);
    await database.close();
  }
}

main().catch((error) => {
  console.error(error);
  process.exitCode = 1;
});
