import {
  Inject,
  Injectable,
  Logger,
  Optional,
  ServiceUnavailableException,
  UnauthorizedException,
  type CanActivate,
  type ExecutionContext,
} from '@nestjs/common';
import { Reflector } from '@nestjs/core';
import { errors as joseErrors } from 'jose';
import { TokenCodec, type TokenClaimsPayload } from '../jwt/token-codec.js';
import type { ResolvedTokenResourceOptions } from '../options/resolved-options.js';
import { OutageLog } from '../outage-log.js';
import { TOKEN_RESOURCE_OPTIONS } from '../token-resource.internal-constants.js';
import { TokenResourceUnavailableError } from '../token-resource.exceptions.js';
import { TokenService, type TokenCheck } from '../token.service.js';
import { bearerChallenge } from './bearer-challenge.js';
import { writeCallClaims } from './call-claims.js';
import { requestOf } from './request-of.js';
import { SKIP_TOKEN_CHECK_KEY, TOKEN_GUARD_MESSAGES as MESSAGES } from './token-guard.constants.js';
import { withTimeout } from './with-timeout.js';

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
 * The verified payload is left for the call that was admitted and for no other (read it with
 * `@TokenClaims()`): over HTTP on `request.tokenClaims`; for a WebSocket message or an RPC call
 * where only `@TokenClaims()` and `getTokenClaims(context)` find it (see `TokenClaims`). Every
 * call starts without claims, also one `@SkipTokenCheck()` lets through. Subclass it and
 * override the protected hooks to read the token elsewhere (a cookie), to name a `realm`, to
 * shape the `401` or its challenge, or to support other contexts (see `getRequest` and
 * `TokenClaims`).
 *
 * **RPC and WebSockets.** The guard refuses with Nest's HTTP exceptions (`UnauthorizedException`,
 * `ServiceUnavailableException`). Nest's RPC and WebSocket exception filters pass on only an
 * `RpcException` or a `WsException` and turn anything else into `"Internal server error"`
 * (logged as an error), so outside HTTP the client learns neither that it was refused nor why.
 * Map them where the transport package is at hand (this library does not depend on
 * `@nestjs/microservices` or `@nestjs/websockets`), in a subclass, which covers the `401`s and
 * the `503`s alike:
 *
 * ```ts
 * @Injectable()
 * export class RpcTokenGuard extends RevokedTokenGuard {
 *   protected override extractToken(request: Record<string, any>) { ... } // transport headers
 *   override async canActivate(context: ExecutionContext): Promise<boolean> {
 *     try {
 *       return await super.canActivate(context);
 *     } catch (error) {
 *       // The body Nest would have sent over HTTP: { statusCode, message, error }.
 *       if (error instanceof HttpException) throw new RpcException(error.getResponse()); // WsException for a gateway
 *       throw error;
 *     }
 *   }
 * }
 * ```
 *
 * or with an exception filter on the gateway or microservice controller (`@UseFilters`) or
 * global, for example `@Catch(HttpException) class HttpToRpcFilter implements
 * RpcExceptionFilter<HttpException> { catch(e) { return throwError(() => e.getResponse()); } }`,
 * or for WebSockets one that calls `host.switchToWs().getClient().emit('exception',
 * e.getResponse())`. Overriding {@link unauthorized} alone is not enough: it makes only the
 * `401`s, and it must return an `UnauthorizedException`.
 */
