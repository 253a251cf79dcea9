import { ServiceUnavailableException } from '@nestjs/common';
import type { TokenClaimsPayload } from '../jwt/token-codec.js';
import type { OutageLog } from '../outage-log.js';
import type { TokenCheck, TokenService } from '../token.service.js';
import { TOKEN_GUARD_MESSAGES as MESSAGES } from './token-guard.constants.js';

/**
 * Why verified claims cannot authenticate a call, as a reason of `TOKEN_GUARD_MESSAGES`, or
 * `undefined` when they can be checked: they need `jti` and `sub`, and a `purpose` claim must
 * be `authenticationPurpose` (an e-mailed confirmation token is no session).
 */
export function claimsProblem(claims: TokenClaimsPayload, authenticationPurpose: string): string | undefined {
  if (!nonEmptyString(claims.jti) || !nonEmptyString(claims.sub)) return MESSAGES.missingClaims;
  if (claims.purpose !== undefined && claims.purpose !== authenticationPurpose) return MESSAGES.wrongPurpose;
  return undefined;
}

/**
 * One store check of verified claims, fail closed: any failure or timeout (`storeTimeoutMs`)
 * becomes `503` and is counted in `outageLog` (never with the token).
 *
 * @throws ServiceUnavailableException when the store cannot answer.
 */
export async function checkStoreOrRefuse(
  tokenService: TokenService,
  outageLog: OutageLog,
  claims: TokenClaimsPayload,
): Promise<TokenCheck> {
  try {
    const check = await tokenService.checkClaims(claims);
    outageLog.answered('token store');
    return check;
  } catch (error) {
    outageLog.refused('token store', error);
    throw new ServiceUnavailableException(MESSAGES.storeUnavailable);
  }
}

function nonEmptyString(value: unknown): value is string {
  return typeof value === 'string' && value !== '';
}
