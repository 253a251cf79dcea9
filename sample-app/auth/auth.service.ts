import { ForbiddenException, Injectable, UnauthorizedException } from '@nestjs/common';
import { ConfigService } from '@nestjs/config';
import { setTimeout as sleep } from 'node:timers/promises';
import { LogOutEverywhereService, TokenAlreadyRevokedError, TokenService } from '../../lib/index.js';
import type { SampleEnv } from '../config/env.js';
import { UsersService } from '../users/users.service.js';
import type { SessionClaims } from './auth-claims.js';

/** A bearer token handed to a client. */
export interface IssuedSession {
  token: string;
  tokenType: 'Bearer';
  expiresAt: Date;
}

/** One stored login token of a user, as `GET /auth/sessions` shows it. */
export interface SessionView {
  jti: string;
  current: boolean;
  createdAt: Date;
  expiresAt: Date;
}

/** Logging in and out, password changes and the session list, on the library's services. */
@Injectable()
export class AuthService {
  constructor(
    private readonly tokens: TokenService,
    private readonly logOut: LogOutEverywhereService,
    private readonly users: UsersService,
    private readonly config: ConfigService<SampleEnv, true>,
  ) {}

  /** Checks the credentials and issues a login token (stored: `storeAllTokens` is on). */
  async login(email: string, password: string): Promise<IssuedSession> {
    const user = await this.users.verifyCredentials(email, password);
    if (!user) throw new UnauthorizedException('wrong e-mail address or password');
    return this.issueSession(user.id);
  }

  /** Revokes the token of this request. A concurrent log-out of the same token gets `401`. */
  async logout(claims: SessionClaims): Promise<void> {
    try {
      // The guard verified the token; revoking by jti avoids parsing it again. The row may be
      // expunged once the token has expired anyway.
      await this.tokens.revokeJti(claims.jti, claims.sub, { expiresAt: new Date(claims.exp * 1000) });
    } catch (error) {
      if (error instanceof TokenAlreadyRevokedError) throw new UnauthorizedException('token revoked');
      throw error;
    }
  }

  /** Revokes all of the user's tokens, or all but this request's with `keepCurrent`. */
  async logOutEverywhere(claims: SessionClaims, keepCurrent: boolean): Promise<{ revoked: number; keptCurrent: boolean }> {
    const revoked = await this.logOut.logOutEverywhere(claims.sub, keepCurrent ? { exceptJti: claims.jti } : {});
    return { revoked, keptCurrent: keepCurrent };
  }

  /**
   * Changes the password and returns a fresh token for the caller.
   *
   * Why a fresh token rather than keeping the current one: the password is saved with
   * `Repository.save`, and the library's `applyOnPasswordChange` subscriber revokes every
   * token of the user in that same transaction, the caller's included. We let it, rather
   * than turning it off and calling `logOutOnPasswordChange(user, manager, { exceptJti })`
   * in a transaction of our own, because the subscriber also covers every other path that
   * changes a password (an admin reset, a script, a future endpoint): none of them can
   * forget to log the user out. The caller has just proved the current password, so a new
   * token is as good as a new login.
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

  /** The user's stored, unrevoked, unexpired login tokens, newest first. */
  async sessions(claims: SessionClaims): Promise<SessionView[]> {
    const rows = await this.tokens.listTokens(claims.sub, { purpose: 'user' });
    return rows.map((row) => ({ jti: row.jti, current: row.jti === claims.jti, createdAt: row.createdAt, expiresAt: row.expiresAt }));
  }

  private async issueSession(userId: string): Promise<IssuedSession> {
    const issued = await this.tokens.issueToken({ subject: userId, expiresIn: this.config.get('TOKEN_TTL', { infer: true }) });
    return { token: issued.token, tokenType: 'Bearer', expiresAt: issued.expiresAt };
  }
}
