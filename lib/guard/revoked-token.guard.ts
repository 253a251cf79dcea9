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
import type { CheckOutcome } from '../observability/metric-names.js';
import { NO_METRICS, TokenResourceMetrics } from '../observability/token-resource-metrics.js';
import type { ResolvedTokenResourceOptions } from '../options/resolved-options.js';
import { OutageLog } from '../outage-log.js';
import { TOKEN_RESOURCE_OPTIONS } from '../token-resource.internal-constants.js';
import { TokenResourceUnavailableError } from '../token-resource.exceptions.js';
import { TokenService, type TokenCheck } from '../token.service.js';
import { bearerChallenge } from './bearer-challenge.js';
import { writeCallClaims } from './call-claims.js';
import { requestOf } from './request-of.js';
import { checkStoreOrRefuse, claimsProblem } from './verified-claims.js';
import { SKIP_TOKEN_CHECK_KEY, TOKEN_GUARD_MESSAGES as MESSAGES } from './token-guard.constants.js';

/** `Authorization: Bearer <token>`, scheme in any case; the token is one run of non-space characters. */
const BEARER = /^Bearer[ \t]+(\S+)[ \t]*$/i;

/**
 * Admits a call only with a valid, unrevoked bearer JWT: verifies it with the module's jwt
 * options, requires `jti` and `sub`, then asks the token store in one round trip whether it
 * is revoked (and, with `requireTokenPresenceForAuthentication`, whether it is stored).
 * A token it refuses gets `401` with an RFC 6750 challenge; a store that cannot answer within
 * `storeTimeoutMs`, or an unreachable JWKS, gets `503` (fail closed). The verified payload is
 * left for the admitted call alone (read it with `@TokenClaims()`). Each check it makes (not
 * the calls `@SkipTokenCheck()` lets through) is counted in `token_resource.checks`, by
 * outcome, and timed in `token_resource.check.duration`.
 *
 * Its protected hooks take the `ExecutionContext` (`extractToken` takes the request), and
 * every `401` goes through {@link throwUnauthorized}. Recipes for cookies, RPC, WebSockets
 * and GraphQL: `docs/guard-recipes.md`.
 */
@Injectable()
export class RevokedTokenGuard implements CanActivate {
  /** A logger for subclasses; the guard's own store and key failures go to {@link outageLog}. */
  protected readonly logger = new Logger(RevokedTokenGuard.name);

  /** The `realm` of the `WWW-Authenticate` challenge; none by default. */
  protected readonly realm?: string;

  constructor(
    @Inject(TOKEN_RESOURCE_OPTIONS) protected readonly options: ResolvedTokenResourceOptions,
    protected readonly codec: TokenCodec,
    protected readonly tokenService: TokenService,
    protected readonly reflector: Reflector,
    /** Where store and key failures are logged: the module's; a guard built with `new` gets its own. */
    @Optional() protected readonly outageLog: OutageLog = new OutageLog(),
    /** Where each check's outcome and duration are recorded (README "Observability"); nothing for a guard built with `new`. */
    @Optional() protected readonly metrics: TokenResourceMetrics = NO_METRICS,
  ) {}

  /**
   * @throws UnauthorizedException (through {@link throwUnauthorized}) for a missing or refused token.
   * @throws ServiceUnavailableException when the token store or the JWKS cannot answer.
   */
  async canActivate(context: ExecutionContext): Promise<boolean> {
    const request = this.getRequest(context);
    // Before the skip check: the object may carry claims already (a second guard, a property
    // written upstream), and a call skipped or refused must not get claims nobody verified.
    writeCallClaims(context, request, undefined);
    if (this.shouldSkip(context)) return true;
    const started = performance.now();
    // What a refusal counts as: set before each step that may refuse, so that the metrics
    // follow the hooks, overridden or not, without a second look at their errors.
    let outcome: CheckOutcome = 'invalid';
    try {
      const token = this.extractToken(request);
      // RFC 6750 §3.1: a request without credentials is challenged with no error code.
      if (typeof token !== 'string' || token === '') return this.throwUnauthorized(context, MESSAGES.missingToken);
      const claims = await this.verifyToken(context, token);
      const check = await this.checkStore(context, claims);
      if (check.revoked) {
        outcome = 'revoked';
        return this.throwUnauthorized(context, MESSAGES.revoked, 'invalid_token');
      }
      if (this.options.requireTokenPresenceForAuthentication && !check.presentForAuthentication) {
        outcome = 'not_recognised';
        return this.throwUnauthorized(context, MESSAGES.notRecognised, 'invalid_token');
      }
      writeCallClaims(context, request, claims);
      outcome = 'admitted';
      return true;
    } catch (error) {
      if (error instanceof ServiceUnavailableException) outcome = 'unavailable';
      throw error;
    } finally {
      this.metrics.checked(outcome, started);
    }
  }

  /** Whether `@SkipTokenCheck()` applies; the handler's setting overrides the controller's. */
  protected shouldSkip(context: ExecutionContext): boolean {
    return this.reflector.getAllAndOverride<boolean | undefined>(SKIP_TOKEN_CHECK_KEY, [context.getHandler(), context.getClass()]) === true;
  }

