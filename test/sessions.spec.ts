import { afterAll, beforeAll, describe, expect, it, jest } from '@jest/globals';
import type { INestApplication } from '@nestjs/common';
import { decodeJwt } from 'jose';
import pg from 'pg';
import { DataSource } from 'typeorm';
import {
  ExpungerService,
  InvalidTokenError,
  RefreshTokenReusedError,
  RevocationCache,
  SessionService,
  TokenAlreadyRevokedError,
  TokenService,
} from '../lib/index.js';
import { listenerSocketOf } from './support/revocation-cache-listener.js';
import { guardAnswer } from './support/guard-answer.js';
import { signToken, uniqueSubject } from './support/jwt-fixtures.js';
import { createSessionApp, jtiOf } from './support/session-app.js';
import { useTokenTable } from './support/token-table.js';
import { waitFor } from './support/wait-for.js';

const table = useTokenTable();
let app: INestApplication;
let sessions: SessionService;
let tokens: TokenService;

beforeAll(async () => {
  app = await createSessionApp(table.db.url, { sessions: { reuseIntervalSeconds: 30 } });
  sessions = app.get(SessionService);
  tokens = app.get(TokenService);
});

afterAll(async () => {
  await app?.close();
});

/** Pretends the latest rotation of session `sid` happened `seconds` earlier than it did. */
async function ageRotation(sid: string, seconds: number): Promise<void> {
  await table.admin.query(
    `UPDATE tokens SET extra_data = jsonb_set(extra_data, '{lastRefreshedAt}', to_jsonb((extra_data->>'lastRefreshedAt')::float8 - $2))
      WHERE jti = $1`,
    [`session:${sid}`, seconds * 1000],
  );
}

describe('start', () => {
  it('returns an access token of the authentication purpose and a stored refresh token, both carrying sid', async () => {
    const subject = uniqueSubject();
    const pair = await sessions.start({ subject, claims: { role: 'admin' }, extraData: { device: 'laptop' } });
    const access = decodeJwt(pair.accessToken);
    const refresh = decodeJwt(pair.refreshToken);
    expect(access).toMatchObject({ sub: subject, sid: pair.sessionId, purpose: 'user', role: 'admin' });
    expect(refresh).toMatchObject({ sub: subject, sid: pair.sessionId, purpose: 'refresh' });
    expect(refresh.role).toBeUndefined();
    expect(pair.accessExpiresAt.getTime()).toBe(access.exp! * 1000);
    expect(pair.refreshExpiresAt.getTime()).toBe(refresh.exp! * 1000);
    expect(access.exp! - Math.floor(access.iat!)).toBe(15 * 60);
    expect(refresh.exp! - Math.floor(refresh.iat!)).toBe(30 * 86400);
    expect(await table.countRows(`jti = '${jtiOf(pair.refreshToken)}' AND purpose = 'refresh' AND subject = '${subject}'`)).toBe(1);
    expect(await table.countRows(`jti = 'session:${pair.sessionId}' AND purpose = 'session'`)).toBe(1);
    // The access token is not stored without storeAllTokens; no raw token is stored anywhere.
    expect(await table.countRows(`jti = '${jtiOf(pair.accessToken)}'`)).toBe(0);
    expect(await table.countRows(`extra_data::text LIKE '%${pair.refreshToken.split('.')[2]}%'`)).toBe(0);
  });

  it('is admitted by the guard with its access token and refused with its refresh token', async () => {
    const pair = await sessions.start({ subject: uniqueSubject() });
    expect(await guardAnswer(app, pair.accessToken)).toEqual({ status: 200 });
    expect(await guardAnswer(app, pair.refreshToken)).toEqual({ status: 401, message: 'token not for authentication' });
  });

  it('refuses the default refresh lifetime when the log-out marker lives shorter, writing nothing', async () => {
    const short = await createSessionApp(table.db.url, { logOutEverywhere: { markerLifetime: '1d' } });
    table.apps.push(short);
    await expect(short.get(SessionService).start({ subject: uniqueSubject() })).rejects.toThrow(
      /sessions\.refreshTokenExpiresIn \(2592000 s\) exceeds logOutEverywhere\.markerLifetime/,
    );
    expect(await table.countRows()).toBe(0);
  });

  it('refuses claims the session sets and a subject the table cannot store, writing nothing', async () => {
    await expect(sessions.start({ subject: uniqueSubject(), claims: { sid: 'mine' } })).rejects.toThrow(TypeError);
    await expect(sessions.start({ subject: '' })).rejects.toThrow(TypeError);
    expect(await table.countRows()).toBe(0);
  });
});

