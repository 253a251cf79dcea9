/**
 * Announcement benchmark: what announcing revocations to the other instances' caches costs
 * a revoking write. Revocations per second at concurrency 1 and BENCH_CONCURRENCY (one
 * caller per connection), side by side in one run:
 *
 * - raw: the library's revoke statement (`TokenStore.revokeStatement()`, which stamps its
 *   row's `changed_xid`) on a raw `pg` pool; for comparison, the same statement with a
 *   `pg_notify` of the `jti` in it, as every write announced itself before the poll;
 * - library: `TokenService.revoke` with `revocationCache: { enabled: true }` (it stamps,
 *   and wakes the other instances with one coalesced `NOTIFY` after its commits) and the
 *   same with `announce: false` (it stamps only), sharing one pool.
 *
 * BENCH_INSTANCES other application instances with the cache on, each in a process of its
 * own, stand for the rest of the fleet: each polls on every wake-up and every quarter of
 * `maxStalenessMs`. The "before" variant notifies a channel of its own, heard by as many
 * plain listening sessions, as the caches' listeners heard every write before.
 *
 *   npm run bench:announce
 *
 * Environment: DATABASE_URL (else an embedded PostgreSQL), BENCH_CONCURRENCY (default 32),
 * BENCH_SECONDS (per window, default 2), BENCH_ROUNDS (default 6; every round runs each
 * variant once, in alternating order, and a ratio is the median of per-round ratios),
 * BENCH_INSTANCES (other caching instances, default 2), BENCH_TOKENS (tokens signed ahead
 * for `revoke`, default 300,000).
 */
import 'reflect-metadata';
import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { fileURLToPath } from 'node:url';
import { NestFactory } from '@nestjs/core';
import pg from 'pg';
import { DataSource } from 'typeorm';
import { TokenService } from '../lib/index.js';
import { ExpiredTokenDeleter } from '../lib/expunger/expired-token.deleter.js';
import { TokenCodec } from '../lib/jwt/token-codec.js';
import type { ResolvedTokenResourceOptions } from '../lib/options/resolved-options.js';
import { RevocationCache } from '../lib/revocation-cache/revocation.cache.js';
import { TOKEN_RESOURCE_OPTIONS } from '../lib/token-resource.internal-constants.js';
import { TokenStore } from '../lib/token.store.js';
import { benchAppModule } from './support/bench-app.js';
import { describeMachine, openBenchDatabase, printTable, runBench } from './support/bench-kit.js';
import { runInterleaved, type Variant } from './support/interleaved-rounds.js';

const CONCURRENCY = Number(process.env.BENCH_CONCURRENCY ?? 32);
const SECONDS = Number(process.env.BENCH_SECONDS ?? 2);
const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 6);
const INSTANCES = Number(process.env.BENCH_INSTANCES ?? 2);
const TOKENS = Number(process.env.BENCH_TOKENS ?? 300_000);
const GOAL = 0.8;