@Injectable()
export class RevokedTokenGuard implements CanActivate {
  /** A logger for subclasses; the guard's own store and key failures go to {@link outageLog}. */
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
    /**
     * Where store and key failures are logged: the module's shared one; a guard built with
     * `new` gets one of its own.
     */
    @Optional() protected readonly outageLog: OutageLog = new OutageLog(),
  ) {}

  async canActivate(context: ExecutionContext): Promise<boolean> {
    const request = this.getRequest(context);
    // Before anything else, the skip check included: the object the claims are kept on may
    // have them already (a second guard on one request, a property written upstream), and a
    // call the guard skips or refuses must not be handed claims it did not verify.
    writeCallClaims(context, request, undefined);
    if (this.shouldSkip(context)) return true;
    const token = this.extractToken(request);
    // RFC 6750 §3.1: a request without credentials is challenged with no error code.
    if (typeof token !== 'string' || token === '') throw this.unauthorized(context, MESSAGES.missingToken);
    let claims: TokenClaimsPayload;
    try {
      claims = await this.verifyToken(token);
    } catch (error) {
      // verifyToken has no context, so its 401s have no challenge yet. The guard's own go
      // through unauthorized() like every other refusal, so that one override shapes them all.
      // One a subclass made itself is thrown as it is (its body, cause and class are its
      // choice, and it may have come from unauthorized() already): it only gets the challenge,
      // unless something set one. The 503 passes untouched.
      if (error instanceof GuardRefusal) throw this.unauthorized(context, error.message, 'invalid_token');
      if (error instanceof UnauthorizedException && !this.hasChallenge(context)) {
        this.setChallenge(context, 'invalid_token', error.message);
      }
      throw error;
    }
    const check = await this.checkStore(claims);
    if (check.revoked) throw this.unauthorized(context, MESSAGES.revoked, 'invalid_token');
    if (this.options.requireTokenPresenceForAuthentication && !check.presentForAuthentication) {
      throw this.unauthorized(context, MESSAGES.notRecognised, 'invalid_token');
    }
    writeCallClaims(context, request, claims);
    return true;
  }

  /** Whether `@SkipTokenCheck()` applies; the handler's setting overrides the controller's. */
  protected shouldSkip(context: ExecutionContext): boolean {
    return this.reflector.getAllAndOverride<boolean | undefined>(SKIP_TOKEN_CHECK_KEY, [context.getHandler(), context.getClass()]) === true;
  }

  /**
   * The object the token is read from: by default the HTTP request (Express or Fastify), the
   * transport context of an RPC call (never its message data, which the client writes) or the
   * client socket of a WebSocket message. Over HTTP, and in contexts other than `rpc` and `ws`,
   * the claims are left on it as `tokenClaims`, which is where `@TokenClaims()` looks; RPC and
   * WebSocket claims are kept per call whatever this returns (see `TokenClaims`). The default
   * {@link extractToken} reads `request.headers`, which only the HTTP request has: for RPC or
   * WebSockets override that too. For GraphQL or other contexts override this as well, with a
   * decorator of your own (see `TokenClaims`).
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
   * The exception for every `401` of the guard, after setting its challenge with
   * {@link setChallenge}: `reason` becomes the body's `message` ({@link TOKEN_GUARD_MESSAGES})
   * and, with `error` (`invalid_token` for any token it refuses), the challenge's
   * `error_description`. Override to shape the body. A `401` that an overridden
   * {@link verifyToken} makes itself does not come here: it is thrown as it is, with the
   * challenge added.
   */
  protected unauthorized(context: ExecutionContext, reason: string, error?: string): UnauthorizedException {
    this.setChallenge(context, error, error === undefined ? undefined : reason);
    return new UnauthorizedException(reason);
  }

  /**
   * Sets the RFC 6750 challenge of a `401` on the response of `context`
   * ({@link getResponse}): `WWW-Authenticate: Bearer` without `error`, else `Bearer
   * error="<error>", error_description="<description>"`, with `realm="..."` first when
   * {@link realm} is set. Values are sanitised for the header (see `bearerChallenge`). Sets
   * it with `setHeader` (Express, Node) or `header` (Fastify); a response with neither, or
   * none (outside HTTP), is left alone. Override to change the header alone.
   *
   * @param error RFC 6750 §3.1 error code; none (the default) for a request without a token.
   * @param description the `error_description`, sent only with `error`; none by default.
   */
  protected setChallenge(context: ExecutionContext, error?: string, description?: string): void {
    const challenge = bearerChallenge({ realm: this.realm, error, errorDescription: description });
    const response = this.getResponse(context) as { setHeader?: unknown; header?: unknown } | null | undefined;
    if (typeof response?.setHeader === 'function') response.setHeader('WWW-Authenticate', challenge);
    else if (typeof response?.header === 'function') response.header('WWW-Authenticate', challenge);
  }

  /**
   * Whether the response of `context` carries a `WWW-Authenticate` header already (read with
   * `getHeader`, which Express, Node and Fastify responses have); `false` when it cannot tell.
   */
  protected hasChallenge(context: ExecutionContext): boolean {
    const response = this.getResponse(context) as { getHeader?: (name: string) => unknown } | null | undefined;
    return typeof response?.getHeader === 'function' && response.getHeader('WWW-Authenticate') !== undefined;
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
   *
   * Its `401`s are `UnauthorizedException`s that `canActivate` answers through
   * {@link unauthorized}, with the reason as `message`. A `401` an override throws itself (a
   * body of its own, a `cause`) reaches the client as it is, given the `invalid_token`
   * challenge with its `message` as `error_description`.
   */
  protected async verifyToken(token: string): Promise<TokenClaimsPayload> {
    let claims: TokenClaimsPayload;
    try {
      claims = await this.codec.verify(token);
    } catch (error) {
      if (error instanceof TokenResourceUnavailableError) {
        this.outageLog.refused('token keys', error);
        throw new ServiceUnavailableException(MESSAGES.keysUnavailable);
      }
      throw new GuardRefusal(rejectionReason(error));
    }
    this.outageLog.answered('token keys');
    if (!nonEmptyString(claims.jti) || !nonEmptyString(claims.sub)) throw new GuardRefusal(MESSAGES.missingClaims);
    if (claims.purpose !== undefined && claims.purpose !== this.options.authenticationPurpose) {
      throw new GuardRefusal(MESSAGES.wrongPurpose);
    }
    return claims;
  }

  /**
   * One store round trip for verified claims, bounded by `storeTimeoutMs`. Any failure or
   * timeout is answered `503` and counted in the {@link outageLog} (never with the token).
   */
  protected async checkStore(claims: TokenClaimsPayload): Promise<TokenCheck> {
    try {
      const check = await withTimeout(this.tokenService.checkClaims(claims), this.options.storeTimeoutMs);
      this.outageLog.answered('token store');
      return check;
    } catch (error) {
      this.outageLog.refused('token store', error);
      throw new ServiceUnavailableException(MESSAGES.storeUnavailable);
    }
  }
}

/**
 * A `401` of the guard's own {@link RevokedTokenGuard.verifyToken}: an `UnauthorizedException`
 * to subclasses that catch it, told apart by `canActivate` from one a subclass made itself,
 * which it must not replace.
 */
class GuardRefusal extends UnauthorizedException {}

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