describe('refresh', () => {
  it('rotates: the presented refresh token is revoked and a new pair of the same session is returned', async () => {
    const first = await sessions.start({ subject: uniqueSubject() });
    const second = await sessions.refresh(first.refreshToken);
    expect(second.sessionId).toBe(first.sessionId);
    expect(second.refreshToken).not.toBe(first.refreshToken);
    expect(second.accessToken).not.toBe(first.accessToken);
    expect(await tokens.tokenRevoked(first.refreshToken)).toBe(true);
    expect(await tokens.tokenRevoked(second.refreshToken)).toBe(false);
    expect(await guardAnswer(app, second.accessToken)).toEqual({ status: 200 });
    const third = await sessions.refresh(second.refreshToken);
    expect(third.sessionId).toBe(first.sessionId);
    expect(await table.countRows(`purpose = 'refresh'`)).toBe(1);
  });

  it('revokes the whole session when a rotated refresh token is replayed, the legitimate holder included', async () => {
    const subject = uniqueSubject();
    const other = await sessions.start({ subject });
    const stolen = await sessions.start({ subject });
    const legitimate = await sessions.refresh(stolen.refreshToken);
    const latest = await sessions.refresh(legitimate.refreshToken);
    // An older token than the immediately previous one is theft even within the interval.
    await expect(sessions.refresh(stolen.refreshToken)).rejects.toBeInstanceOf(RefreshTokenReusedError);
    for (const token of [stolen.accessToken, legitimate.accessToken, latest.accessToken]) {
      expect(await guardAnswer(app, token)).toEqual({ status: 401, message: 'token revoked' });
    }
    expect(await tokens.tokenRevoked(latest.refreshToken)).toBe(true);
    await expect(sessions.refresh(latest.refreshToken)).rejects.toBeInstanceOf(TokenAlreadyRevokedError);
    // Only that session: the subject's other session goes on.
    expect(await guardAnswer(app, other.accessToken)).toEqual({ status: 200 });
    await expect(sessions.refresh(other.refreshToken)).resolves.toMatchObject({ sessionId: other.sessionId });
    expect((await sessions.list(subject)).map((s) => s.sessionId)).toEqual([other.sessionId]);
  });

  it('within reuseIntervalSeconds hands a repeat of the previous token the identical successor, after it revokes', async () => {
    const first = await sessions.start({ subject: uniqueSubject(), claims: { tenant: 't1', nested: { b: 1, a: [2] } } });
    const second = await sessions.refresh(first.refreshToken);
    const again = await sessions.refresh(first.refreshToken);
    expect(again).toEqual(second);
    expect(await guardAnswer(app, second.accessToken)).toEqual({ status: 200 });
    // Past the interval, the same repeat is theft.
    await ageRotation(first.sessionId, 31);
    await expect(sessions.refresh(first.refreshToken)).rejects.toBeInstanceOf(RefreshTokenReusedError);
    expect(await guardAnswer(app, second.accessToken)).toEqual({ status: 401, message: 'token revoked' });
  });

  it("rotates in the caller's transaction: a rollback undoes the rotation, never a detected reuse", async () => {
    const dataSource = app.get(DataSource);
    const first = await sessions.start({ subject: uniqueSubject() });
    await expect(
      dataSource.transaction(async (manager) => {
        await sessions.refresh(first.refreshToken, { manager });
        throw new Error('roll back');
      }),
    ).rejects.toThrow('roll back');
    const second = await sessions.refresh(first.refreshToken);
    const third = await sessions.refresh(second.refreshToken);
    await expect(dataSource.transaction((manager) => sessions.refresh(first.refreshToken, { manager }))).rejects.toBeInstanceOf(
      RefreshTokenReusedError,
    );
    expect(await guardAnswer(app, third.accessToken)).toEqual({ status: 401, message: 'token revoked' });
  });

  it('rejects forged, expired, foreign and access tokens without writing', async () => {
    const pair = await sessions.start({ subject: uniqueSubject() });
    const claims = decodeJwt(pair.refreshToken);
    const before = (await table.admin.query('SELECT jti, purpose, updated_at FROM tokens ORDER BY jti')).rows;
    const rejected = [
      pair.accessToken,
      await signToken({ ...claims }, { secret: 'another-secret-that-is-at-least-64-bytes-long-for-hs512-as-rfc!' }),
      await signToken({ ...claims, exp: Math.floor(Date.now() / 1000) - 10 }),
      await signToken({ ...claims, jti: `${pair.sessionId}.r1.AAAAAAAAAAAAAAAAAAAAAA` }),
      await signToken({ ...claims, sid: '00000000-0000-4000-8000-000000000000' }),
      await signToken({ sub: claims.sub, purpose: 'refresh' }),
      'not.a.token',
    ];
    for (const token of rejected) await expect(sessions.refresh(token)).rejects.toBeInstanceOf(InvalidTokenError);
    expect((await table.admin.query('SELECT jti, purpose, updated_at FROM tokens ORDER BY jti')).rows).toEqual(before);
  });
});