async function main(): Promise<void> {
  const database = await openBenchDatabase();
  const cached = { revocationCache: { enabled: true } };
  const app = await NestFactory.createApplicationContext(benchAppModule(database.url, { poolSize: CONCURRENCY, options: cached }), {
    logger: ['error', 'warn'],
  });
  const others: ChildProcess[] = [];
  const listeners: pg.Client[] = [];
  try {
    for (let k = 0; k < INSTANCES; k++) others.push(await otherInstance(database.url));
    const store = app.get(TokenStore);
    const service = app.get(TokenService);
    const codec = app.get(TokenCodec);
    // The same library with announce: false, over the application's own pool; its cache
    // is never started, as on an instance that does not cache.
    const options = app.get<ResolvedTokenResourceOptions>(TOKEN_RESOURCE_OPTIONS);
    const quietOptions = { ...options, revocationCache: { ...options.revocationCache, enabled: false, announce: false } };
    const quietCache = new RevocationCache(quietOptions, store, app.get(DataSource));
    const quietService = new TokenService(quietOptions, codec, store, quietCache, app.get(ExpiredTokenDeleter));
    const stamped = store.revokeStatement();
    const beforeChannel = `${store.revocationChannel}_before`;
    const notifying = {
      name: 'raw_revoke_notify',
      text: `WITH written AS (${stamped.text}) SELECT revoked, pg_notify('${beforeChannel}', 'j:' || $1::text) FROM written`,
    };

    const raw = database.pool(CONCURRENCY);
    const heard = new Map<string, number>();
    for (const channel of [store.revocationChannel, ...Array<string>(INSTANCES).fill(beforeChannel)]) {
      const listener = new pg.Client({ connectionString: database.url });
      await listener.connect();
      listener.on('notification', (message) => heard.set(message.channel, (heard.get(message.channel) ?? 0) + 1));
      await listener.query(`LISTEN ${channel}`);
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
      { name: 'raw pg: revoke upsert', call: () => raw.query({ name: stamped.name, text: stamped.text, values: values() }) },
      {
        name: 'raw pg: revoke upsert + pg_notify (before)',
        call: () => raw.query({ name: notifying.name, text: notifying.text, values: values() }),
      },
      { name: 'TokenService.revoke, announce: false', call: () => quietService.revoke(nextToken()) },
      { name: 'TokenService.revoke, revocationCache on', call: () => service.revoke(nextToken()) },
    ];
    const ratios: Array<[string, string]> = [
      ['TokenService.revoke, revocationCache on', 'TokenService.revoke, announce: false'],
      ['TokenService.revoke, revocationCache on', 'raw pg: revoke upsert'],
      ['raw pg: revoke upsert + pg_notify (before)', 'raw pg: revoke upsert'],
    ];

    const results = await runInterleaved(variants, [1, CONCURRENCY], ROUNDS, SECONDS);
    await new Promise((resolve) => setTimeout(resolve, 500));
    const announcedCalls = ['TokenService.revoke, revocationCache on'].reduce(
      (sum, name) => sum + results.merged(name, 1).ops + results.merged(name, CONCURRENCY).ops,
      0,
    );

    console.log(await describeMachine(database));
    console.log(
      `each call revokes a new jti (INSERT ... ON CONFLICT, autocommit, synchronous_commit on); raw pool and library pool: ${CONCURRENCY} connections each; ${INSTANCES} other caching instances (processes of their own) besides the application's own cache; ${ROUNDS} x ${SECONDS} s per variant and concurrency, interleaved`,
    );
    printTable(results.tableRows(variants, [1, CONCURRENCY]));
    console.log(
      `wake-ups sent: ${heard.get(store.revocationChannel) ?? 0} for ${announcedCalls} library revocations with the cache on; notifications of the before variant per listener: ${Math.round((heard.get(beforeChannel) ?? 0) / Math.max(1, INSTANCES))}`,
    );
    for (const [ours, theirs] of ratios) {
      const parts = [1, CONCURRENCY].map((c) => results.describeRatio(ours, theirs, c));
      const goal = ours.includes('cache on') && theirs.includes('announce: false');
      const met = [1, CONCURRENCY].every((c) => results.medianRatio(ours, theirs, c) >= GOAL);
      console.log(
        `ratio ${ours} / ${theirs}: ${parts.join(', ')}${goal ? ` (goal >= ${GOAL}x on the median: ${met ? 'met' : 'MISSED'})` : ''}`,
      );
    }
  } finally {
    await Promise.all(listeners.map((listener) => listener.end().catch(() => undefined)));
    await Promise.all(
      others.map(async (other) => {
        other.stdin?.end();
        if (other.exitCode === null) await once(other, 'exit');
      }),
    );
    await app.close().catch(() => undefined);
    await database.close();
  }
}

/** Starts another caching instance in a process of its own (bench/support/caching-instance.ts), once its cache is fresh. */
async function otherInstance(url: string): Promise<ChildProcess> {
  const child = spawn(process.execPath, [fileURLToPath(new URL('./support/caching-instance.js', import.meta.url)), url], {
    stdio: ['pipe', 'pipe', 'inherit'],
  });
  let output = '';
  child.stdout.setEncoding('utf8');
  await new Promise<void>((resolve, reject) => {
    child.stdout.on('data', (chunk: string) => {
      output += chunk;
      if (output.includes('ready')) resolve();
    });
    child.once('exit', (code) => reject(new Error(`a caching instance exited (${code}) before it was ready`)));
  });
  return child;
}

runBench(main);
