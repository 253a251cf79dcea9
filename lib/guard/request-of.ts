import type { ExecutionContext } from '@nestjs/common';

/**
 * The object {@link RevokedTokenGuard} reads the token from by default, by the type of the
 * context (over HTTP, and in contexts other than `rpc` and `ws`, it also leaves the claims
 * there as `tokenClaims`; see `call-claims.ts` for RPC and WebSockets):
 *
 * - `http`: the request (Express or Fastify).
 * - `rpc`: the transport context (`switchToRpc().getContext()`). Never the message data: the
 *   client writes that.
 * - `ws`: the client socket (`switchToWs().getClient()`), whose handshake carries the headers.
 * - anything else (GraphQL, ...): the first handler argument, as `switchToHttp().getRequest()`
 *   gives it. Such contexts need a guard subclass and a decorator of their own (see
 *   `docs/guard-recipes.md`).
 */
// eslint-disable-next-line @typescript-eslint/no-explicit-any -- whatever object the transport hands over, as Nest's own getRequest
export function requestOf(context: ExecutionContext): Record<string, any> {
  switch (context.getType()) {
    case 'rpc':
      return context.switchToRpc().getContext();
    case 'ws':
      return context.switchToWs().getClient();
    default:
      return context.switchToHttp().getRequest();
  }
}