describe('revoke and list', () => {
  it('revoke(sessionId) refuses every token of that session and leaves the others', async () => {
    const subject = uniqueSubject();
    const kept = await sessions.start({ subject, extraData: { device: 'phone' } });
    const ended = await sessions.start({ subject, extraData: { device: 'laptop' } });
    const endedLater = await sessions.refresh(ended.refreshToken);
    expect((await sessions.list(subject)).map((s) => s.extraData)).toEqual([{ device: 'laptop' }, { device: 'phone' }]);
    await sessions.revoke(ended.sessionId);
    for (const token of [ended.accessToken, endedLater.accessToken]) {
      expect(await guardAnswer(app, token)).toEqual({ status: 401, message: 'token revoked' });
      expect(await tokens.tokenRevoked(token)).toBe(true);
    }
    await expect(sessions.refresh(endedLater.refreshToken)).rejects.toBeInstanceOf(TokenAlreadyRevokedError);
    expect(await guardAnswer(app, kept.accessToken)).toEqual({ status: 200 });
    expect(await tokens.tokenRevoked(kept.refreshToken)).toBe(false);
    const listed = await sessions.list(subject);
    expect(listed).toEqual([
      {
        sessionId: kept.sessionId,
        createdAt: expect.any(Date),
        lastRefreshedAt: expect.any(Date),
        expiresAt: kept.refreshExpiresAt,
        extraData: { device: 'phone' },
      },
    ]);
    await expect(sessions.revoke(ended.sessionId)).resolves.toBeUndefined();
    await expect(sessions.revoke('not-a-session')).rejects.toThrow(TypeError);
  });

  it('list shows when a session was last refreshed and until when it lives', async () => {
    const subject = uniqueSubject();
    const first = await sessions.start({ subject });
    await ageRotation(first.sessionId, 5);
    const [before] = await sessions.list(subject);
    const second = await sessions.refresh(first.refreshToken);
    const [after] = await sessions.list(subject);
    expect(after.createdAt).toEqual(before.createdAt);
    expect(after.lastRefreshedAt.getTime()).toBeGreaterThan(before.lastRefreshedAt.getTime());
    expect(after.expiresAt).toEqual(second.refreshExpiresAt);
    expect(await sessions.list(uniqueSubject())).toEqual([]);
  });

  it('refuses a reserved session jti in user input', async () => {
    const pair = await sessions.start({ subject: uniqueSubject() });
    await expect(tokens.revokeJti(`session:${pair.sessionId}`, 'someone')).rejects.toBeInstanceOf(InvalidTokenError);
    expect(await tokens.getToken({ jti: `session:${pair.sessionId}` })).toBeNull();
    expect(await tokens.listTokens(decodeJwt(pair.accessToken).sub!)).toHaveLength(1);
  });
});

describe('expiry', () => {
  it('an ended session refreshes no more, lists no more, and the expunger removes what it leaves', async () => {
    const shortLived = await createSessionApp(table.db.url, { sessions: { accessTokenExpiresIn: 1, refreshTokenExpiresIn: 1 } });
    table.apps.push(shortLived);
    const subject = uniqueSubject();
    const ending = shortLived.get(SessionService);
    const pair = await ending.start({ subject });
    await ending.revoke((await ending.start({ subject })).sessionId);
    expect(await table.countRows()).toBe(4);
    await new Promise((resolve) => setTimeout(resolve, 2100));
    await expect(ending.refresh(pair.refreshToken)).rejects.toBeInstanceOf(InvalidTokenError);
    expect(await guardAnswer(shortLived, pair.accessToken)).toEqual({ status: 401, message: 'token expired' });
    expect(await ending.list(subject)).toEqual([]);
    await shortLived.get(ExpungerService).run();
    expect(await table.countRows(`jti NOT LIKE 'expunger:%'`)).toBe(0);
  });
});

