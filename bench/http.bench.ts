/**
 * Guarded HTTP benchmark: one Nest application (on Express, then on Fastify) with two routes, `GET /jose`
 * behind a guard that only verifies the bearer JWT with `jose`, and `GET /guarded` behind
 * `RevokedTokenGuard` (verify + one store round trip). Each is loaded for the same time
 * by autocannon in a separate process; requests/s and p99 of both and their ratio. Then
 * again with `storeAllTokens` and `requireTokenPresenceForAuthentication` (every token sent
 * is a stored one), and with `revocationCache` on (every token sent is then answered from
 * the cache after the warm-up), with and without remembered verifications.
 *
 *   npm run bench:http
 *
 * Environment: DATABASE_URL (else an embedded PostgreSQL), BENCH_ROWS (default 1,000,000,
 * 10% revoked), BENCH_POOL (TypeORM pool size, default 32), BENCH_CONNECTIONS (default 32),
 * BENCH_SECONDS (per window, default 10), BENCH_ROUNDS (windows per route, alternating,
 * default 1), BENCH_ADAPTERS (comma-separated, default `express,fastify`), BENCH_SCENARIOS (a
 * regular expression: only the scenarios whose name it matches).
 */
import 'reflect-metadata';
import { fork } from 'node:child_process';
import type { AddressInfo } from 'node:net';
import { fileURLToPath } from 'node:url';
import {
  Controller,
  Get,
  Injectable,
  UnauthorizedException,
  UseGuards,
  type CanActivate,
  type ExecutionContext,
  type INestApplication,
} from '@nestjs/common';
import { NestFactory } from '@nestjs/core';
import { FastifyAdapter } from '@nestjs/platform-fastify';
import { jwtVerify } from 'jose';
import type pg from 'pg';
import { DataSource } from 'typeorm';
import { RevocationCache, RevokedTokenGuard, type TokenResourceModuleOptions } from '../lib/index.js';
import { TokenCodec } from '../lib/jwt/token-codec.js';
import type { LoadJob, LoadReport } from './support/autocannon-loader.js';
import { BENCH_SECRET, benchAppModule } from './support/bench-app.js';
import { describeMachine, openBenchDatabase, printTable, runBench } from './support/bench-kit.js';

const ROWS = Number(process.env.BENCH_ROWS ?? 1_000_000);
const POOL = Number(process.env.BENCH_POOL ?? 32);
const CONNECTIONS = Number(process.env.BENCH_CONNECTIONS ?? 32);
const SECONDS = Number(process.env.BENCH_SECONDS ?? 10);
const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 1);
const ADAPTERS = (process.env.BENCH_ADAPTERS ?? 'express,fastify').split(',');
const ONLY_SCENARIOS = new RegExp(process.env.BENCH_SCENARIOS ?? '');
const TOKENS = 5_000;
const BEARER = /^Bearer[ \t]+(\S+)[ \t]*$/i;

/** The baseline: verifies the bearer JWT with jose (key imported once) and nothing else. */
@Injectable()
class JoseOnlyGuard implements CanActivate {
  private static readonly key = crypto.subtle.importKey(
    'raw',
    new TextEncoder().encode(BENCH_SECRET),
    { name: 'HMAC', hash: 'SHA-256' },
    false,
    ['verify'],
  );

  async canActivate(context: ExecutionContext): Promise<boolean> {
    const request = context.switchToHttp().getRequest();
    const token = BEARER.exec(request.headers.authorization ?? '')?.[1];
    if (!token) throw new UnauthorizedException();
    try {
      request.tokenClaims = (await jwtVerify(token, await JoseOnlyGuard.key, { algorithms: ['HS256'] })).payload;
    } catch {
      throw new UnauthorizedException();
    }
    return true;
  }
}

@Controller()
class BenchController {
  @Get('jose')
  @UseGuards(JoseOnlyGuard)
  jose(): { ok: true } {
    return { ok: true };
  }

  @Get('guarded')
  @UseGuards(RevokedTokenGuard)
  guarded(): { ok: true } {
    return { ok: true };
  }
}

