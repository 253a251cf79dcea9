/**
 * Log-out-everywhere benchmark: `LogOutEverywhereService.logOutEverywhere()` (in a real
 * Nest application context, one CTE that also upserts the subject's marker) against the
 * equivalent raw `UPDATE ... WHERE subject = $1` sent through a raw `pg` pool, in the
 * same run, on two identical subjects of one table.
 *
 *   npm run bench:logout
 *
 * Environment: DATABASE_URL (else an embedded PostgreSQL), BENCH_ROWS (rows in the
 * table, default 1,000,000), BENCH_SUBJECT_TOKENS (tokens of each measured subject,
 * default 10,000), BENCH_ROUNDS (measured rounds, default 9).
 */
import 'reflect-metadata';
import type { INestApplicationContext } from '@nestjs/common';
import { NestFactory } from '@nestjs/core';
import { LogOutEverywhereService } from '../lib/index.js';
import type { ResolvedTokenResourceOptions } from '../lib/options/resolved-options.js';
import { TOKEN_RESOURCE_OPTIONS } from '../lib/token-resource.internal-constants.js';
import { benchAppModule } from './support/bench-app.js';
import { describeMachine, openBenchDatabase, percentile, printTable, runBench } from './support/bench-kit.js';

const ROWS = Number(process.env.BENCH_ROWS ?? 1_000_000);
const SUBJECT_TOKENS = Number(process.env.BENCH_SUBJECT_TOKENS ?? 10_000);
const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 9);
const OURS = 'bench-subject-library';
const RAW = 'bench-subject-raw';

/** What the raw baseline sends: the same filter as the library's defaults, without the marker. */
const RAW_UPDATE = `
  UPDATE tokens SET purpose = 'revocation', updated_at = now()
   WHERE subject = $1 AND purpose <> 'revocation' AND purpose <> 'log_out_everywhere'
     AND purpose <> ALL ($2::text[])`;

