/**
 * Revoked-check benchmark: `TokenService.jtiRevoked` and `TokenService.tokenRevoked`
 * (from a real Nest application context, TypeORM pool of BENCH_POOL connections) against
 * a raw `pg` pool of the same size sending the equivalent prepared primary-key SELECT,
 * side by side in one run, at concurrency 1 and BENCH_CONCURRENCY.
 *
 *   npm run bench:check
 *
 * `tokenRevoked` also verifies the JWT (CPU), which a bare SELECT does not pay for, so it
 * is compared with a raw "jose jwtVerify + prepared SELECT" baseline as well; and because
 * it also honours log-out-everywhere (the subject's marker row), with a raw "jwtVerify +
 * SELECT of both keys" too. With `revocationCache` on, `tokenRevoked` and `jtiRevoked` run
 * over a working set of 10,000 live tokens, which the cache holds after the warm-up.
 * `RevokedTokenGuard.canActivate` runs over the same live tokens, with and without the cache,
 * once recording its metrics into an OpenTelemetry SDK `MeterProvider` (with a reader, as in
 * production) and once with none registered (the API's no-op meter). See bench/README.md.
 *
 * Environment: DATABASE_URL (else an embedded PostgreSQL), BENCH_ROWS (default
 * 1,000,000, 10% revoked), BENCH_POOL (default 32), BENCH_CONCURRENCY (default 32),
 * BENCH_SECONDS (per window, default 2), BENCH_ROUNDS (windows per variant, default 6;
 * every round runs each variant once, in alternating order, and ratios are the median of
 * the per-round ratios, so that bursts of load on a shared machine hit both sides alike),
 * BENCH_ONLY (a regular expression: time only the variants it matches, for profiling).
 */
import 'reflect-metadata';
import { NestFactory, Reflector } from '@nestjs/core';
import { metrics } from '@opentelemetry/api';
import { AggregationTemporality, InMemoryMetricExporter, MeterProvider, PeriodicExportingMetricReader } from '@opentelemetry/sdk-metrics';
import { jwtVerify } from 'jose';
import type pg from 'pg';
import { DataSource } from 'typeorm';
import { RevocationCache, RevokedTokenGuard, TokenService } from '../lib/index.js';
import { ExpiredTokenDeleter } from '../lib/expunger/expired-token.deleter.js';
import { TokenCodec } from '../lib/jwt/token-codec.js';
import { TokenResourceMetrics } from '../lib/observability/token-resource-metrics.js';
import type { ResolvedTokenResourceOptions } from '../lib/options/resolved-options.js';
import { OutageLog } from '../lib/outage-log.js';
import {
  LOG_OUT_EVERYWHERE_JTI_PREFIX,
  LOG_OUT_EVERYWHERE_PURPOSE,
  TOKEN_RESOURCE_OPTIONS,
} from '../lib/token-resource.internal-constants.js';
import { TokenStore } from '../lib/token.store.js';
import { BENCH_SECRET, benchAppModule } from './support/bench-app.js';
import { describeMachine, openBenchDatabase, printTable, runBench } from './support/bench-kit.js';
import { guardCall } from './support/guard-call.js';
import { runInterleaved, type Variant } from './support/interleaved-rounds.js';

const ROWS = Number(process.env.BENCH_ROWS ?? 1_000_000);
const POOL = Number(process.env.BENCH_POOL ?? 32);
const CONCURRENCY = Number(process.env.BENCH_CONCURRENCY ?? 32);
const SECONDS = Number(process.env.BENCH_SECONDS ?? 2);
const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 6);
const PROBES = 20_000;
/** The working set of the cached variants: live tokens, half stored, half never stored. */
const LIVE = 10_000;
const SUBJECTS = 50_000;

/** Row `i` of the table: `jti` bench-i, every tenth a revocation; `i > ROWS` is never stored. */
const jtiOf = (i: number) => `bench-${i}`;
const subjectOf = (i: number) => `user-${i % SUBJECTS}`;

