import {
  Inject,
  Injectable,
  Logger,
  ServiceUnavailableException,
  UnauthorizedException,
  type CanActivate,
  type ExecutionContext,
} from '@nestjs/common';
import { Reflector } from '@nestjs/core';
import { errors as joseErrors } from 'jose';
import { TokenCodec, type TokenClaimsPayload } from '../jwt/token-codec.js';
import type { ResolvedTokenResourceOptions } from '../options/resolved-options.js';
import { TOKEN_RESOURCE_OPTIONS } from '../token-resource.constants.js';
import { TokenResourceUnavailableError } from '../token-resource.exceptions.js';
import { TokenService, type TokenCheck } from '../token.service.js';
import { bearerChallenge } from './bearer-challenge.js';
import { requestOf } from './request-of.js';
import { SKIP_TOKEN_CHECK_KEY, TOKEN_CLAIMS_KEY, TOKEN_GUARD_MESSAGES as MESSAGES } from './token-guard.constants.js';
import { TimeoutError, withTimeout } from './with-timeout.js';

/** `Authorization: Bearer <token>`, scheme in any case; the token is one run of non-space characters. */
const BEARER = /^Bearer[ \t]+(\S+)[ \t]*$/i;

/**
 * Admits a request only with a valid, unrevoked bearer JWT: verifies it with the module's
 * jwt options, requires `jti` and `sub`, then asks the token store in one round trip
 * whether it is revoked (and, with `requireTokenPresenceForAuthentication`, whether it is
 * a stored token of `authenticationPurpose`).
 *
 * - Any client input the guard cannot trust: `401 Unauthorized` with a short reason and an
 *   RFC 6750 `WWW-Authenticate` challenge: `Bearer` without a token, `Bearer
 *   error="invalid_token", error_description="<reason>"` for a token it refuses.
 * - The store unreachable, failing or slower than `storeTimeoutMs`: `503 Service
 *   Unavailable` (no challenge: the client's credentials are not at fault). The guard fails
 *   closed and never admits without an answer.
 *
 * Use it with `@UseGuards(RevokedTokenGuard)` or as `APP_GUARD`, on Express or Fastify.
 * The verified payload is left on `request.tokenClaims` (read it with `@TokenClaims()`);
 * `@SkipTokenCheck()` lets a handler or controller through. Subclass it and override the
 * protected hooks to read the token elsewhere (a cookie), to name a `realm`, to shape the
 * `401`, or to support other contexts (see `getRequest` and `TokenClaims`).
 */
@Injectable()
export class RevokedTokenGuard implements CanActivate {
  protected readonly logger = new Logger(RevokedTokenGuard.name);

  /**
   * The `realm` of the `WWW-Authenticate` challenge; none by default. A subclass names one
   * with `protected override readonly realm = 'api';`.
   */
  protected readonly realm?: string;

  constructor(
    @Inject(TOKEN_RESOURCE_OPTIONS) protected readonly options: ResolvedTokenResourceOptions,
    protected readonly codec: TokenCodec,
    protected readonly tokenService: TokenService,
    protected readonly reflector: Reflector,
  ) {}

  async canActivate(context: ExecutionContext): Promise<boolean> {
    if (this.shouldSkip(context)) return true;
    const request = this.getRequest(context);
    const token = this.extractToken(request);
    // RFC 6750 §3.1: a request without credentials is challenged with no error code.
    if (typeof token !== 'string' || token === '') throw this.unauthorized(context, MESSAGES.missingToken);
    let claims: TokenClaimsPayload;
    try {
      claims = await this.verifyToken(token);
    } catch (error) {
      // verifyToken has no context to answer with; its 401s go through unauthorized() so that
      // they carry the challenge too, also when a subclass throws them. Its 503 passes as is.
      if (error instanceof UnauthorizedException) throw this.unauthorized(context, error.message, 'invalid_token');
      throw error;
    }
    const check = await this.checkStore(claims);
    if (check.revoked) throw this.unauthorized(context, MESSAGES.revoked, 'invalid_token');
    if (this.options.requireTokenPresenceForAuthentication && !check.presentForAuthentication) {
      throw this.unauthorized(context, MESSAGES.notRecognised, 'invalid_token');
    }
    if (request && typeof request === 'object') request[TOKEN_CLAIMS_KEY] = claims;
    return true;
  }

  /** Whether `@SkipTokenCheck()` applies; the handler's setting overrides the controller's. */
  protected shouldSkip(context: ExecutionContext): boolean {
    return this.reflector.getAllAndOverride<boolean | undefined>(SKIP_TOKEN_CHECK_KEY, [context.getHandler(), context.getClass()]) === true;
  }

