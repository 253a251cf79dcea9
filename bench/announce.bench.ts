/**
 * Announcement benchmark: what a `pg_notify` in the same statement costs a revoking
 * write. Revocations per second at concurrency 1 and BENCH_CONCURRENCY (one caller per
 * connection), side by side in one run:
 *
 * - raw: the library's revoke statement (`TokenStore.revokeStatement()`) on a raw `pg`
 *   pool, as it is with `revocationCache.announce` (the upsert and its `pg_notify` in one
 *   statement) and without; for comparison only, the bare upsert followed by `pg_notify`
 *   in a second statement, after the commit;
 * - library: `TokenService.revoke` with `revocationCache: { enabled: true }` and the same
 *   with `announce: false`, sharing one pool and one cache.
 *
 * Listening sessions stand for the other instances: PostgreSQL serializes the commits of
 * notifying transactions, and every listener reads the queue they write.
 *
 *   npm run bench:announce
 *
 * Environment: DATABASE_URL (else an embedded PostgreSQL), BENCH_CONCURRENCY (default 32),
 * BENCH_SECONDS (per window, default 2), BENCH_ROUNDS (default 6; every round runs each
 * variant once, in alternating order, and a ratio is the median of per-round ratios),
 * BENCH_LISTENERS (sessions listening besides the application's cache, default 2),
 * BENCH_TOKENS (tokens signed ahead for `revoke`, default 300,000).
 */
import 'reflect-metadata';
import { NestFactory } from '@nestjs/core';
import pg from 'pg';
import { DataSource } from 'typeorm';
import { RevocationCache, TokenService } from '../lib/index.js';
import { ExpiredTokenDeleter } from '../lib/expunger/expired-token.deleter.js';
import { TokenCodec } from '../lib/jwt/token-codec.js';
import type { ResolvedTokenResourceOptions } from '../lib/options/resolved-options.js';
import { TOKEN_ANNOUNCEMENT } from '../lib/revocation-cache/announcement.js';
import { TOKEN_RESOURCE_OPTIONS } from '../lib/token-resource.internal-constants.js';
import { TokenStore } from '../lib/token.store.js';
import { benchAppModule } from './support/bench-app.js';
import { describeMachine, openBenchDatabase, printTable } from './support/bench-kit.js';
import { runInterleaved, type Variant } from './support/interleaved-rounds.js';

const CONCURRENCY = Number(process.env.BENCH_CONCURRENCY ?? 32);
const SECONDS = Number(process.env.BENCH_SECONDS ?? 2);
const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 6);
const LISTENERS = Number(process.env.BENCH_LISTENERS ?? 2);
const TOKENS = Number(process.env.BENCH_TOKENS ?? 300_000);
const GOAL = 0.8;

async function main(): Promise<void> {
  const database = await openBenchDatabase();
  const app = await NestFactory.createApplicationContext(
    benchAppModule(database.url, { poolSize: CONCURRENCY, options: { revocationCache: { enabled: true } } }),
    { logger: ['error', 'warn'] },
  );
  const listeners: pg.Client[] = [];
  try {
    const store = app.get(TokenStore);
    const service = app.get(TokenService);
    const codec = app.get(TokenCodec);
    // The same library with announce: false, over the application's own pool and cache.
    const options = app.get<ResolvedTokenResourceOptions>(TOKEN_RESOURCE_OPTIONS);
    const quietOptions = { ...options, revocationCache: { ...options.revocationCache, announce: false } };
    const quietStore = new TokenStore(app.get(DataSource), store.repository, quietOptions);
    const quietService = new TokenService(quietOptions, codec, quietStore, app.get(RevocationCache), app.get(ExpiredTokenDeleter));
    const announced = store.revokeStatement();
    const bare = quietStore.revokeStatement();
    if (!announced.text.includes('pg_notify') || bare.text.includes('pg_notify'))
      throw new Error('the announced revoke statement must notify and the bare one must not');
    const announceAlone = { name: 'raw_announce', text: `SELECT ${store.announcement(TOKEN_ANNOUNCEMENT, '$1')}` };

    const raw = database.pool(CONCURRENCY);
    let notifications = 0;
    for (let k = 0; k < LISTENERS; k++) {
      const listener = new pg.Client({ connectionString: database.url });
      await listener.connect();
      listener.on('notification', () => notifications++);
      await listener.query(`LISTEN ${store.revocationChannel}`);
      listeners.push(listener);
    }

    console.log(`signing ${TOKENS} tokens for revoke ...`);
    const iat = Math.floor(Date.now() / 1000);
    const tokens: string[] = [];
    for (let k = 0; k < TOKENS; k++)
      tokens.push(await codec.sign({ sub: `user-${k % 50_000}`, jti: `signed-${k}`, iat, exp: iat + 86_400 }));
    let revoked = 0;
    const nextToken = () => {
      if (revoked === TOKENS) throw new Error('out of signed tokens: raise BENCH_TOKENS');
      return tokens[revoked++];
    };
    // Every raw call revokes a jti never seen before, as revoking a live, unstored token does.
    let written = 0;
    const values = () => [`raw-${written++}`, `user-${written % 50_000}`, new Date(Date.now() + 86_400_000), false];
    const variants: Variant[] = [
      { name: 'raw pg: revoke upsert', call: () => raw.query({ name: bare.name, text: bare.text, values: values() }) },
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
            const row = values();
            await client.query({ name: bare.name, text: bare.text, values: row });
            await client.query({ name: announceAlone.name, text: announceAlone.text, values: [row[0]] });
          } finally {
            client.release();
          }
        },
      },
      { name: 'TokenService.revoke, announce: false', call: () => quietService.revoke(nextToken()) },
      { name: 'TokenService.revoke, revocationCache on', call: () => service.revoke(nextToken()) },
    ];
    const ratios: Array<[string, string]> = [
      ['raw pg: revoke upsert + pg_notify', 'raw pg: revoke upsert'],
      ['raw pg: revoke upsert, then pg_notify', 'raw pg: revoke upsert'],
      ['TokenService.revoke, revocationCache on', 'TokenService.revoke, announce: false'],
    ];

    const results = await runInterleaved(variants, [1, CONCURRENCY], ROUNDS, SECONDS);
    await new Promise((resolve) => setTimeout(resolve, 500));
    const announcedCalls = variants
      .filter((variant) => variant.name.includes('pg_notify') || variant.name.includes('cache on'))
      .reduce((sum, variant) => sum + results.merged(variant.name, 1).ops + results.merged(variant.name, CONCURRENCY).ops, 0);

    console.log(await describeMachine(database));
    console.log(
      `each call revokes a new jti (INSERT ... ON CONFLICT, autocommit, synchronous_commit on); raw pool and library pool: ${CONCURRENCY} connections each; ${LISTENERS} listening sessions besides the cache's; ${ROUNDS} x ${SECONDS} s per variant and concurrency, interleaved`,
    );
    printTable(results.tableRows(variants, [1, CONCURRENCY]));
    if (LISTENERS > 0)
      console.log(
        `notifications received per listener: ${Math.round(notifications / LISTENERS)} (announced writes timed: ${announcedCalls})`,
      );
    for (const [ours, theirs] of ratios) {
      const parts = [1, CONCURRENCY].map((c) => results.describeRatio(ours, theirs, c));
      const met = [1, CONCURRENCY].every((c) => results.medianRatio(ours, theirs, c) >= GOAL);
      console.log(`ratio ${ours} / ${theirs}: ${parts.join(', ')} (goal >= ${GOAL}x on the median: ${met ? 'met' : 'MISSED'})`);
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
