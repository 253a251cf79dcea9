import { Body, Controller, Delete, Get, HttpCode, HttpStatus, Param, ParseUUIDPipe, Post } from '@nestjs/common';
import { SkipTokenCheck, TokenClaims, type TokenClaimsPayload } from '../../lib/index.js';
import { sessionClaims } from './auth-claims.js';
import {
  changePasswordBody,
  loginBody,
  logOutEverywhereBody,
  refreshBody,
  type ChangePasswordBody,
  type LoginBody,
  type LogOutEverywhereBody,
  type RefreshBody,
} from './auth.bodies.js';
import { AuthService, type IssuedSession, type SessionView } from './auth.service.js';

/**
 * Log-in, log-out and sessions. Every route but `login` is checked by the app-wide
 * `RevokedTokenGuard`, which leaves the verified claims for `@TokenClaims()`.
 */
@Controller('auth')
export class AuthController {
  constructor(private readonly auth: AuthService) {}

  /** `POST /auth/login {email, password}` → `{sessionId, accessToken, tokenType, expiresAt, refreshToken, refreshExpiresAt}`. */
  @Post('login')
  @SkipTokenCheck()
  @HttpCode(HttpStatus.OK)
  login(@Body(loginBody) body: LoginBody): Promise<IssuedSession> {
    return this.auth.login(body.email, body.password);
  }

  /** `POST /auth/refresh {refreshToken}` → a new pair of the same session; a reused refresh token ends the session (`401`). */
  @Post('refresh')
  @SkipTokenCheck()
  @HttpCode(HttpStatus.OK)
  refresh(@Body(refreshBody) body: RefreshBody): Promise<IssuedSession> {
    return this.auth.refresh(body.refreshToken);
  }

  /** `POST /auth/logout` → `204`; the session of the request ends (its access and refresh tokens). */
  @Post('logout')
  @HttpCode(HttpStatus.NO_CONTENT)
  logout(@TokenClaims() claims: TokenClaimsPayload): Promise<void> {
    return this.auth.logout(sessionClaims(claims));
  }

  /** `POST /auth/logout-everywhere {keepCurrent?}` → `{revoked, keptCurrent}`. */
  @Post('logout-everywhere')
  @HttpCode(HttpStatus.OK)
  logOutEverywhere(@TokenClaims() claims: TokenClaimsPayload, @Body(logOutEverywhereBody) body: LogOutEverywhereBody) {
    return this.auth.logOutEverywhere(sessionClaims(claims), body.keepCurrent);
  }

  /** `POST /auth/password {currentPassword, newPassword}` → a new session; every other one ends. */
  @Post('password')
  @HttpCode(HttpStatus.OK)
  changePassword(@TokenClaims() claims: TokenClaimsPayload, @Body(changePasswordBody) body: ChangePasswordBody): Promise<IssuedSession> {
    return this.auth.changePassword(sessionClaims(claims), body.currentPassword, body.newPassword);
  }

  /** `GET /auth/sessions` → the user's live sessions (never their tokens), the current one marked. */
  @Get('sessions')
  sessions(@TokenClaims() claims: TokenClaimsPayload): Promise<SessionView[]> {
    return this.auth.sessions(sessionClaims(claims));
  }

  /** `DELETE /auth/sessions/:id` → `204`; logs one of the caller's devices out (`404` for anyone else's). */
  @Delete('sessions/:id')
  @HttpCode(HttpStatus.NO_CONTENT)
  endSession(@TokenClaims() claims: TokenClaimsPayload, @Param('id', new ParseUUIDPipe()) id: string): Promise<void> {
    return this.auth.endSession(sessionClaims(claims), id);
  }
}