  /**
   * The object the token is read from: the HTTP request, the RPC transport context (never the
   * message data, which the client writes) or the WebSocket client. Over HTTP, and in contexts
   * other than `rpc` and `ws`, the claims are left on it as `tokenClaims`. Override for
   * GraphQL or other contexts, with a parameter decorator of your own (see `getTokenClaims`).
   */
  // eslint-disable-next-line @typescript-eslint/no-explicit-any -- whatever object the transport hands over, as Nest's own getRequest
  protected getRequest(context: ExecutionContext): Record<string, any> {
    return requestOf(context);
  }

  /**
   * The response the `WWW-Authenticate` header is set on: the Express response or Fastify
   * reply; `undefined` outside HTTP, where there is no header to set.
   */
  protected getResponse(context: ExecutionContext): unknown {
    return context.getType() === 'http' ? context.switchToHttp().getResponse() : undefined;
  }

  /**
   * The raw token of `request` ({@link getRequest}): by default the `Authorization: Bearer
   * <token>` header, scheme in any case. `undefined` means no token (`401`). Override to read
   * a cookie or the headers of an RPC or WebSocket transport.
   */
  // eslint-disable-next-line @typescript-eslint/no-explicit-any -- whatever object the transport hands over, as Nest's own getRequest
  protected extractToken(request: Record<string, any>): string | undefined {
    // eslint-disable-next-line @typescript-eslint/no-unsafe-member-access -- read defensively, checked below
    const header: unknown = request?.headers?.authorization;
    if (typeof header !== 'string') return undefined;
    return BEARER.exec(header)?.[1];
  }

  /**
   * Verifies signature, algorithm, issuer, audience, `exp` and `nbf`, requires `jti` and
   * `sub`, and refuses a `purpose` claim other than `authenticationPurpose` (an e-mailed
   * confirmation token is no session). Refuses through {@link throwUnauthorized}, with a
   * reason of {@link TOKEN_GUARD_MESSAGES}; throws `503` when a remote JWKS is unreachable.
   */
  protected async verifyToken(context: ExecutionContext, token: string): Promise<TokenClaimsPayload> {
    let claims: TokenClaimsPayload;
    try {
      claims = await this.codec.verify(token);
    } catch (error) {
      if (error instanceof TokenResourceUnavailableError) {
        this.outageLog.refused('token keys', error);
        throw new ServiceUnavailableException(MESSAGES.keysUnavailable);
      }
      return this.throwUnauthorized(context, rejectionReason(error), 'invalid_token');
    }
    this.outageLog.answered('token keys');
    const problem = claimsProblem(claims, this.options.authenticationPurpose);
    if (problem !== undefined) return this.throwUnauthorized(context, problem, 'invalid_token');
    return claims;
  }

  /**
   * One store round trip for verified claims. The store bounds it by `storeTimeoutMs`; any
   * failure or timeout is answered `503` and counted in the {@link outageLog} (never with the
   * token).
   */
  protected checkStore(_context: ExecutionContext, claims: TokenClaimsPayload): Promise<TokenCheck> {
    return checkStoreOrRefuse(this.tokenService, this.outageLog, claims);
  }

  /**
   * Throws every `401` of the guard, after setting its challenge with {@link setChallenge}:
   * `reason` ({@link TOKEN_GUARD_MESSAGES}) is the body's `message` and, with `error`
   * (`invalid_token` for a token it refuses), the challenge's `error_description`. Override
   * to shape the body or the challenge in one place; hooks that refuse call it too. Callers
   * `return` it, so that an override that returns after all still refuses the call.
   *
   * @param error RFC 6750 §3.1 error code; none for a request without a token.
   */
  protected throwUnauthorized(context: ExecutionContext, reason: string, error?: string): never {
    this.setChallenge(context, error, error === undefined ? undefined : reason);
    throw new UnauthorizedException(reason);
  }

  /**
   * Sets `WWW-Authenticate: Bearer` (with `realm`, `error`, `error_description` where given,
   * sanitised for the header) on the response of `context` ({@link getResponse}), with
   * `setHeader` (Express) or `header` (Fastify); a response with neither is left alone.
   */
  protected setChallenge(context: ExecutionContext, error?: string, description?: string): void {
    const challenge = bearerChallenge({ realm: this.realm, error, errorDescription: description });
    type HeaderSetter = (name: string, value: string) => unknown;
    const response = this.getResponse(context) as { setHeader?: HeaderSetter; header?: HeaderSetter } | null | undefined;
    if (typeof response?.setHeader === 'function') response.setHeader('WWW-Authenticate', challenge);
    else if (typeof response?.header === 'function') response.header('WWW-Authenticate', challenge);
  }
}

function rejectionReason(error: unknown): string {
  const cause = (error as { cause?: unknown })?.cause;
  if (cause instanceof joseErrors.JWTExpired) return MESSAGES.expired;
  if (cause instanceof joseErrors.JWTClaimValidationFailed) {
    switch (cause.claim) {
      case 'nbf':
        return MESSAGES.notYetValid;
      case 'iss':
        return MESSAGES.wrongIssuer;
      case 'aud':
        return MESSAGES.wrongAudience;
    }
  }
  return MESSAGES.invalidToken;
}
