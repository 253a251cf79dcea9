import type { ExecutionContext } from '@nestjs/common';
import type { TokenClaimsPayload } from '../jwt/token-codec.js';
import { requestOf } from './request-of.js';
import { TOKEN_CLAIMS_KEY } from './token-guard.constants.js';

/**
 * The claims of WebSocket messages and RPC calls, keyed by an object that exists for that one
 * call (see {@link callKeyOf}). Not a property of the client socket, which outlives the
 * message (an admitted message's claims would reach later, refused or skipped ones), nor of
 * the message data, which the client writes. A `WeakMap` entry only the guard can make, and
 * it goes with its key.
 *
 * Nest hands guards and parameter decorators different argument arrays and contexts for one
 * call, so neither can be the key; the elements of the array are the same objects.
 */
const claimsByCall = new WeakMap<object, TokenClaimsPayload>();

/**
 * The object that stands for one call, `undefined` for other contexts (whose claims are on
 * the request) or when the call has none: for `rpc` the transport context, which every Nest
 * transport creates per message; for `ws` the message payload when it is an object, parsed
 * afresh for every message. A payload that is no object has no identity of its own, and
 * the socket outlives the call, so such a message gets no claims rather than another's.
 */
export function callKeyOf(context: ExecutionContext): object | undefined {
  switch (context.getType()) {
    case 'rpc':
      return objectOrUndefined(context.switchToRpc().getContext());
    case 'ws':
      return objectOrUndefined(context.switchToWs().getData());
    default:
      return undefined;
  }
}

/** Whether the claims of `context` live in {@link claimsByCall} rather than on the request. */
function keyedByCall(context: ExecutionContext): boolean {
  const type = context.getType();
  return type === 'ws' || type === 'rpc';
}

/**
 * Leaves `claims` where {@link readCallClaims} finds them for this call, or with `undefined`
 * removes whatever is there: over HTTP (and in contexts other than `ws` and `rpc`) the
 * `tokenClaims` property of `request`, the object the guard read the token from; for
 * WebSocket messages and RPC calls an entry keyed by {@link callKeyOf}.
 */
export function writeCallClaims(context: ExecutionContext, request: unknown, claims: TokenClaimsPayload | undefined): void {
  if (keyedByCall(context)) {
    const key = callKeyOf(context);
    if (key === undefined) return;
    if (claims === undefined) claimsByCall.delete(key);
    else claimsByCall.set(key, claims);
    return;
  }
  if (request === null || typeof request !== 'object') return;
  // This runs on every request, skipped ones too: touch the request only when it has claims
  // to lose.
  if (claims !== undefined) (request as Record<string, unknown>)[TOKEN_CLAIMS_KEY] = claims;
  else if (Object.hasOwn(request, TOKEN_CLAIMS_KEY)) delete (request as Record<string, unknown>)[TOKEN_CLAIMS_KEY];
}

/**
 * The claims the guard left for the call of `context`: the `tokenClaims` property of the
 * request the default `getRequest` returns (HTTP and other contexts), or the entry of the
 * WebSocket message or RPC call. Never a property of RPC or WebSocket message data.
 */
export function readCallClaims(context: ExecutionContext): TokenClaimsPayload | undefined {
  if (keyedByCall(context)) {
    const key = callKeyOf(context);
    return key === undefined ? undefined : claimsByCall.get(key);
  }
  return requestClaims(requestOf(context));
}

/** The `tokenClaims` property of a request object, if it is one. */
export function requestClaims(request: unknown): TokenClaimsPayload | undefined {
  return request !== null && typeof request === 'object'
    ? (request as Record<string, TokenClaimsPayload | undefined>)[TOKEN_CLAIMS_KEY]
    : undefined;
}

function objectOrUndefined(value: unknown): object | undefined {
  return (typeof value === 'object' && value !== null) || typeof value === 'function' ? value : undefined;
}