async function main(): Promise<void> {
  const database = await openBenchDatabase();
  let app: INestApplicationContext | undefined;
  try {
    app = await NestFactory.createApplicationContext(benchAppModule(database.url), { logger: ['error', 'warn'] });
    const logOut = app.get(LogOutEverywhereService);
    const raw = database.pool(1);
    const admin = database.pool(1);

    // The two measured subjects are interleaved through the heap in the same pattern
    // (every k-th row), with the same mix of purposes; the other rows belong to 100,000
    // other subjects, and one in ten of all rows is already a revocation.
    const stride = Math.floor(ROWS / SUBJECT_TOKENS);
    console.log(`filling tokens with ${ROWS} rows (${SUBJECT_TOKENS} each for two measured subjects) ...`);
    const fillStarted = performance.now();
    await admin.query(`
      INSERT INTO tokens (jti, subject, expires_at, purpose, extra_data)
      SELECT md5(i::text),
             CASE WHEN i % ${stride} = 0 AND i / ${stride} <= ${SUBJECT_TOKENS} THEN '${OURS}'
                  WHEN i % ${stride} = ${Math.floor(stride / 2)} AND i / ${stride} < ${SUBJECT_TOKENS} THEN '${RAW}'
                  ELSE 'user-' || (i % 100000) END,
             now() + interval '1 hour' + (i::float8 / ${ROWS}) * interval '30 days',
             CASE WHEN (i / ${stride}) % 10 = 9 THEN 'revocation' WHEN (i / ${stride}) % 10 = 1 THEN 'confirm'
                  WHEN (i / ${stride}) % 10 = 2 THEN 'remember_me' ELSE 'user' END,
             CASE WHEN (i / ${stride}) % 10 = 1 THEN jsonb_build_object('email', 'user' || i || '@example.com') END
        FROM generate_series(1, ${ROWS}) AS i`);
    await admin.query('CREATE TABLE original_purposes AS SELECT jti, purpose FROM tokens WHERE subject IN ($1, $2)', [OURS, RAW]);
    await admin.query('ALTER TABLE original_purposes ADD PRIMARY KEY (jti)');
    await admin.query('ALTER TABLE tokens SET (autovacuum_enabled = false)');
    await admin.query('VACUUM (ANALYZE) tokens');
    console.log(`filled in ${((performance.now() - fillStarted) / 1000).toFixed(1)} s`);
    const { rows: counts } = await admin.query<{ subject: string; total: number; live: number }>(
      `
      SELECT subject, count(*)::int AS total, count(*) FILTER (WHERE purpose <> 'revocation')::int AS live
        FROM tokens WHERE subject IN ($1, $2) GROUP BY subject ORDER BY subject`,
      [OURS, RAW],
    );
    const expected = Object.fromEntries(counts.map((row) => [row.subject, row.live]));
    if (counts.length !== 2 || counts[0].total !== counts[1].total || counts[0].live !== counts[1].live) {
      throw new Error(`the two subjects differ: ${JSON.stringify(counts)}`);
    }

    /** Puts both subjects back as they were, removes the marker, and vacuums alike. */
    const reset = async () => {
      await admin.query(`UPDATE tokens t SET purpose = o.purpose FROM original_purposes o WHERE t.jti = o.jti AND t.purpose <> o.purpose`);
      await admin.query(`DELETE FROM tokens WHERE purpose = 'log_out_everywhere'`);
      await admin.query('VACUUM tokens');
    };
    const runOurs = async () => {
      const started = performance.now();
      const revoked = await logOut.logOutEverywhere(OURS);
      return { ms: performance.now() - started, revoked };
    };
    const runRaw = async () => {
      const started = performance.now();
      const { rowCount } = await raw.query({ name: 'raw_log_out', text: RAW_UPDATE, values: [RAW, ['revocation']] });
      return { ms: performance.now() - started, revoked: rowCount ?? 0 };
    };

    // One unmeasured round each: connections made, statements prepared, caches warm.
    await runOurs();
    await runRaw();
    const ours: number[] = [];
    const theirs: number[] = [];
    for (let round = 0; round < ROUNDS; round += 1) {
      await reset();
      // Alternate which goes first, so neither always runs on the warmer cache.
      const order = round % 2 === 0 ? [runOurs, runRaw] : [runRaw, runOurs];
      for (const run of order) {
        const { ms, revoked } = await run();
        const subject = run === runOurs ? OURS : RAW;
        if (revoked !== expected[subject]) throw new Error(`${subject}: revoked ${revoked}, expected ${expected[subject]}`);
        (run === runOurs ? ours : theirs).push(ms);
      }
    }

    // The plans, for the library's statement with the values it sends, and for the baseline.
    const { rows: indexes } = await admin.query<{ indexname: string }>(
      `SELECT indexname FROM pg_indexes WHERE tablename = 'tokens' AND indexdef LIKE '%(subject)%'`,
    );
    const subjectIndex = indexes[0]?.indexname;
    const statementText = (logOut as unknown as { logOutStatement: { text: string } }).logOutStatement.text;
    const { logOutEverywhere, jwt } = app.get<ResolvedTokenResourceOptions>(TOKEN_RESOURCE_OPTIONS);
    // The values `logOutEverywhere(OURS)` sends (see LogOutEverywhereService.run).
    const values = [
      OURS,
      `log-out-everywhere:${OURS}`,
      null,
      ['revocation'],
      null,
      Date.now(),
      logOutEverywhere.markerLifetimeSeconds,
      true,
      jwt.clockToleranceSeconds,
      null,
    ];
    const planOf = async (text: string, params: unknown[]) =>
      (await admin.query<{ 'QUERY PLAN': string }>(`EXPLAIN (COSTS OFF) ${text}`, params)).rows.map((row) => row['QUERY PLAN']);
    const ourPlan = await planOf(statementText, values);
    const rawPlan = await planOf(RAW_UPDATE, [RAW, ['revocation']]);

    console.log(await describeMachine(database));
    console.log(
      `table: ${ROWS} rows; each measured subject: ${counts[0].total} tokens, ${counts[0].live} revoked per log-out (the rest already revocations); ${ROUNDS} rounds, alternating order, table reset and vacuumed before each`,
    );
    const row = (name: string, ms: number[]) => ({
      run: name,
      'median ms': percentile(ms, 50),
      'min ms': Math.min(...ms),
      'max ms': Math.max(...ms),
      'mean ms': ms.reduce((a, b) => a + b, 0) / ms.length,
    });
    printTable([row('raw UPDATE (pg pool)', theirs), row('logOutEverywhere()', ours)]);
    const ratio = percentile(ours, 50) / percentile(theirs, 50);
    console.log(`ratio logOutEverywhere/raw (medians): ${ratio.toFixed(2)} (goal <= 1.2: ${ratio <= 1.2 ? 'met' : 'MISSED'})`);
    console.log("plan of logOutEverywhere's statement:");
    for (const line of ourPlan) console.log(`  ${line}`);
    console.log('plan of the raw UPDATE:');
    for (const line of rawPlan) console.log(`  ${line}`);
    const usesIndex = (plan: string[]) => subjectIndex !== undefined && plan.some((line) => line.includes(subjectIndex));
    console.log(
      `subject index ${subjectIndex}: used by logOutEverywhere: ${usesIndex(ourPlan) ? 'yes' : 'NO'}; by the raw UPDATE: ${usesIndex(rawPlan) ? 'yes' : 'NO'}`,
    );
  } finally {
    await app?.close().catch(() => undefined);
    await database.close();
  }
}

runBench(main);
