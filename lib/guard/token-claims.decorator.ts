import { createParamDecorator, type ExecutionContext } from '@nestjs/common';
import type { TokenClaimsPayload } from '../jwt/token-codec.js';
import { readCallClaims, requestClaims } from './call-claims.js';

/**
 * The verified claims {@link RevokedTokenGuard} left for a call, if any.
 *
 * - Given the `ExecutionContext` of the call (in an interceptor, a pipe, a guard that runs
 *   after it): what `@TokenClaims()` yields, for every context type, WebSocket messages and RPC
 *   calls included.
 * - Given a request object: its `tokenClaims` property, where the guard leaves the claims over
 *   HTTP and, in a subclass whose `getRequest` returns another object (GraphQL's `req`, ...),
 *   on that object. WebSocket and RPC claims are not on any object (see `TokenClaims`); read
 *   them with the context.
 */
export function getTokenClaims(source: ExecutionContext | unknown): TokenClaimsPayload | undefined {
  return isExecutionContext(source) ? readCallClaims(source) : requestClaims(source);
}

/**
 * Parameter decorator yielding the JWT payload verified by {@link RevokedTokenGuard}:
 * `@TokenClaims() claims` for the whole payload, `@TokenClaims('sub') subject` for one
 * claim. `undefined` where the guard did not admit this very call: on a handler it did not
 * check (`@SkipTokenCheck()`, or no guard at all), whatever calls before it on the same
 * connection were admitted.
 *
 * Where it reads them, by context type:
 * - `http`: `request.tokenClaims`, the property of the request (Express or Fastify) the guard
 *   sets.
 * - `rpc`: the claims the guard kept for this call, keyed by its transport context
 *   (`switchToRpc().getContext()`), which Nest creates per message. Never anything in the
 *   message data, which the client could fill with claims of its choosing.
 * - `ws`: the claims the guard kept for this message, keyed by its payload
 *   (`switchToWs().getData()`). Nothing is left on the client socket, which outlives the
 *   message: the claims of one message never reach another, be it refused, skipped or running
 *   at the same time. A message whose payload is no object (a string, a number, none) has
 *   nothing to key them by and gets `undefined`: send an object payload to a handler that
 *   needs the claims.
 *
 * A guard subclass whose `getRequest` returns another object in a context other than `rpc` or
 * `ws` (GraphQL's `req`, ...) leaves the claims there, so it needs a decorator that reads them
 * from the same object with {@link getTokenClaims}:
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
  const claims = readCallClaims(context);
  return claim === undefined ? claims : claims?.[claim];
});

/** An `ExecutionContext` rather than a request: a request has no `getType`/`switchToHttp`. */
function isExecutionContext(value: unknown): value is ExecutionContext {
  const candidate = value as Partial<ExecutionContext> | null | undefined;
  return typeof candidate?.getType === 'function' && typeof candidate.switchToHttp === 'function' && typeof candidate.getArgs === 'function';
}
