import { createParamDecorator, type ExecutionContext } from '@nestjs/common';
import type { TokenClaimsPayload } from '../jwt/token-codec.js';
import { TOKEN_CLAIMS_KEY } from './token-guard.constants.js';

/** The verified claims {@link RevokedTokenGuard} attached to a request, if any. */
export function getTokenClaims(request: unknown): TokenClaimsPayload | undefined {
  return (request as Record<string, TokenClaimsPayload | undefined> | undefined)?.[TOKEN_CLAIMS_KEY];
}

/**
 * Parameter decorator yielding the JWT payload verified by {@link RevokedTokenGuard}:
 * `@TokenClaims() claims` for the whole payload, `@TokenClaims('sub') subject` for one
 * claim. `undefined` on routes the guard did not check (`@SkipTokenCheck()`).
 */
export const TokenClaims = createParamDecorator((claim: string | undefined, context: ExecutionContext) => {
  const claims = getTokenClaims(context.switchToHttp().getRequest());
  return claim === undefined ? claims : claims?.[claim];
});