  /**
   * The object the token is read from and the claims are left on, which is where
   * `@TokenClaims()` looks: by default the HTTP request (Express or Fastify), the transport
   * context of an RPC call (never its message data, which the client writes) or the client
   * socket of a WebSocket message. The default {@link extractToken} reads `request.headers`,
   * which only the HTTP request has: for RPC or WebSockets override that too. For GraphQL or
   * other contexts override this as well, with a decorator of your own (see `TokenClaims`).
   */
  protected getRequest(context: ExecutionContext): Record<string, any> {
    return requestOf(context);
  }

  /**
   * The response the `WWW-Authenticate` header is set on: the HTTP response (Express) or reply
   * (Fastify); `undefined` outside HTTP, where there is no header to set. Override for GraphQL
   * (for example the `res` of its context).
   */
  protected getResponse(context: ExecutionContext): unknown {
    return context.getType() === 'http' ? context.switchToHttp().getResponse() : undefined;
  }

  /**
   * The exception for a `401`, after setting the RFC 6750 challenge on the response:
   * `WWW-Authenticate: Bearer` without `error`, else `Bearer error="<error>",
   * error_description="<reason>"` (with `realm="..."` first when {@link realm} is set).
   * Every `401` of the guard comes from here, `reason` being its body's `message`
   * ({@link TOKEN_GUARD_MESSAGES}); `error` is `invalid_token` for any token it refuses.
   * Override to shape the body or the header; a response with neither `setHeader` (Express,
   * Node) nor `header` (Fastify) is left alone, so non-HTTP contexts still get the exception.
   */
  protected unauthorized(context: ExecutionContext, reason: string, error?: string): UnauthorizedException {
    const challenge = bearerChallenge({ realm: this.realm, error, errorDescription: error === undefined ? undefined : reason });
    const response = this.getResponse(context) as { setHeader?: unknown; header?: unknown } | null | undefined;
    if (typeof response?.setHeader === 'function') response.setHeader('WWW-Authenticate', challenge);
    else if (typeof response?.header === 'function') response.header('WWW-Authenticate', challenge);
    return new UnauthorizedException(reason);
  }

  /**
   * The raw token of the request: by default the `Authorization: Bearer <token>` header
   * (scheme case-insensitive). Override to read a cookie. `undefined` means no token (`401`).
   */
  protected extractToken(request: Record<string, any>): string | undefined {
    const header: unknown = request?.headers?.authorization;
    if (typeof header !== 'string') return undefined;
    return BEARER.exec(header)?.[1];
  }

  /**
   * Verifies signature, algorithm, issuer, audience, `exp` and `nbf`, requires `jti` and
   * `sub`, and refuses a token whose `purpose` claim is not `authenticationPurpose` (so an
   * e-mailed confirmation or reset token is no session). Throws `401` for an untrusted
   * token, `503` when a remote JWKS is unreachable.
   */
  protected async verifyToken(token: string): Promise<TokenClaimsPayload> {
    let claims: TokenClaimsPayload;
    try {
      claims = await this.codec.verify(token);
    } catch (error) {
      if (error instanceof TokenResourceUnavailableError) {
        this.logger.error(`Token keys unavailable, answering 503: ${error.message}`);
        throw new ServiceUnavailableException(MESSAGES.keysUnavailable);
      }
      throw new UnauthorizedException(rejectionReason(error));
    }
    if (!nonEmptyString(claims.jti) || !nonEmptyString(claims.sub)) throw new UnauthorizedException(MESSAGES.missingClaims);
    if (claims.purpose !== undefined && claims.purpose !== this.options.authenticationPurpose) {
      throw new UnauthorizedException(MESSAGES.wrongPurpose);
    }
    return claims;
  }

  /**
   * One store round trip for verified claims, bounded by `storeTimeoutMs`. Any failure or
   * timeout is logged (one line, never the token) and answered `503`.
   */
  protected async checkStore(claims: TokenClaimsPayload): Promise<TokenCheck> {
    try {
      return await withTimeout(this.tokenService.checkClaims(claims), this.options.storeTimeoutMs);
    } catch (error) {
      const why = error instanceof TimeoutError
        ? `no answer within ${error.timeoutMs} ms`
        : `${(error as Error)?.name ?? 'Error'}: ${(error as Error)?.message ?? String(error)}`;
      this.logger.error(`Token store check failed, answering 503: ${why.replace(/\s+/g, ' ')}`);
      throw new ServiceUnavailableException(MESSAGES.storeUnavailable);
    }
  }
}

function nonEmptyString(value: unknown): value is string {
  return typeof value === 'string' && value !== '';
}

function rejectionReason(error: unknown): string {
  const cause = (error as { cause?: unknown })?.cause;
  if (cause instanceof joseErrors.JWTExpired) return MESSAGES.expired;
  if (cause instanceof joseErrors.JWTClaimValidationFailed) {
    switch (cause.claim) {
      case 'nbf': return MESSAGES.notYetValid;
      case 'iss': return MESSAGES.wrongIssuer;
      case 'aud': return MESSAGES.wrongAudience;
    }
  }
  return MESSAGES.invalidToken;
}