describe('the guard', () => {
  /** Every statement any `pg` client of this process sends while `work` runs. */
  async function statementsDuring(work: () => Promise<unknown>): Promise<string[]> {
    const spy = jest.spyOn(pg.Client.prototype, 'query');
    try {
      await work();
      return spy.mock.calls.map(([query]) => (typeof query === 'string' ? query : ((query as { name?: string }).name ?? '')));
    } finally {
      spy.mockRestore();
    }
  }

  it('checks a session token in one round trip, reading the session row with the token row and the marker', async () => {
    const pair = await sessions.start({ subject: uniqueSubject() });
    await guardAnswer(app, pair.accessToken);
    const statements = await statementsDuring(() => guardAnswer(app, pair.accessToken));
    expect(statements).toHaveLength(1);
    expect(statements[0]).toMatch(/^ntr_token_state_/);
  });

  it("another instance's cache refuses a session's tokens within maxStalenessMs of a detected reuse, by its poll alone", async () => {
    // The writer sends no wake-ups: only the stamps that the reader's poll finds can tell it.
    const writer = await createSessionApp(table.db.url, { revocationCache: { enabled: true, announce: false } });
    const reader = await createSessionApp(table.db.url, { revocationCache: { enabled: true, maxStalenessMs: 500 } });
    table.apps.push(writer, reader);
    await waitFor(() => reader.get(RevocationCache).fresh, 10_000, 'the revocation cache to be fresh');
    const service = writer.get(SessionService);
    const first = await service.start({ subject: uniqueSubject() });
    const next = await service.refresh(first.refreshToken);
    for (const token of [first.accessToken, next.accessToken]) expect(await guardAnswer(reader, token)).toEqual({ status: 200 });
    await expect(service.refresh(first.refreshToken)).rejects.toBeInstanceOf(RefreshTokenReusedError);
    const revokedAt = Date.now();
    await waitFor(async () => (await guardAnswer(reader, next.accessToken)).status === 401, 5_000, 'the reader to refuse the session');
    // Twice the bound, for the time the guard's own answer takes on a loaded machine.
    expect(Date.now() - revokedAt).toBeLessThan(1_000);
    expect(await guardAnswer(reader, first.accessToken)).toEqual({ status: 401, message: 'token revoked' });
  });

  it('with the revocation cache, checks a seen session token without a round trip and sees its revocation at once', async () => {
    const cached = await createSessionApp(table.db.url, { revocationCache: { enabled: true } });
    table.apps.push(cached);
    await waitFor(() => cached.get(RevocationCache).fresh, 10_000, 'the revocation cache to be fresh');
    const service = cached.get(SessionService);
    const pair = await service.start({ subject: uniqueSubject() });
    expect(await guardAnswer(cached, pair.accessToken)).toEqual({ status: 200 });
    const statements = await statementsDuring(() => guardAnswer(cached, pair.accessToken));
    expect(statements.filter((s) => /^ntr_(token_state|own_state)_/.test(s))).toEqual([]);
    // A rotation drops this instance's cached answer about the refresh token it revoked at
    // once, not only when its announcement comes back (held up here, within maxStalenessMs).
    const checks = cached.get(TokenService);
    expect(await checks.tokenRevoked(pair.refreshToken)).toBe(false);
    const socket = listenerSocketOf(cached);
    socket.pause();
    try {
      const next = await service.refresh(pair.refreshToken);
      expect(await checks.tokenRevoked(pair.refreshToken)).toBe(true);
      expect(await guardAnswer(cached, next.accessToken)).toEqual({ status: 200 });
      await service.revoke(pair.sessionId);
      for (const token of [pair.accessToken, next.accessToken]) {
        expect(await guardAnswer(cached, token)).toEqual({ status: 401, message: 'token revoked' });
      }
    } finally {
      socket.resume();
    }
  });
});
