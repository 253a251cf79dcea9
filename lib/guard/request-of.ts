import type { ExecutionContext } from '@nestjs/common';

/**
 * The per-call object {@link RevokedTokenGuard} reads the token from and leaves the verified
 * claims on, and that `@TokenClaims()` reads them back from, by the type of the context:
 *
 * - `http`: the request (Express or Fastify).
 * - `rpc`: the transport context (`switchToRpc().getContext()`). Never the message data: the
 *   client writes that, so claims read from it could be forged on a handler the guard did
 *   not check.
 * - `ws`: the client socket (`switchToWs().getClient()`).
 * - anything else (GraphQL, ...): the first handler argument, as `switchToHttp().getRequest()`
 *   gives it. Such contexts need a guard subclass and a decorator of their own (see
 *   `TokenClaims`).
 */
export function requestOf(context: ExecutionContext): Record<string, any> {
  switch (context.getType()) {
    case 'rpc': return context.switchToRpc().getContext();
    case 'ws': return context.switchToWs().getClient();
    default: return context.switchToHttp().getRequest();
  }
}