async function fill(pool: pg.Pool): Promise<void> {
  await pool.query(`
    INSERT INTO tokens (jti, subject, expires_at, purpose)
    SELECT 'bench-' || i, 'user-' || (i % ${SUBJECTS}), now() + interval '1 day' + i * interval '1 second',
           CASE WHEN i % 10 = 0 THEN 'revocation' ELSE 'user' END
      FROM generate_series(1, ${ROWS}) AS i`);
  // One subject in a hundred logged out everywhere a day ago: their marker rows are read
  // (and parsed) by tokenRevoked, but revoke none of the tokens signed now.
  await pool.query(`
    INSERT INTO tokens (jti, subject, expires_at, purpose, extra_data)
    SELECT '${LOG_OUT_EVERYWHERE_JTI_PREFIX}user-' || s, 'user-' || s, now() + interval '100 years', '${LOG_OUT_EVERYWHERE_PURPOSE}',
           jsonb_build_object('levels', jsonb_build_object(jsonb_build_array(NULL, '["revocation"]'::jsonb)::text, jsonb_build_object(
             'at', (extract(epoch from now() - interval '1 day') * 1000)::bigint, 'exceptRevokedUpTo', 0,
             'excludePurposes', '["revocation"]'::jsonb)))
      FROM generate_series(0, ${SUBJECTS - 1}, 100) AS s`);
  await pool.query('VACUUM (ANALYZE) tokens');
}

/** Probed rows: a quarter revoked, half stored and not revoked, a quarter never stored. */
function probeRows(): number[] {
  const rows: number[] = [];
  for (let k = 0; k < PROBES; k++) {
    const r = Math.floor(Math.random() * (ROWS / 10));
    switch (k % 4) {
      case 0:
        rows.push(r * 10 + 10);
        break; // revoked
      case 1:
        rows.push(r * 10 + 3);
        break; // stored
      case 2:
        rows.push(r * 10 + 7);
        break; // stored
      default:
        rows.push(ROWS + 1 + r); // never stored
    }
  }
  return rows;
}

