import { Controller, Get } from '@nestjs/common';
import { ApiOkResponse, ApiServiceUnavailableResponse } from '@nestjs/swagger';
import { HealthCheck, HealthCheckService, type HealthCheckResult } from '@nestjs/terminus';
import { SkipTokenCheck, TokenStoreHealthIndicator } from '../../lib/index.js';

/** Readiness for load balancers and the start-up test: can the app check tokens? */
@Controller('health')
@SkipTokenCheck()
export class HealthController {
  constructor(
    private readonly health: HealthCheckService,
    private readonly tokenStore: TokenStoreHealthIndicator,
  ) {}

  /**
   * `GET /health` → `{status: 'ok', info: {tokenStore: {status: 'up'}}, ...}`, or `503` with
   * `error.tokenStore: {status: 'down', message}` when the token store does not answer within
   * `storeTimeoutMs`.
   */
  @Get()
  @HealthCheck()
  @ApiOkResponse({ description: 'The token store answers' })
  @ApiServiceUnavailableResponse({ description: 'The token store does not answer in time; tokens cannot be checked' })
  check(): Promise<HealthCheckResult> {
    return this.health.check([() => this.tokenStore.isHealthy()]);
  }
}
