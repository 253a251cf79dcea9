import type { INestApplication } from '@nestjs/common';
import type { Client as PgClient } from 'pg';
import { RevocationCache } from '../../lib/index.js';

/** The connection the revocation cache of `app` listens on (private: the tests reach in to cut it). */
export function listenerOf(app: INestApplication): PgClient {
  const listener = app.get<RevocationCache, { listener?: PgClient }>(RevocationCache).listener;
  if (!listener) throw new Error('the cache is not listening');
  return listener;
}

/** The socket of that connection: pausing it stops notifications as a partition would, unseen by the client. */
export function listenerSocketOf(app: INestApplication): { pause(): void; resume(): void } {
  return (listenerOf(app) as unknown as { connection: { stream: { pause(): void; resume(): void } } }).connection.stream;
}