async function main(): Promise<void> {
  const database = await openBenchDatabase();
  const app = await NestFactory.createApplicationContext(benchAppModule(database.url, { poolSize: POOL }), { logger: ['error', 'warn'] });
  try {
    const raw = database.pool(POOL);
    console.log(`filling tokens with ${ROWS} rows (10% revoked) ...`);
    const fillStarted = performance.now();
    await fill(raw);
    console.log(`filled in ${((performance.now() - fillStarted) / 1000).toFixed(1)} s`);

    const service = app.get(TokenService);
    const codec = app.get(TokenCodec);
    // The same library with revocationCache on. It is built over the application's own
    // store, so that both library variants share one pool: a second application would need
    // another BENCH_POOL connections, and PostgreSQL's default max_connections is 100.
    const options = app.get<ResolvedTokenResourceOptions>(TOKEN_RESOURCE_OPTIONS);
    const cacheOptions = {
      enabled: true,
      announce: true,
      maxStalenessMs: 1000,
      maxEntries: 100_000,
      // Longer than the run. With the default minute, the answers the warm-up filled together
      // age out together once a minute, and whichever window meets that moment re-reads all
      // 10,000 from the database: a tenfold drop in that one window. In an application each
      // answer is re-read once a minute as it is next used (here 0.3% of the checks).
      maxEntryAgeMs: 3_600_000,
      maxVerifiedTokens: 20_000,
    };
    const markerCache = new RevocationCache({ ...options, revocationCache: cacheOptions }, app.get(TokenStore), app.get(DataSource));
    markerCache.onApplicationBootstrap();
    // Its own codec, built as the module builds it with the cache on: it remembers verified tokens.
    const cachedCodec = new TokenCodec(options.jwt, cacheOptions.maxVerifiedTokens);
    const cachedService = new TokenService(options, cachedCodec, app.get(TokenStore), markerCache, app.get(ExpiredTokenDeleter));

    // The guard without an OpenTelemetry SDK (the API's no-op meter), then with one registered,
    // exporting every 10 s as a production SDK would; both load their meter as the module does.
    const withoutSdk = await TokenResourceMetrics.load();
    const exporter = new InMemoryMetricExporter(AggregationTemporality.CUMULATIVE);
    const meterProvider = new MeterProvider({
      readers: [new PeriodicExportingMetricReader({ exporter, exportIntervalMillis: 10_000 })],
    });
    metrics.setGlobalMeterProvider(meterProvider);
    const withSdk = await TokenResourceMetrics.load();
    const outageLog = new OutageLog();
    const guardOf = (tokenService: TokenService, recorder: TokenResourceMetrics) =>
      new RevokedTokenGuard(options, codec, tokenService, new Reflector(), outageLog, recorder);
    const guards = {
      plain: guardOf(service, withoutSdk),
      plainSdk: guardOf(service, withSdk),
      cached: guardOf(cachedService, withoutSdk),
      cachedSdk: guardOf(cachedService, withSdk),
      // Identical twins of the guards without an SDK: their ratio to the originals (A/A) is how
      // far two identical variants drift apart in one run, the floor of what a ratio resolves.
      plainTwin: guardOf(service, withoutSdk),
      cachedTwin: guardOf(cachedService, withoutSdk),
    };
    while (!markerCache.fresh) await new Promise((resolve) => setTimeout(resolve, 10));
    const rows = probeRows();
    const jtis = rows.map(jtiOf);
    const iat = Date.now() / 1000;
    const tokens = await Promise.all(rows.map((i) => codec.sign({ sub: subjectOf(i), jti: jtiOf(i), iat, exp: Math.floor(iat) + 86_400 })));
    const expected = rows.map((i) => i <= ROWS && i % 10 === 0);
    const live = rows.flatMap((_, k) => (expected[k] ? [] : [k])).slice(0, LIVE);
    const liveJtis = live.map((k) => jtis[k]);
    const liveTokens = live.map((k) => tokens[k]);

    // The baselines: what a hand-written check would send on a raw pool, the key imported once.
    const selectOne = { name: 'raw_jti_revoked', text: `SELECT 1 FROM tokens WHERE jti = $1 AND purpose = 'revocation'` };
    const selectBoth = { name: 'raw_token_state', text: `SELECT jti, purpose, expires_at, extra_data FROM tokens WHERE jti IN ($1, $2)` };
    const key = await crypto.subtle.importKey('raw', new TextEncoder().encode(BENCH_SECRET), { name: 'HMAC', hash: 'SHA-256' }, false, [
      'verify',
    ]);
    // Query configs are written out as literals: a spread (`{ ...selectOne, values }`) measured
    // 5-10% slower in pg and would flatter the library.
    const rawRevoked = async (jti: string) =>
      ((await raw.query({ name: selectOne.name, text: selectOne.text, values: [jti] })).rowCount ?? 0) > 0;
    const verify = async (token: string) => (await jwtVerify(token, key, { algorithms: ['HS256'] })).payload;

    // Every variant must give the right answers before it is timed.
    for (let k = 0; k < 400; k++) {
      const answers = [
        await rawRevoked(jtis[k]),
        await service.jtiRevoked(jtis[k]),
        await service.tokenRevoked(tokens[k]),
        await cachedService.tokenRevoked(tokens[k]),
        await cachedService.jtiRevoked(jtis[k]),
      ];
      if (answers.some((answer) => answer !== expected[k]))
        throw new Error(`wrong answer for ${jtis[k]}: ${answers.join(', ')} (expected ${expected[k]})`);
    }
    for (const guard of Object.values(guards)) {
      if (!(await guardCall(guard, liveTokens[0]))) throw new Error('the guard refused a live token');
    }

    // Round trips: the library checks a connection out of its pool for each statement it sends.
    const ormPool = app.get(DataSource).driver as unknown as { master: pg.Pool };
    let sent = 0;
    const count = () => {
      sent++;
    };
    ormPool.master.on('acquire', count);
    const roundTrips: string[] = [];
    for (const [name, call] of [
      ['jtiRevoked', (k: number) => service.jtiRevoked(jtis[k])],
      ['tokenRevoked', (k: number) => service.tokenRevoked(tokens[k])],
    ] as const) {
      sent = 0;
      for (let k = 0; k < 100; k++) await call(k);
      roundTrips.push(`${name} ${sent / 100}`);
    }
    ormPool.master.off('acquire', count);

    const at = (list: string[], i: number) => list[i % list.length];
    const variants: Variant[] = [
      { name: 'raw pg: prepared PK SELECT', call: (i) => rawRevoked(at(jtis, i)) },
      { name: 'TokenService.jtiRevoked', call: (i) => service.jtiRevoked(at(jtis, i)) },
      { name: 'raw: jose verify + PK SELECT', call: async (i) => rawRevoked((await verify(at(tokens, i))).jti as string) },
      {
        name: 'raw: jose verify + SELECT own row & marker',
        call: async (i) => {
          const claims = await verify(at(tokens, i));
          return raw.query({
            name: selectBoth.name,
            text: selectBoth.text,
            values: [claims.jti, LOG_OUT_EVERYWHERE_JTI_PREFIX + claims.sub],
          });
        },
      },
      { name: 'TokenService.tokenRevoked', call: (i) => service.tokenRevoked(at(tokens, i)) },
      // The ceiling of a check answered from memory: the verification alone.
      { name: 'raw: jose verify only, 10k live', call: (i) => verify(at(liveTokens, i)) },
      { name: 'tokenRevoked, revocationCache on, 10k live', call: (i) => cachedService.tokenRevoked(at(liveTokens, i)) },
      { name: 'jtiRevoked, revocationCache on, 10k live', call: (i) => cachedService.jtiRevoked(at(liveJtis, i)) },
      { name: 'guard, no metrics SDK, 10k live', call: (i) => guardCall(guards.plain, at(liveTokens, i)) },
      { name: 'guard, metrics SDK, 10k live', call: (i) => guardCall(guards.plainSdk, at(liveTokens, i)) },
      { name: 'guard, revocationCache on, no metrics SDK, 10k live', call: (i) => guardCall(guards.cached, at(liveTokens, i)) },
      { name: 'guard, revocationCache on, metrics SDK, 10k live', call: (i) => guardCall(guards.cachedSdk, at(liveTokens, i)) },
      { name: 'guard, no metrics SDK (A/A twin), 10k live', call: (i) => guardCall(guards.plainTwin, at(liveTokens, i)) },
      {
        name: 'guard, revocationCache on, no metrics SDK (A/A twin), 10k live',
        call: (i) => guardCall(guards.cachedTwin, at(liveTokens, i)),
      },
    ];

    // BENCH_ONLY (a regular expression) times only the matching variants, for profiling.
    if (process.env.BENCH_ONLY) {
      const only = new RegExp(process.env.BENCH_ONLY);
      variants.splice(0, variants.length, ...variants.filter((variant) => only.test(variant.name)));
    }
    // A loaded machine can hold the cache's heartbeats back past its bound: it then answers
    // nothing, and the cached variants measure the database. Say how often that was.
    let samples = 0;
    let freshSamples = 0;
    const sampler = setInterval(() => {
      samples++;
      if (markerCache.fresh) freshSamples++;
    }, 50);
    const results = await runInterleaved(variants, [1, CONCURRENCY], ROUNDS, SECONDS);
    clearInterval(sampler);

    // Whether PostgreSQL kept a cached generic plan for the library's statements (one session's counts).
    const { rows: plans } = await ormPool.master.query<{ name: string; generic_plans: string; custom_plans: string }>(
      `SELECT name, generic_plans, custom_plans FROM pg_prepared_statements WHERE name LIKE 'ntr_%' ORDER BY name`,
    );

    console.log(await describeMachine(database));
    console.log(
      `rows: ${ROWS} (10% revoked, ${SUBJECTS / 100} log-out markers); probes: 25% revoked, 50% stored, 25% absent; pools: ${POOL} connections each; ${ROUNDS} x ${SECONDS} s per variant and concurrency, interleaved`,
    );
    console.log(
      `connections open: library pool ${ormPool.master.totalCount} (max ${(ormPool.master as unknown as { options: { max: number } }).options.max}), raw pool ${raw.totalCount} (max ${(raw as unknown as { options: { max: number } }).options.max})`,
    );
    console.log(
      `round trips per call: ${roundTrips.join(', ')}; plans on one library connection: ${plans.map((p) => `${p.name} generic ${p.generic_plans} / custom ${p.custom_plans}`).join('; ')}`,
    );
    printTable(results.tableRows(variants, [1, CONCURRENCY]));
    // [label, ours, theirs, goal on the median; none: informational]
    const ratios: Array<[string, string, string, number | undefined]> = [
      ['jtiRevoked', 'TokenService.jtiRevoked', 'raw pg: prepared PK SELECT', 0.8],
      ['tokenRevoked vs verify+SELECT (fair)', 'TokenService.tokenRevoked', 'raw: jose verify + PK SELECT', 0.8],
      ['tokenRevoked vs verify+SELECT both keys', 'TokenService.tokenRevoked', 'raw: jose verify + SELECT own row & marker', 0.8],
      [
        'tokenRevoked, revocation cache, vs verify+SELECT (fair)',
        'tokenRevoked, revocationCache on, 10k live',
        'raw: jose verify + PK SELECT',
        2,
      ],
      [
        'tokenRevoked, revocation cache, vs jose verify only',
        'tokenRevoked, revocationCache on, 10k live',
        'raw: jose verify only, 10k live',
        undefined,
      ],
      ['jtiRevoked, revocation cache, vs bare SELECT', 'jtiRevoked, revocationCache on, 10k live', 'raw pg: prepared PK SELECT', 10],
      ['tokenRevoked vs bare SELECT (no verify)', 'TokenService.tokenRevoked', 'raw pg: prepared PK SELECT', undefined],
      ['guard, metrics SDK vs none', 'guard, metrics SDK, 10k live', 'guard, no metrics SDK, 10k live', 0.95],
      [
        'guard, revocation cache, metrics SDK vs none',
        'guard, revocationCache on, metrics SDK, 10k live',
        'guard, revocationCache on, no metrics SDK, 10k live',
        0.95,
      ],
      ['guard, A/A control: no SDK vs no SDK', 'guard, no metrics SDK (A/A twin), 10k live', 'guard, no metrics SDK, 10k live', undefined],
      [
        'guard, revocation cache, A/A control: no SDK vs no SDK',
        'guard, revocationCache on, no metrics SDK (A/A twin), 10k live',
        'guard, revocationCache on, no metrics SDK, 10k live',
        undefined,
      ],
    ];
    for (const [label, ours, theirs, goal] of ratios) {
      if (!results.has(ours, 1) || !results.has(theirs, 1)) continue;
      const parts = [1, CONCURRENCY].map((c) => results.describeRatio(ours, theirs, c));
      const met = [1, CONCURRENCY].every((c) => results.medianRatio(ours, theirs, c) >= goal!);
      const verdict = goal === undefined ? '(informational)' : `(goal >= ${goal}x on the median: ${met ? 'met' : 'MISSED'})`;
      console.log(`ratio ${label}: ${parts.join(', ')} ${verdict}`);
    }
    // Throughput on a loaded 2-core machine moves by more than the metrics cost, so the cost is
    // also given as client CPU per check (which other load hardly moves) and as the SDK's own
    // price of one recorded check, timed in a tight loop.
    for (const [label, ours, theirs] of [
      ['guard', 'guard, metrics SDK, 10k live', 'guard, no metrics SDK, 10k live'],
      [
        'guard, revocation cache',
        'guard, revocationCache on, metrics SDK, 10k live',
        'guard, revocationCache on, no metrics SDK, 10k live',
      ],
    ]) {
      if (!results.has(ours, 1) || !results.has(theirs, 1)) continue;
      const parts = [1, CONCURRENCY].map((c) => {
        const [withSdkCpu, withoutCpu] = [ours, theirs].map((name) => {
          const merged = results.merged(name, c);
          return merged.cpuMicros / merged.ops;
        });
        return `c=${c}: ${withoutCpu.toFixed(1)} -> ${withSdkCpu.toFixed(1)} µs (${(withoutCpu / withSdkCpu).toFixed(2)}x)`;
      });
      console.log(`node CPU per check, ${label}, without -> with metrics SDK: ${parts.join(', ')}`);
    }
    console.log(
      `revocation cache: ${markerCache.size} answers held at the end (tokens' and subjects'), ${cachedCodec.verifiedTokenCount} verified tokens remembered; answering in ${Math.round((100 * freshSamples) / samples)}% of 50 ms samples while timed`,
    );
    await meterProvider.forceFlush();
    const exported = exporter.getMetrics().at(-1);
    const checks = exported?.scopeMetrics
      .find((scope) => scope.scope.name === 'nestjs-token-resource')
      ?.metrics.find((metric) => metric.descriptor.name === 'token_resource.checks');
    const admitted = checks?.dataPoints.reduce((sum, point) => sum + (point.value as number), 0) ?? 0;
    console.log(`metrics SDK: token_resource.checks recorded ${admitted} checks (the SDK guards' calls)`);
    // Last: the tight loop holds the event loop, which the revocation cache's heartbeats need.
    const recordCost = (recorder: TokenResourceMetrics) => {
      const n = 1_000_000;
      const started = performance.now();
      for (let i = 0; i < n; i++) recorder.checked('admitted', started);
      return ((performance.now() - started) * 1e6) / n;
    };
    recordCost(withSdk); // warm-up
    console.log(
      `one check's metrics, in a tight loop: ${recordCost(withoutSdk).toFixed(0)} ns without an SDK, ${recordCost(withSdk).toFixed(0)} ns with the SDK MeterProvider`,
    );

    metrics.disable();
    await meterProvider.shutdown();
    await markerCache.onModuleDestroy();
  } finally {
    await app.close().catch(() => undefined);
    await database.close();
  }
}

runBench(main);
