import { Inject, Injectable, Optional, UnauthorizedException } from '@nestjs/common';
import type { TokenClaimsPayload } from '../jwt/token-codec.js';
import type { CheckOutcome } from '../observability/metric-names.js';
import { NO_METRICS, TokenResourceMetrics } from '../observability/token-resource-metrics.js';
import type { ResolvedTokenResourceOptions } from '../options/resolved-options.js';
import { OutageLog } from '../outage-log.js';
import { TOKEN_RESOURCE_OPTIONS } from '../token-resource.internal-constants.js';
import { TokenService } from '../token.service.js';
import { TOKEN_GUARD_MESSAGES as MESSAGES } from './token-guard.constants.js';
import { checkStoreOrRefuse, claimsProblem } from './verified-claims.js';

/**
 * The revocation half of {@link RevokedTokenGuard}, for a JWT that something else has
 * verified already: an existing `@nestjs/passport` + `passport-jwt` strategy keeps its own
 * verification and calls {@link validate} from `JwtStrategy.validate()` (README "Using with
 * Passport"). Same answers as the guard: `401` for a revoked token, one without `jti` or
 * `sub`, one of another purpose than `authenticationPurpose`, or (with
 * `requireTokenPresenceForAuthentication`) one not stored; `503` when the store cannot answer
 * within `storeTimeoutMs` (fail closed, never admitted). Counted in `token_resource.checks`
 * like the guard's checks.
 */
@Injectable()
export class RevokedTokenCheck {
  constructor(
    @Inject(TOKEN_RESOURCE_OPTIONS) private readonly options: ResolvedTokenResourceOptions,
    private readonly tokenService: TokenService,
    @Optional() private readonly outageLog: OutageLog = new OutageLog(),
    @Optional() private readonly metrics: TokenResourceMetrics = NO_METRICS,
  ) {}

  /**
   * Checks the verified payload of a JWT against the token store and returns it unchanged
   * when the token may authenticate the call. Never pass a payload nobody verified: its
   * claims are trusted as they are.
   *
   * @param payload the JWT payload as the caller's verification left it (`passport-jwt`'s).
   * @throws UnauthorizedException when the token is revoked or cannot authenticate (see above).
   * @throws ServiceUnavailableException when the token store cannot answer.
   */
  async validate<Payload extends object>(payload: Payload): Promise<Payload> {
    const started = performance.now();
    let outcome: CheckOutcome = 'invalid';
    try {
      const claims = (payload ?? {}) as TokenClaimsPayload;
      const problem = claimsProblem(claims, this.options.authenticationPurpose);
      if (problem !== undefined) throw new UnauthorizedException(problem);
      outcome = 'unavailable';
      const check = await checkStoreOrRefuse(this.tokenService, this.outageLog, claims);
      if (check.revoked) {
        outcome = 'revoked';
        throw new UnauthorizedException(MESSAGES.revoked);
      }
      if (this.options.requireTokenPresenceForAuthentication && !check.presentForAuthentication) {
        outcome = 'not_recognised';
        throw new UnauthorizedException(MESSAGES.notRecognised);
      }
      outcome = 'admitted';
      return payload;
    } finally {
      this.metrics.checked(outcome, started);
    }
  }
}
