import { Controller, Get, ServiceUnavailableException } from '@nestjs/common';
import { DataSource } from 'typeorm';
import { SkipTokenCheck } from '../../lib/index.js';

/** Liveness and database reachability, for load balancers and the start-up test. */
@Controller('health')
@SkipTokenCheck()
export class HealthController {
  constructor(private readonly dataSource: DataSource) {}

  /** `GET /health` → `{status: 'ok'}`, or `503` when the database does not answer. */
  @Get()
  async health(): Promise<{ status: 'ok' }> {
    try {
      await this.dataSource.query('SELECT 1');
    } catch {
      throw new ServiceUnavailableException('database unavailable');
    }
    return { status: 'ok' };
  }
}
