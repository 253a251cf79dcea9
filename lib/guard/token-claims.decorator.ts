import { createParamDecorator, type ExecutionContext } from '@nestjs/common';
import type { TokenClaimsPayload } from '../jwt/token-codec.js';
import { readCallClaims, requestClaims } from './call-claims.js';

/**
 * The verified claims {@link RevokedTokenGuard} left for a call, if any. Given the call's
 * `ExecutionContext` (in an interceptor, a pipe): what `@TokenClaims()` yields, for every
 * context type. Given a request object: its `tokenClaims` property, where the guard leaves
 * them over HTTP, or on the object a subclass's `getRequest` returns (GraphQL's `req`).
 */
export function getTokenClaims(source: unknown): TokenClaimsPayload | undefined {
  return isExecutionContext(source) ? readCallClaims(source) : requestClaims(source);
}

/**
 * Parameter decorator yielding the JWT payload verified by {@link RevokedTokenGuard}:
 * `@TokenClaims() claims` for the whole payload, `@TokenClaims('sub') subject` for one
 * claim. `undefined` where the guard did not admit this very call (`@SkipTokenCheck()`, no
 * guard), whatever calls before it on the same connection were admitted.
 *
 * Over HTTP it reads `request.tokenClaims`; for an RPC call or a WebSocket message, the
 * claims the guard kept for that call (see `call-claims.ts`), never the message data. A
 * WebSocket message whose payload is no object gets `undefined`. For GraphQL and other
 * contexts, see `docs/guard-recipes.md`.
 */
export const TokenClaims = createParamDecorator((claim: string | undefined, context: ExecutionContext) => {
  const claims = readCallClaims(context);
  return claim === undefined ? claims : claims?.[claim];
});

/** An `ExecutionContext` rather than a request: a request has no `getType`/`switchToHttp`. */
function isExecutionContext(value: unknown): value is ExecutionContext {
  const candidate = value as Partial<ExecutionContext> | null | undefined;
  return (
    typeof candidate?.getType === 'function' && typeof candidate.switchToHttp === 'function' && typeof candidate.getArgs === 'function'
  );
}
