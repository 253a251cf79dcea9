import { ForbiddenException, Injectable, NotFoundException, UnauthorizedException } from '@nestjs/common';
import { setTimeout as sleep } from 'node:timers/promises';
import {
  InvalidTokenError,
  LogOutEverywhereService,
  RefreshTokenReusedError,
  SessionService,
  TokenAlreadyRevokedError,
  type SessionTokens,
} from '../../lib/index.js';
import { UsersService } from '../users/users.service.js';
import type { SessionClaims } from './auth-claims.js';

/** A session's tokens handed to a client: the access token for `Authorization: Bearer`, the refresh token for `POST /auth/refresh`. */
export interface IssuedSession {
  sessionId: string;
  accessToken: string;
  tokenType: 'Bearer';
  expiresAt: Date;
  refreshToken: string;
  refreshExpiresAt: Date;
}

/** One signed-in device of a user, as `GET /auth/sessions` shows it. */
export interface SessionView {
  sessionId: string;
  current: boolean;
  createdAt: Date;
  lastRefreshedAt: Date;
  expiresAt: Date;
}

/** Logging in and out, password changes and the session list, on the library's services. */
@Injectable()
export class AuthService {
  constructor(
    private readonly sessionService: SessionService,
    private readonly logOut: LogOutEverywhereService,
    private readonly users: UsersService,
  ) {}

  /** Checks the credentials and starts a session (its tokens are stored: `storeAllTokens` is on). */
  async login(email: string, password: string): Promise<IssuedSession> {
    const user = await this.users.verifyCredentials(email, password);
    if (!user) throw new UnauthorizedException('wrong e-mail address or password');
    return this.issueSession(user.id);
  }

  /**
   * Rotates a session: the refresh token is spent and a new pair comes back. A refresh
   * token used again after its rotation (outside the 10 s reuse interval) was probably
   * stolen: the library revokes the whole session, and the client must log in again.
   */
  async refresh(refreshToken: string): Promise<IssuedSession> {
    try {
      return issued(await this.sessionService.refresh(refreshToken));
    } catch (error) {
      if (error instanceof RefreshTokenReusedError) throw new UnauthorizedException('refresh token reused: the session is revoked');
      if (error instanceof TokenAlreadyRevokedError) throw new UnauthorizedException('session revoked');
      if (error instanceof InvalidTokenError) throw new UnauthorizedException('invalid refresh token');
      throw error;
    }
  }

  /** Ends the session of this request: its access and refresh tokens stop working. */
  async logout(claims: SessionClaims): Promise<void> {
    await this.sessionService.revoke(claims.sid);
  }

  /** Ends one of the caller's sessions (another device); someone else's session is "not found". */
  async endSession(claims: SessionClaims, sessionId: string): Promise<void> {
    const mine = await this.sessionService.list(claims.sub);
    if (!mine.some((session) => session.sessionId === sessionId)) throw new NotFoundException('no such session');
    await this.sessionService.revoke(sessionId);
  }

  /** Revokes all of the user's tokens, or all but this request's with `keepCurrent`. */
  async logOutEverywhere(claims: SessionClaims, keepCurrent: boolean): Promise<{ revoked: number; keptCurrent: boolean }> {
    const revoked = await this.logOut.logOutEverywhere(claims.sub, keepCurrent ? { exceptJti: claims.jti } : {});
    return { revoked, keptCurrent: keepCurrent };
  }

  /**
   * Changes the password and returns a fresh token for the caller.
   *
   * Why a fresh session rather than keeping the current one: the password is saved with
   * `Repository.save`, and the library's `applyOnPasswordChange` subscriber revokes every
   * token of the user in that same transaction, ending every session, the caller's included. We let it, rather
   * than turning it off and calling `logOutOnPasswordChange(user, manager, { exceptJti })`
   * in a transaction of our own, because the subscriber also covers every other path that
   * changes a password (an admin reset, a script, a future endpoint): none of them can
   * forget to log the user out. The caller has just proved the current password, so a new
   * session is as good as a new login.
   *
   * @throws ForbiddenException when `currentPassword` is wrong.
   */
  async changePassword(claims: SessionClaims, currentPassword: string, newPassword: string): Promise<IssuedSession> {
    const user = await this.users.findById(claims.sub);
    if (!user) throw new UnauthorizedException('account no longer exists');
    if (!(await this.users.checkPassword(user, currentPassword))) throw new ForbiddenException('current password is wrong');
    await this.users.changePassword(user, newPassword);
    // The log-out moment is at or before now; a token issued in the same millisecond would
    // count as issued before it (the library fails closed), so start on the next one.
    const savedAt = Date.now();
    while (Date.now() <= savedAt) await sleep(1);
    return this.issueSession(user.id);
  }

  /** The user's live sessions, newest first; the caller's own is marked `current`. */
  async sessions(claims: SessionClaims): Promise<SessionView[]> {
    const sessions = await this.sessionService.list(claims.sub);
    return sessions.map(({ sessionId, createdAt, lastRefreshedAt, expiresAt }) => ({
      sessionId,
      current: sessionId === claims.sid,
      createdAt,
      lastRefreshedAt,
      expiresAt,
    }));
  }

  private async issueSession(userId: string): Promise<IssuedSession> {
    return issued(await this.sessionService.start({ subject: userId }));
  }
}

function issued(tokens: SessionTokens): IssuedSession {
  return {
    sessionId: tokens.sessionId,
    accessToken: tokens.accessToken,
    tokenType: 'Bearer',
    expiresAt: tokens.accessExpiresAt,
    refreshToken: tokens.refreshToken,
    refreshExpiresAt: tokens.refreshExpiresAt,
  };
}