async function fill(pool: pg.Pool): Promise<void> {
  await pool.query(`
    INSERT INTO tokens (jti, subject, expires_at, purpose)
    SELECT 'bench-' || i, 'user-' || (i % 50000), now() + interval '1 day',
           CASE WHEN i % 10 = 0 THEN 'revocation' ELSE 'user' END
      FROM generate_series(1, ${ROWS}) AS i`);
  await pool.query('VACUUM (ANALYZE) tokens');
}

/** Runs autocannon in a child process against `url` and returns its figures. */
function load(url: string, tokens: string[], durationSeconds: number): Promise<LoadReport> {
  return new Promise((resolve, reject) => {
    const child = fork(fileURLToPath(new URL('./support/autocannon-loader.js', import.meta.url)), {
      stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
    });
    let report: LoadReport | undefined;
    child.once('message', (message) => {
      report = message as LoadReport;
    });
    child.once('error', reject);
    child.once('exit', (code) => (report ? resolve(report) : reject(new Error(`the loader exited with ${code} and no report`))));
    const job: LoadJob = { url, tokens, connections: CONNECTIONS, durationSeconds };
    child.send(job);
  });
}

/** Sends one request per token, `CONNECTIONS` at a time, and fails unless every answer is 2xx. */
async function sendEach(url: string, tokens: string[]): Promise<void> {
  let next = 0;
  await Promise.all(
    Array.from({ length: CONNECTIONS }, async () => {
      while (next < tokens.length) {
        const response = await fetch(url, { headers: { authorization: `Bearer ${tokens[next++]}` } });
        await response.arrayBuffer();
        if (!response.ok) throw new Error(`${url}: ${response.status} in the warm-up`);
      }
    }),
  );
}

interface Scenario {
  name: string;
  options: Partial<TokenResourceModuleOptions>;
  /** Row numbers whose jti the tokens carry (none revoked, so every request is admitted). */
  rows: () => number[];
  /** The least ratio of the guarded route's req/s to the jose-only route's; none: informational. */
  goal?: number;
}

const unrevoked = (count: number, stored: boolean) =>
  Array.from({ length: count }, (_, k) => {
    const r = Math.floor(Math.random() * (ROWS / 10)) * 10;
    // Stored rows r+1..r+9 are not revoked; rows past ROWS were never stored.
    return stored || k % 2 === 0 ? r + 1 + (k % 9) : ROWS + 1 + r;
  });

const SCENARIOS: Scenario[] = [
  { name: 'default options', options: {}, rows: () => unrevoked(TOKENS, false), goal: 0.6 },
  {
    name: 'requireTokenPresenceForAuthentication',
    options: { storeAllTokens: true, requireTokenPresenceForAuthentication: true },
    rows: () => unrevoked(TOKENS, true),
    goal: 0.6,
  },
  { name: 'revocationCache', options: { revocationCache: { enabled: true } }, rows: () => unrevoked(TOKENS, false), goal: 0.9 },
  // The guard's own cost beside the verification: both routes verify every request in full.
  {
    name: 'revocationCache, maxVerifiedTokens: 0',
    options: { revocationCache: { enabled: true, maxVerifiedTokens: 0 } },
    rows: () => unrevoked(TOKENS, false),
  },
];

