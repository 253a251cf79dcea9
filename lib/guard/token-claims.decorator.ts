import { createParamDecorator, type ExecutionContext } from '@nestjs/common';
import type { TokenClaimsPayload } from '../jwt/token-codec.js';
import { requestOf } from './request-of.js';
import { TOKEN_CLAIMS_KEY } from './token-guard.constants.js';

/** The verified claims {@link RevokedTokenGuard} attached to a request, if any. */
export function getTokenClaims(request: unknown): TokenClaimsPayload | undefined {
  return (request as Record<string, TokenClaimsPayload | undefined> | undefined)?.[TOKEN_CLAIMS_KEY];
}

/**
 * Parameter decorator yielding the JWT payload verified by {@link RevokedTokenGuard}:
 * `@TokenClaims() claims` for the whole payload, `@TokenClaims('sub') subject` for one
 * claim. `undefined` on routes the guard did not check (`@SkipTokenCheck()`).
 *
 * It reads the object the guard's default `getRequest` uses: the HTTP request, the transport
 * context of an RPC call (`switchToRpc().getContext()`; never the message data, which the
 * client could fill with claims of its choosing) or the client socket of a WebSocket message
 * (`switchToWs().getClient()`; there the claims are those of the last message the guard
 * admitted on that connection).
 *
 * A guard subclass whose `getRequest` returns another object (GraphQL's `req`, the message
 * data of an RPC transport without headers, ...) leaves the claims there, so it needs a
 * decorator that reads them from the same object with {@link getTokenClaims}:
 *
 * ```ts
 * @Injectable()
 * export class GqlTokenGuard extends RevokedTokenGuard {
 *   protected override getRequest(context: ExecutionContext) {
 *     return GqlExecutionContext.create(context).getContext().req;
 *   }
 *   protected override getResponse(context: ExecutionContext) {
 *     return GqlExecutionContext.create(context).getContext().req?.res;
 *   }
 * }
 * export const GqlTokenClaims = createParamDecorator((claim: string | undefined, context: ExecutionContext) => {
 *   const claims = getTokenClaims(GqlExecutionContext.create(context).getContext().req);
 *   return claim === undefined ? claims : claims?.[claim];
 * });
 * ```
 */
export const TokenClaims = createParamDecorator((claim: string | undefined, context: ExecutionContext) => {
  const claims = getTokenClaims(requestOf(context));
  return claim === undefined ? claims : claims?.[claim];
});
