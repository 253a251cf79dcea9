/**
 * Propagation benchmark: how long after a revocation commits on one instance another
 * instance's revocation cache stops admitting the token. Two application contexts (A and
 * B, each with `revocationCache` on and its own pool and polling session) share one
 * database: A's commit wakes B, which polls the rows stamped since its previous poll. For
 * each sample B checks a fresh token (now cached as not revoked), A revokes it, and B checks
 * it in a loop (yielding to I/O between checks) until it answers revoked; the delay is measured from the moment A's
 * `revoke` resolved (its commit acknowledged) and, for reference, from the moment it was
 * called.
 *
 *   npm run bench:propagation
 *
 * Environment: DATABASE_URL (else an embedded PostgreSQL), BENCH_SAMPLES (default 1000).
 */
import 'reflect-metadata';
import { NestFactory } from '@nestjs/core';
import type { INestApplicationContext } from '@nestjs/common';
import { RevocationCache, TokenService } from '../lib/index.js';
import { TokenCodec } from '../lib/jwt/token-codec.js';
import { benchAppModule } from './support/bench-app.js';
import { describeMachine, openBenchDatabase, percentile, printTable, runBench } from './support/bench-kit.js';

const SAMPLES = Number(process.env.BENCH_SAMPLES ?? 1000);
const GOAL_P99_MS = 50;

async function instance(url: string): Promise<INestApplicationContext> {
  const app = await NestFactory.createApplicationContext(
    benchAppModule(url, { poolSize: 4, options: { revocationCache: { enabled: true } } }),
    { logger: ['error', 'warn'] },
  );
  while (!app.get(RevocationCache).fresh) await new Promise((resolve) => setTimeout(resolve, 10));
  return app;
}

async function main(): Promise<void> {
  const database = await openBenchDatabase();
  const apps: INestApplicationContext[] = [];
  try {
    apps.push(await instance(database.url), await instance(database.url));
    const [a, b] = apps.map((app) => app.get(TokenService));
    const cacheOfB = apps[1].get(RevocationCache);
    const codec = apps[0].get(TokenCodec);

    const fromCommit: number[] = [];
    const fromCall: number[] = [];
    let checks = 0;
    for (let k = 0; k < SAMPLES; k++) {
      const iat = Math.floor(Date.now() / 1000);
      const token = await codec.sign({ sub: `user-${k % 100}`, jti: `propagation-${k}`, iat, exp: iat + 3600 });
      // A poll that lands while B reads (the previous sample's revocation) keeps the answer
      // out of the cache: the read may predate a write that poll applied. Read it again then.
      for (let attempt = 1; cacheOfB.lookupToken(`propagation-${k}`) === undefined; attempt++) {
        if (await b.tokenRevoked(token)) throw new Error(`token ${k} is revoked before it was revoked`);
        if (attempt === 5) throw new Error(`B did not cache its answer about token ${k}`);
      }
      const called = performance.now();
      await a.revoke(token);
      const committed = performance.now();
      // A remembered token is checked in microtasks alone: yield to I/O between checks, as a
      // server between requests, or B's poll and A's wake-up could never be read.
      while (!(await b.tokenRevoked(token))) {
        checks++;
        await new Promise((resolve) => setImmediate(resolve));
      }
      const refused = performance.now();
      fromCommit.push(refused - committed);
      fromCall.push(refused - called);
      // Let the instances' periodic polls and other timers run between samples.
      await new Promise((resolve) => setTimeout(resolve, 2));
    }

    console.log(await describeMachine(database));
    console.log(
      `${SAMPLES} samples; instances A and B in one process, each with revocationCache on (defaults), its own pool and polling session; B checks tokenRevoked back to back (${(checks / SAMPLES).toFixed(1)} checks answered "not revoked" per sample)`,
    );
    const row = (label: string, delays: number[]) => ({
      'delay until B refuses': label,
      'p50 ms': percentile(delays, 50),
      'p99 ms': percentile(delays, 99),
      'max ms': percentile(delays, 100),
    });
    printTable([row("from A's revoke resolving", fromCommit), row("from A's revoke call", fromCall)]);
    const p99 = percentile(fromCommit, 99);
    console.log(`p99 from the commit: ${p99.toFixed(1)} ms (goal < ${GOAL_P99_MS} ms: ${p99 < GOAL_P99_MS ? 'met' : 'MISSED'})`);
  } finally {
    await Promise.all(apps.map((app) => app.close().catch(() => undefined)));
    await database.close();
  }
}

runBench(main);
