import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { chownSync, existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pg from 'pg';
import { freePort } from './free-port.js';

/** A real PgBouncer in front of the test server, in `transaction` pooling mode. */
export interface PgBouncer {
  port: number;
  /** The URL of `databaseUrl`'s database, through the pooler. */
  urlFor(databaseUrl: string): string;
  stop(): Promise<void>;
}

/** Where Debian's `pgbouncer` package installs the binary; `PGBOUNCER_BIN` overrides it. */
const BINARY_CANDIDATES = ['/usr/sbin/pgbouncer', '/usr/bin/pgbouncer', '/usr/local/bin/pgbouncer'];

function findBinary(): string {
  const fromEnv = process.env.PGBOUNCER_BIN;
  if (fromEnv) return fromEnv;
  const found = BINARY_CANDIDATES.find((path) => existsSync(path));
  if (found) return found;
  const which = spawnSync('which', ['pgbouncer'], { encoding: 'utf8' });
  if (which.status === 0 && which.stdout.trim()) return which.stdout.trim();
  throw new Error(
    'pgbouncer is not installed, and the transaction-pooler tests need a real one. Install it with ' +
      '`apt-get install pgbouncer` (Debian/Ubuntu; .ci/run does this), `brew install pgbouncer` (macOS), ' +
      'or point PGBOUNCER_BIN at the binary.',
  );
}

/**
 * PgBouncer and PostgreSQL refuse to run as root: as root, they run as the unprivileged
 * `postgres` OS user (`undefined` when not root).
 */
export function unprivilegedIds(): { uid: number; gid: number } | undefined {
  if (process.getuid?.() !== 0) return undefined;
  const uid = Number(spawnSync('id', ['-u', 'postgres'], { encoding: 'utf8' }).stdout.trim());
  const gid = Number(spawnSync('id', ['-g', 'postgres'], { encoding: 'utf8' }).stdout.trim());
  if (!Number.isInteger(uid) || uid <= 0) throw new Error('running as root, pgbouncer needs an OS user `postgres` to run as');
  return { uid, gid };
}

/**
 * Starts PgBouncer on a free port in front of the server of `upstreamUrl`, with
 * `pool_mode = transaction` and `default_pool_size` server connections per database, as
 * managed poolers run it. Every database of the server is reachable through it by name,
 * logged in as the upstream URL's user.
 */
export async function startPgBouncer(upstreamUrl: string, poolSize = 10): Promise<PgBouncer> {
  const binary = findBinary();
  const upstream = new URL(upstreamUrl);
  const port = await freePort();
  const dir = mkdtempSync(join(tmpdir(), 'ntr-pgbouncer-'));
  const ids = unprivilegedIds();
  const serverLogin = [
    `host=${upstream.hostname}`,
    `port=${upstream.port || 5432}`,
    `user=${decodeURIComponent(upstream.username || 'postgres')}`,
    upstream.password ? `password=${decodeURIComponent(upstream.password)}` : '',
  ]
    .filter(Boolean)
    .join(' ');
  const config = join(dir, 'pgbouncer.ini');
  writeFileSync(
    config,
    [
      '[databases]',
      `* = ${serverLogin}`,
      '[pgbouncer]',
      'listen_addr = 127.0.0.1',
      `listen_port = ${port}`,
      "unix_socket_dir = ''",
      'auth_type = any',
      'pool_mode = transaction',
      `default_pool_size = ${poolSize}`,
      'max_client_conn = 1000',
      'ignore_startup_parameters = extra_float_digits,options',
      'server_reset_query =',
      `logfile = ${join(dir, 'pgbouncer.log')}`,
      `pidfile = ${join(dir, 'pgbouncer.pid')}`,
      '',
    ].join('\n'),
  );
  if (ids) {
    chownSync(dir, ids.uid, ids.gid);
    chownSync(config, ids.uid, ids.gid);
  }
  const child: ChildProcess = spawn(binary, [config], { stdio: ['ignore', 'ignore', 'pipe'], ...ids });
  let stderr = '';
  child.stderr?.on('data', (chunk: Buffer) => {
    stderr += chunk.toString();
  });
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));

  const urlFor = (databaseUrl: string): string => {
    const url = new URL(databaseUrl);
    url.hostname = '127.0.0.1';
    url.port = String(port);
    return url.toString();
  };
  await waitUntilAccepting(urlFor(upstreamUrl), exited, () => stderr);
  return {
    port,
    urlFor,
    stop: async () => {
      if (child.exitCode === null) {
        child.kill('SIGINT');
        await exited;
      }
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

async function waitUntilAccepting(url: string, exited: Promise<number | null>, stderr: () => string): Promise<void> {
  let exitCode: number | null | undefined;
  void exited.then((code) => {
    exitCode = code;
  });
  const deadline = Date.now() + 10_000;
  for (;;) {
    if (exitCode !== undefined) throw new Error(`pgbouncer exited with code ${exitCode}: ${stderr()}`);
    const client = new pg.Client({ connectionString: url });
    try {
      await client.connect();
      await client.query('SELECT 1');
      await client.end();
      return;
    } catch (error) {
      await client.end().catch(() => undefined);
      if (Date.now() > deadline)
        throw new Error(`pgbouncer did not accept connections within 10 s: ${(error as Error).message} ${stderr()}`);
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
  }
}
