import { Body, Controller, Get, HttpCode, HttpStatus, Post } from '@nestjs/common';
import { SkipTokenCheck, TokenClaims, type TokenClaimsPayload } from '../../lib/index.js';
import { sessionClaims } from './auth-claims.js';
import {
  changePasswordBody,
  loginBody,
  logOutEverywhereBody,
  type ChangePasswordBody,
  type LoginBody,
  type LogOutEverywhereBody,
} from './auth.bodies.js';
import { AuthService, type IssuedSession, type SessionView } from './auth.service.js';

/**
 * Log-in, log-out and sessions. Every route but `login` is checked by the app-wide
 * `RevokedTokenGuard`, which leaves the verified claims for `@TokenClaims()`.
 */
@Controller('auth')
export class AuthController {
  constructor(private readonly auth: AuthService) {}

  /** `POST /auth/login {email, password}` → `{token, tokenType, expiresAt}`. */
  @Post('login')
  @SkipTokenCheck()
  @HttpCode(HttpStatus.OK)
  login(@Body(loginBody) body: LoginBody): Promise<IssuedSession> {
    return this.auth.login(body.email, body.password);
  }

  /** `POST /auth/logout` → `204`; the token of the request is revoked. */
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

  /** `POST /auth/password {currentPassword, newPassword}` → a new token; every older one is revoked. */
  @Post('password')
  @HttpCode(HttpStatus.OK)
  changePassword(@TokenClaims() claims: TokenClaimsPayload, @Body(changePasswordBody) body: ChangePasswordBody): Promise<IssuedSession> {
    return this.auth.changePassword(sessionClaims(claims), body.currentPassword, body.newPassword);
  }

  /** `GET /auth/sessions` → the user's active login tokens (never the tokens themselves). */
  @Get('sessions')
  sessions(@TokenClaims() claims: TokenClaimsPayload): Promise<SessionView[]> {
    return this.auth.sessions(sessionClaims(claims));
  }
}
