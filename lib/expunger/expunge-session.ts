import type { DataSource, QueryRunner } from 'typeorm';

/** A query runner that can be released with an error, which makes `pg` destroy the connection. */
interface ReleasableWithError {
  releasePostgresConnection?(error?: unknown): Promise<void>;
}

/**
 * Runs `work` on a connection of the token table's pool, checked out for it alone. After
 * a failure the connection is destroyed rather than returned: it may be inside a
 * transaction that could not be rolled back, and a pooled connection must never be.
 */
export async function withExpungeSession<T>(dataSource: DataSource, work: (session: QueryRunner) => Promise<T>): Promise<T> {
  const session = dataSource.createQueryRunner('master');
  let failure: unknown;
  try {
    return await work(session);
  } catch (error) {
    failure = error;
    throw error;
  } finally {
    const releasable = session as QueryRunner & ReleasableWithError;
    if (failure !== undefined && typeof releasable.releasePostgresConnection === 'function') {
      await releasable
        .releasePostgresConnection(failure instanceof Error ? failure : new Error('the expunge run failed', { cause: failure }))
        .catch(() => undefined);
    } else {
      await session.release().catch(() => undefined);
    }
  }
}
