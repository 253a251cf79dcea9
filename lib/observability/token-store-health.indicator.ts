import type { ResolvedTokenResourceOptions } from '../options/resolved-options.js';
import type { RevocationCache } from '../revocation-cache/revocation.cache.js';
import type { Statement, TokenStore } from '../token.store.js';

/** What {@link TokenStoreHealthIndicator.isHealthy} reports under its key. */
export interface TokenStoreHealth {
  /** `up` when the token store answered within `storeTimeoutMs`, else `down`. */
  status: 'up' | 'down';
  /** Why it is down: the store's error or `the token store gave no answer within N ms`. */
  message?: string;
  /** The error code behind a `down` (`ECONNREFUSED`, a SQLSTATE), when there is one. */
  code?: string;
  /**
   * With the revocation cache on: whether it may answer checks from memory now (a poll
   * sent within `maxStalenessMs` has been answered). A cache that is not fresh sends every
   * check to the store, which stays correct but costs a round trip each.
   */
  revocationCache?: { fresh: boolean };
}

/**
 * The part of `@nestjs/terminus`' `HealthIndicatorService` the indicator uses, written out so
 * that the published declarations do not need the package.
 */
export interface HealthIndicatorSessions {
  check<Key extends string>(
    key: Key,
  ): {
    up(data: Omit<TokenStoreHealth, 'status'>): Record<Key, TokenStoreHealth>;
    down(data: Omit<TokenStoreHealth, 'status'>): Record<Key, TokenStoreHealth>;
  };
}

/**
 * A health indicator of the token store for `@nestjs/terminus`. `TokenResourceModule`
 * provides and exports it whenever `@nestjs/terminus` is installed, so a health controller
 * injects it with no provider of its own:
 *
 * ```ts
 * @Get('health') @HealthCheck()
 * check() { return this.health.check([() => this.tokenStore.isHealthy()]); }
 * ```
 */
export class TokenStoreHealthIndicator {
  private readonly probe: Statement;

  /** @internal built by `TokenResourceModule`. */
  constructor(
    private readonly store: TokenStore,
    private readonly cache: RevocationCache,
    private readonly options: Pick<ResolvedTokenResourceOptions, 'storeTimeoutMs' | 'revocationCache'>,
    private readonly indicators: HealthIndicatorSessions,
  ) {
    // Planned against the token table (it exists, and the application may read it), read nothing.
    this.probe = { ...store.statement('health', `SELECT NULL FROM ${store.table} LIMIT 0`), timeoutMs: options.storeTimeoutMs };
  }

  /**
   * `{ [key]: { status: 'up' } }` when the token store answers within `storeTimeoutMs`,
   * `{ [key]: { status: 'down', message, code? } }` when it does not (an unreachable
   * database, a missing table, a pool with no connection free in time). With the revocation
   * cache on, either carries `revocationCache: { fresh }`. Never throws and never waits
   * longer than `storeTimeoutMs`: terminus turns a `down` into `503`.
   *
   * @param key the key of the result. Default `'tokenStore'`.
   */
  async isHealthy<Key extends string = 'tokenStore'>(key: Key = 'tokenStore' as Key): Promise<Record<Key, TokenStoreHealth>> {
    const session = this.indicators.check(key);
    const cache = this.options.revocationCache.enabled ? { revocationCache: { fresh: this.cache.fresh } } : {};
    try {
      await this.store.query(this.probe, []);
    } catch (error) {
      return session.down({ message: (error as Error)?.message ?? String(error), ...codeOf(error), ...cache });
    }
    return session.up(cache);
  }
}

/** The code of `error` or of its cause: `pg` and Node put it on the original error. */
function codeOf(error: unknown): { code?: string } {
  const { code, cause } = (error ?? {}) as { code?: unknown; cause?: { code?: unknown } };
  const found = typeof code === 'string' ? code : typeof cause?.code === 'string' ? cause.code : undefined;
  return found === undefined ? {} : { code: found };
}
