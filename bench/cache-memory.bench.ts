/**
 * Memory benchmark of the revocation cache: heap used per 1,000,000 cached answers. One
 * application context with `revocationCache` on (its `maxEntries` raised to hold them
 * all) is filled through the methods its checks fill it with, as `tokenRevoked` would for
 * distinct tokens: each subject's marker answer (none) and, for TOKENS_PER_SUBJECT tokens
 * of each (a random UUID jti, as the library's), the token's own row (stored and live for
 * half of them, none for the others).
 * `heapUsed` is read after a full garbage collection before and after the fill.
 *
 *   npm run bench:cache-memory
 *
 * Environment: DATABASE_URL (else an embedded PostgreSQL), BENCH_ENTRIES (default 1,000,000),
 * BENCH_TOKENS_PER_SUBJECT (default 10).
 */
import 'reflect-metadata';
import { setImmediate as yieldToLoop } from 'node:timers/promises';
import { NestFactory } from '@nestjs/core';
import { RevocationCache } from '../lib/index.js';
import { benchAppModule } from './support/bench-app.js';
import { describeMachine, openBenchDatabase, runBench } from './support/bench-kit.js';

const ENTRIES = Number(process.env.BENCH_ENTRIES ?? 1_000_000);
const TOKENS_PER_SUBJECT = Number(process.env.BENCH_TOKENS_PER_SUBJECT ?? 10);
const GOAL_MB = 150;

/** A random UUID as a verified JWT's payload hands it over: a flat string from `JSON.parse`. */
const parsedJti = () => JSON.parse(`"${crypto.randomUUID()}"`) as string;

const gc = (globalThis as { gc?: () => void }).gc;

function heapUsed(): number {
  gc!();
  gc!();
  return process.memoryUsage().heapUsed;
}

async function main(): Promise<void> {
  if (!gc) throw new Error('run with node --expose-gc (npm run bench:cache-memory does)');
  const database = await openBenchDatabase();
  const app = await NestFactory.createApplicationContext(
    benchAppModule(database.url, {
      poolSize: 2,
      options: { revocationCache: { enabled: true, maxEntries: ENTRIES, maxEntryAgeMs: 3_600_000 } },
    }),
    { logger: ['error', 'warn'] },
  );
  try {
    const cache = app.get(RevocationCache);
    while (!cache.fresh) await new Promise((resolve) => setTimeout(resolve, 10));
    const before = heapUsed();
    const expiresMs = Date.now() + 86_400_000;
    let subject = 0;
    while (cache.size < ENTRIES) {
      // In slices, so that the polls that keep the cache answering are answered.
      for (let n = 0; n < 2_000 && cache.size < ENTRIES; n++, subject++) {
        const sub = `user-${subject}`;
        cache.rememberMarker(sub, null, cache.ticket());
        for (let t = 0; t < TOKENS_PER_SUBJECT && cache.size < ENTRIES; t++) {
          const own = t % 2 === 0 ? { purpose: 'user', expiresMs } : null;
          cache.rememberToken(parsedJti(), sub, own, cache.ticket());
        }
      }
      await yieldToLoop();
      if (!cache.fresh) throw new Error('the cache stopped answering during the fill');
    }
    const after = heapUsed();
    const perMillion = ((after - before) / cache.size) * 1_000_000;

    // For scale: the same number of such jtis alone, in an array.
    const keysBefore = heapUsed();
    const keys = Array.from({ length: cache.size }, parsedJti);
    const keysBytes = heapUsed() - keysBefore;

    console.log(await describeMachine(database));
    console.log(
      `${cache.size} entries: ${subject} subjects' markers (none) and ${TOKENS_PER_SUBJECT} tokens each (half stored and live, half never stored), UUID jtis`,
    );
    console.log(`for scale: ${keys.length} such jtis alone in an array take ${(keysBytes / 2 ** 20).toFixed(1)} MB`);
    console.log(`heapUsed before ${(before / 2 ** 20).toFixed(1)} MB, after ${(after / 2 ** 20).toFixed(1)} MB`);
    console.log(
      `heap per 1,000,000 entries: ${(perMillion / 2 ** 20).toFixed(1)} MB, ${(perMillion / 1_000_000).toFixed(0)} bytes per entry (goal <= ${GOAL_MB} MB: ${perMillion / 2 ** 20 <= GOAL_MB ? 'met' : 'MISSED'})`,
    );
  } finally {
    await app.close().catch(() => undefined);
    await database.close();
  }
}

runBench(main);
