import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import type { INestApplication } from '@nestjs/common';
import pg from 'pg';
import request from 'supertest';
import type { Repository } from 'typeorm';
import { LogOutEverywhereService, RevocationCache, Token, TokenService } from '../lib/index.js';
import { TOKEN_REPOSITORY } from '../lib/token-resource.internal-constants.js';
import { createGuardApp } from './support/guard-app.js';
import { GuardedSubjectController } from './support/guarded-controller.js';
import { startStreamingReplica, type StreamingReplica } from './support/replica.js';
import { waitFor } from './support/wait-for.js';

/**
 * With TypeORM `replication`, TypeORM sends `find`/`findOne` to a replica. Here the replica
 * really streams from the primary but has its replay paused, so any read that reaches it
 * misses every write made after the pause: what the library just wrote must still be read
 * back, by every method and by the guard.
 */
describe('with a read replica (TypeORM replication), every read of the library goes to the primary', () => {
  let replica: StreamingReplica;
  let app: INestApplication;
  let tokens: TokenService;

  async function countOn(url: string, jti: string): Promise<number> {
    const client = new pg.Client({ connectionString: url });
    await client.connect();
    try {
      return (await client.query('SELECT count(*)::int AS n FROM tokens WHERE jti = $1', [jti])).rows[0].n;
    } finally {
      await client.end();
    }
  }

  function guarded(token: string) {
    return request(app.getHttpServer()).get('/guarded').set('Authorization', `Bearer ${token}`).timeout(5000);
  }

  beforeAll(async () => {
    replica = await startStreamingReplica();
    app = await createGuardApp(replica.primaryUrl, {
      platform: 'express',
      options: { storeAllTokens: true, requireTokenPresenceForAuthentication: true, revocationCache: { enabled: true } },
      typeOrm: { replication: { master: { url: replica.primaryUrl }, slaves: [{ url: replica.replicaUrl }] } },
      controllers: [GuardedSubjectController],
    });
    tokens = app.get(TokenService);
    // The migrations have run on the primary: the replica has the table, and nothing after.
    await replica.pauseReplay();
  });

  afterAll(async () => {
    await app?.close();
    await replica?.stop();
  });

  it('has a replica that misses writes made after the pause, and TypeORM reads from it', async () => {
    const { jti } = await tokens.issueToken({ subject: 'probe' });
    // The WAL with the row reached the replica; only its replay is held back.
    await waitFor(() => replica.receivedAll(), 10_000, 'the replica to receive the write');
    expect(await countOn(replica.primaryUrl, jti)).toBe(1);
    expect(await countOn(replica.replicaUrl, jti)).toBe(0);
    // The application's own repository reads on the replica: the setup routes reads there.
    expect(await app.get<Repository<Token>>(TOKEN_REPOSITORY).findOneBy({ jti })).toBeNull();
  });

  it('getToken finds a token issueToken has just stored, by jti and by token', async () => {
    const { token, jti } = await tokens.issueToken({ subject: 'alice', extraData: { device: 'phone' } });
    expect(await tokens.getToken({ jti })).toMatchObject({ jti, subject: 'alice', purpose: 'user', extraData: { device: 'phone' } });
    expect(await tokens.getToken({ token, purpose: 'user' })).toMatchObject({ jti });
  });

  it('listTokens lists a token issueToken has just stored', async () => {
    const { jti } = await tokens.issueToken({ subject: 'bob' });
    expect((await tokens.listTokens('bob')).map((row) => row.jti)).toEqual([jti]);
  });

  it('getConfirmationChanges reads changes just stored', async () => {
    const { token, jti } = await tokens.issueToken({ subject: 'carol', purpose: 'confirm', expiresIn: '1h' });
    await tokens.storeConfirmationChanges({ token, changes: { email: 'carol@example.com' } });
    expect(await tokens.getConfirmationChanges(jti)).toEqual({ email: 'carol@example.com' });
  });

  it('tokenRevoked, jtiRevoked and the guard see a revocation made just before', async () => {
    const { token, jti } = await tokens.issueToken({ subject: 'dave' });
    // Presence is required: admitted only if the guard reads the row issueToken just wrote.
    expect((await guarded(token)).status).toBe(200);
    await tokens.revoke(token);
    expect(await tokens.tokenRevoked(token)).toBe(true);
    expect(await tokens.jtiRevoked(jti)).toBe(true);
    const refused = await guarded(token);
    expect(refused.status).toBe(401);
    expect(refused.body.message).toBe('token revoked');
  });

  it('tokenRevoked and the guard see a log-out everywhere made just before, and the revocation cache polls the primary', async () => {
    const cache = app.get(RevocationCache);
    // LISTEN is refused on a hot standby, and a replica's snapshot lags: the cache answers only if it polls the primary.
    await waitFor(() => cache.fresh, 10_000, 'the revocation cache to poll');
    const { token } = await tokens.issueToken({ subject: 'erin' });
    expect((await guarded(token)).status).toBe(200);
    await app.get(LogOutEverywhereService).logOutEverywhere('erin');
    expect(await tokens.tokenRevoked(token)).toBe(true);
    expect((await guarded(token)).status).toBe(401);
  });
});
