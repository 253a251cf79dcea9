/**
 * Expunge benchmark: `ExpungerService.run()` (its lease, batches of short transactions,
 * the run record, in a real Nest application context) against one raw
 * `DELETE FROM ... WHERE expires_at < now()` on an identical table, each with
 * `jtiRevoked` calls running concurrently.
 *
 *   npm run bench:expunge
 *
 * Environment: DATABASE_URL (else an embedded PostgreSQL), BENCH_ROWS (expired rows, and
 * as many live ones; default 1,000,000), BENCH_BATCH_SIZE (default: the module's default, 20,000),
 * BENCH_CHECK_RATE (jtiRevoked calls per second sent during each; default 1000; 0 for
 * BENCH_CHECKERS back-to-back loops, default 4).
 */
import 'reflect-metadata';
import type { DynamicModule, INestApplicationContext } from '@nestjs/common';
import { Module } from '@nestjs/common';
import { NestFactory } from '@nestjs/core';
import { ScheduleModule } from '@nestjs/schedule';
import { TypeOrmModule } from '@nestjs/typeorm';
import { Entity } from 'typeorm';
import { CreateTokensTable1763900000000, ExpungerService, Token, TokenResourceModule, TokenService } from '../lib/index.js';
import { EXPUNGE_RECORD_JTI } from '../lib/token-resource.internal-constants.js';
import { TokenStore } from '../lib/token.store.js';
import { BENCH_SECRET } from './support/bench-app.js';
import { describeMachine, openBenchDatabase, percentile, printTable, runBench, type BenchDatabase } from './support/bench-kit.js';

const ROWS = Number(process.env.BENCH_ROWS ?? 1_000_000);
const BATCH_SIZE = process.env.BENCH_BATCH_SIZE ? Number(process.env.BENCH_BATCH_SIZE) : undefined;
const CHECKERS = Number(process.env.BENCH_CHECKERS ?? 4);
const CHECK_RATE = Number(process.env.BENCH_CHECK_RATE ?? 1000);

/** The baseline's identical table, reached through the module's custom-entity option. */
@Entity('tokens_baseline')
class BaselineToken extends Token {}

@Module({})
class ExpungeBenchModule {}

function appModule(url: string, entity: typeof Token, first: boolean): DynamicModule {
  return {
    module: ExpungeBenchModule,
    imports: [
      TypeOrmModule.forRoot({
        name: first ? 'default' : 'baseline',
        type: 'postgres',
        url,
        entities: [entity],
        logging: false,
        migrations: first ? [CreateTokensTable1763900000000] : [],
        migrationsRun: first,
      }),
      ScheduleModule.forRoot(),
      TokenResourceModule.forRoot({
        jwt: { secret: BENCH_SECRET },
        entity,
        dataSource: first ? 'default' : 'baseline',
        // Runs are started by the benchmark alone: no schedule, no start-up catch-up.
        expunge: { enabled: false, batchSize: BATCH_SIZE },
      }),
    ],
  };
}

async function fill(database: BenchDatabase): Promise<string[]> {
  const pool = database.pool(1);
  // Rows are written in the order tokens are issued, so expires_at follows the heap
  // order, as in a real table: the older half has expired. Every tenth is a revocation.
  await pool.query(`
    INSERT INTO tokens (jti, subject, expires_at, purpose, extra_data)
    SELECT md5(i::text), 'user-' || (i % 50000),
           CASE WHEN i <= ${ROWS}
                THEN now() - interval '30 days' + (i::float8 / ${ROWS}) * (interval '30 days' - interval '1 hour')
                ELSE now() + interval '1 hour' + ((i - ${ROWS})::float8 / ${ROWS}) * interval '30 days' END,
           CASE WHEN i % 10 = 0 THEN 'revocation' WHEN i % 10 = 1 THEN 'confirm' ELSE 'user' END,
           CASE WHEN i % 10 = 1 THEN jsonb_build_object('email', 'user' || i || '@example.com') END
      FROM generate_series(1, ${2 * ROWS}) AS i`);
  await pool.query('CREATE TABLE tokens_baseline (LIKE tokens INCLUDING ALL)');
  await pool.query('INSERT INTO tokens_baseline SELECT * FROM tokens ORDER BY ctid');
  for (const table of ['tokens', 'tokens_baseline']) {
    // No autovacuum in the middle of a measurement; both tables are treated alike.
    await pool.query(`ALTER TABLE ${table} SET (autovacuum_enabled = false)`);
    await pool.query(`VACUUM (ANALYZE) ${table}`);
  }
  // jtis probed during the measurements: live revocations (answer true) and live and expired rows.
  const { rows } = await pool.query<{ jti: string }>(`SELECT jti FROM tokens TABLESAMPLE SYSTEM (1) LIMIT 20000`);
  return rows.map((row) => row.jti);
}

interface Phase {
  totalMs: number;
  statementsMs: number[];
  deleted: number;
  checks: number[];
}

/**
 * Runs `work` while `jtiRevoked` is called concurrently. With BENCH_CHECK_RATE (default
 * 1000/s) calls are sent open-loop at that rate and each is timed from when it was due,
 * so a stalled pool shows in the latency (no coordinated omission); with
 * BENCH_CHECK_RATE=0, BENCH_CHECKERS loops call back to back instead (saturating load).
 */
