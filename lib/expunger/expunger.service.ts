import { Inject, Injectable } from '@nestjs/common';
import type { ResolvedTokenResourceOptions } from '../options/resolved-options.js';
import { TOKEN_RESOURCE_OPTIONS } from '../token-resource.constants.js';
import { TokenService } from '../token.service.js';

/** Outcome of one expunge run. */
export interface ExpungeRunResult {
  deleted: number;
  skipped: boolean;
  durationMs: number;
}

/** Periodically deletes expired token rows (placeholder until issue 4 lands). */
@Injectable()
export class ExpungerService {
  constructor(
    @Inject(TOKEN_RESOURCE_OPTIONS) readonly options: ResolvedTokenResourceOptions,
    private readonly tokens: TokenService,
  ) {}

  /** Runs one expunge. */
  async run(): Promise<ExpungeRunResult> {
    const started = performance.now();
    const deleted = await this.tokens.expungeExpired();
    return { deleted, skipped: false, durationMs: performance.now() - started };
  }
}