async function main(): Promise<void> {
  const database = await openBenchDatabase();
  const table: Array<Record<string, string | number>> = [];
  const ratios: string[] = [];
  try {
    console.log(`filling tokens with ${ROWS} rows (10% revoked) ...`);
    let filled = false;
    for (const adapter of ADAPTERS) {
      for (const scenario of SCENARIOS.filter(({ name }) => ONLY_SCENARIOS.test(name))) {
        const module = benchAppModule(database.url, {
          poolSize: POOL,
          options: scenario.options,
          controllers: [BenchController],
          providers: [JoseOnlyGuard],
        });
        const app: INestApplication =
          adapter === 'fastify'
            ? await NestFactory.create(module, new FastifyAdapter(), { logger: ['error', 'warn'] })
            : await NestFactory.create(module, { logger: ['error', 'warn'] });
        try {
          if (!filled) {
            await fill(database.pool(1));
            filled = true;
          }
          await app.listen(0, '127.0.0.1');
          // The cache answers only once its first poll has been answered.
          while (scenario.options.revocationCache?.enabled && !app.get(RevocationCache).fresh)
            await new Promise((resolve) => setTimeout(resolve, 10));
          const { port } = app.getHttpServer().address() as AddressInfo;
          const codec = app.get(TokenCodec);
          const iat = Date.now() / 1000;
          const tokens = await Promise.all(
            scenario.rows().map((i) => codec.sign({ sub: `user-${i % 50000}`, jti: `bench-${i}`, iat, exp: Math.floor(iat) + 86_400 })),
          );
          const routes = ['jose', 'guarded'];
          for (const route of routes) {
            await load(`http://127.0.0.1:${port}/${route}`, tokens, 2); // warm-up
            // A slow machine may not get through every token in the warm-up: send each once, so
            // that with the cache every timed request is answered from it, as the scenario says.
            await sendEach(`http://127.0.0.1:${port}/${route}`, tokens);
          }
          const reports = new Map<string, LoadReport[]>(routes.map((route) => [route, []]));
          // What the guarded route cost the store: statements sent (each checks a connection out
          // of the library's pool) and, with the cache, how often it could answer at all.
          const libraryPool = (app.get(DataSource).driver as unknown as { master: pg.Pool }).master;
          let statements = 0;
          let samples = 0;
          let freshSamples = 0;
          const countStatement = () => statements++;
          for (let round = 0; round < ROUNDS; round++) {
            for (const route of round % 2 === 0 ? routes : [...routes].reverse()) {
              if (route === 'guarded') libraryPool.on('acquire', countStatement);
              const sampler =
                route === 'guarded' && scenario.options.revocationCache?.enabled
                  ? setInterval(() => {
                      samples++;
                      if (app.get(RevocationCache).fresh) freshSamples++;
                    }, 50)
                  : undefined;
              reports.get(route)!.push(await load(`http://127.0.0.1:${port}/${route}`, tokens, SECONDS));
              clearInterval(sampler);
              libraryPool.off('acquire', countStatement);
            }
          }
          const rate = (route: string) => {
            const list = reports.get(route)!;
            return list.reduce((sum, r) => sum + r.requests, 0) / list.reduce((sum, r) => sum + r.durationSeconds, 0);
          };
          for (const route of routes) {
            const list = reports.get(route)!;
            const failed = list.reduce((sum, r) => sum + r.non2xx + r.errors + r.timeouts, 0);
            if (failed > 0) throw new Error(`${scenario.name} /${route}: ${failed} requests were not answered 2xx`);
            table.push({
              adapter,
              options: scenario.name,
              route: route === 'jose' ? 'jose verify only' : 'RevokedTokenGuard',
              'req/s': Math.round(rate(route)),
              'p50 ms': Math.max(...list.map((r) => r.p50)),
              'p99 ms': Math.max(...list.map((r) => r.p99)),
            });
          }
          const ratio = rate('guarded') / rate('jose');
          const verdict =
            scenario.goal === undefined ? '(informational)' : `(goal >= ${scenario.goal}x: ${ratio >= scenario.goal ? 'met' : 'MISSED'})`;
          ratios.push(`ratio RevokedTokenGuard / jose-only (${adapter}, ${scenario.name}): ${ratio.toFixed(2)}x ${verdict}`);
          const guardedRequests = reports.get('guarded')!.reduce((sum, r) => sum + r.requests, 0);
          const fresh =
            samples === 0 ? '' : `; revocation cache answering in ${Math.round((100 * freshSamples) / samples)}% of 50 ms samples`;
          ratios.push(`  store statements per guarded request: ${(statements / guardedRequests).toFixed(3)}${fresh}`);
        } finally {
          await app.close().catch(() => undefined);
        }
      }
    }
    console.log(await describeMachine(database));
    console.log(
      `rows: ${ROWS} (10% revoked); ${TOKENS} distinct unrevoked tokens per scenario (default options: half stored, half never stored; presence: all stored); autocannon in a child process, ${CONNECTIONS} connections, ${ROUNDS} x ${SECONDS} s per route (alternating); TypeORM pool ${POOL}; p50/p99 are the worst window's`,
    );
    printTable(table);
    for (const line of ratios) console.log(line);
  } finally {
    await database.close();
  }
}

runBench(main);