async function measure(
  database: BenchDatabase,
  table: string,
  tokens: TokenService,
  jtis: string[],
  work: () => Promise<{ deleted: number; statementsMs: number[] }>,
): Promise<Phase> {
  const admin = database.pool(1);
  await admin.query(`SELECT count(*) FROM ${table}`); // the same warm-up for both
  await admin.query('CHECKPOINT');
  const checks: number[] = [];
  let done = false;
  let recording = false;
  const call = async (i: number, due: number) => {
    await tokens.jtiRevoked(jtis[i % jtis.length]);
    if (recording) checks.push(performance.now() - due);
  };
  let load: Promise<unknown>;
  if (CHECK_RATE > 0) {
    load = (async () => {
      const pending: Array<Promise<void>> = [];
      const start = performance.now();
      for (let i = 0; !done;) {
        const now = performance.now();
        for (; start + (i * 1000) / CHECK_RATE <= now; i++) pending.push(call(i, start + (i * 1000) / CHECK_RATE));
        await new Promise((resolve) => setTimeout(resolve, 1));
      }
      await Promise.all(pending);
    })();
  } else {
    load = Promise.all(
      Array.from({ length: CHECKERS }, async (_, offset) => {
        for (let i = offset; !done; i += CHECKERS) await call(i, performance.now());
      }),
    );
  }
  await new Promise((resolve) => setTimeout(resolve, 500)); // load warmed up
  recording = true;
  const started = performance.now();
  const { deleted, statementsMs } = await work();
  const totalMs = performance.now() - started;
  recording = false;
  done = true;
  await load;
  return { totalMs, statementsMs, deleted, checks };
}

async function main(): Promise<void> {
  const database = await openBenchDatabase();
  const apps: INestApplicationContext[] = [];
  try {
    const app = await NestFactory.createApplicationContext(appModule(database.url, Token, true), { logger: ['error', 'warn'] });
    apps.push(app);
    console.log(`filling tokens and tokens_baseline with ${ROWS} expired + ${ROWS} live rows each ...`);
    const fillStarted = performance.now();
    const jtis = await fill(database);
    console.log(`filled in ${((performance.now() - fillStarted) / 1000).toFixed(1)} s`);
    const baselineApp = await NestFactory.createApplicationContext(appModule(database.url, BaselineToken, false), {
      logger: ['error', 'warn'],
    });
    apps.push(baselineApp);

    const raw = database.pool(1);
    const baseline = await measure(database, 'tokens_baseline', baselineApp.get(TokenService), jtis, async () => {
      const started = performance.now();
      const { rowCount } = await raw.query('DELETE FROM tokens_baseline WHERE expires_at < now()');
      return { deleted: rowCount ?? 0, statementsMs: [performance.now() - started] };
    });

    // Time every batch statement the expunger sends.
    const store = app.get(TokenStore);
    const execute = store.execute.bind(store);
    const batchMs: number[] = [];
    store.execute = async (statement, values, manager) => {
      const started = performance.now();
      try {
        return await execute(statement, values, manager);
      } finally {
        if (statement.name.startsWith('ntr_expunge_')) batchMs.push(performance.now() - started);
      }
    };
    const expunger = app.get(ExpungerService);
    const ours = await measure(database, 'tokens', app.get(TokenService), jtis, async () => {
      const result = await expunger.run();
      if (result.skipped) throw new Error('the expunger skipped: something else holds its lease');
      return { deleted: result.deleted, statementsMs: batchMs };
    });

    const { rows: left } = await raw.query<{ ours: number; theirs: number }>(
      `SELECT (SELECT count(*) FROM tokens WHERE jti <> $1)::int AS ours, (SELECT count(*) FROM tokens_baseline)::int AS theirs`,
      [EXPUNGE_RECORD_JTI],
    ); // the run's own record is no token row
    if (ours.deleted !== ROWS || baseline.deleted !== ROWS || left[0].ours !== ROWS || left[0].theirs !== ROWS) {
      throw new Error(
        `wrong counts: expunger deleted ${ours.deleted}, raw DELETE ${baseline.deleted}, left ${left[0].ours}/${left[0].theirs}`,
      );
    }

    console.log(await describeMachine(database));
    console.log(
      `rows: ${ROWS} expired + ${ROWS} live per table; batch size ${expunger.options.expunge.batchSize}; jtiRevoked load: ${CHECK_RATE > 0 ? `${CHECK_RATE}/s open loop` : `${CHECKERS} back-to-back loops`}`,
    );
    const row = (name: string, phase: Phase) => ({
      run: name,
      'total ms': phase.totalMs,
      deleted: phase.deleted,
      statements: phase.statementsMs.length,
      'longest stmt ms': Math.max(...phase.statementsMs),
      'jtiRevoked calls': phase.checks.length,
      'jtiRevoked p50 ms': percentile(phase.checks, 50),
      'jtiRevoked p99 ms': percentile(phase.checks, 99),
    });
    printTable([row('raw DELETE', baseline), row('ExpungerService.run()', ours)]);
    const ratio = ours.totalMs / baseline.totalMs;
    const longest = Math.max(...ours.statementsMs);
    console.log(
      `ratio run()/raw: ${ratio.toFixed(2)} (goal <= 1.2: ${ratio <= 1.2 ? 'met' : 'MISSED'}); longest expunger statement ${longest.toFixed(1)} ms (goal < 1000: ${longest < 1000 ? 'met' : 'MISSED'})`,
    );
  } finally {
    for (const app of apps.reverse()) await app.close().catch(() => undefined);
    await database.close();
  }
}

runBench(main);
