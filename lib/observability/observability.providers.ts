import type { Provider } from '@nestjs/common';
import type { DataSource } from 'typeorm';
import type { ResolvedTokenResourceOptions } from '../options/resolved-options.js';
import { RevocationCache } from '../revocation-cache/revocation.cache.js';
import { TOKEN_DATA_SOURCE, TOKEN_RESOURCE_OPTIONS } from '../token-resource.internal-constants.js';
import { TokenStore } from '../token.store.js';
import { importOptional, peerInstalled } from './optional-import.js';
import { TokenResourceMetrics } from './token-resource-metrics.js';
import { TokenStoreHealthIndicator, type HealthIndicatorSessions } from './token-store-health.indicator.js';

type Terminus = { HealthIndicatorService: new () => HealthIndicatorSessions };

/**
 * The metrics, always (they record nothing without `@opentelemetry/api`), and the health
 * indicator when `@nestjs/terminus` is installed. Both optional peers are imported only
 * here, lazily, when the application starts: an application without them never loads them.
 */
export function createObservabilityProviders(): Provider[] {
  const providers: Provider[] = [
    {
      provide: TokenResourceMetrics,
      useFactory: (dataSource: DataSource) => TokenResourceMetrics.load(dataSource),
      inject: [TOKEN_DATA_SOURCE],
    },
  ];
  if (peerInstalled('@nestjs/terminus')) {
    providers.push({
      provide: TokenStoreHealthIndicator,
      useFactory: async (store: TokenStore, cache: RevocationCache, options: ResolvedTokenResourceOptions) => {
        const terminus = await importOptional<Terminus>('@nestjs/terminus');
        if (!terminus) throw new Error('nestjs-token-resource: @nestjs/terminus is installed but could not be imported');
        return new TokenStoreHealthIndicator(store, cache, options, new terminus.HealthIndicatorService());
      },
      inject: [TokenStore, RevocationCache, TOKEN_RESOURCE_OPTIONS],
    });
  }
  return providers;
}

/** What of {@link createObservabilityProviders} the module exports. */
export function observabilityExports(): Provider[] {
  return peerInstalled('@nestjs/terminus') ? [TokenResourceMetrics, TokenStoreHealthIndicator] : [TokenResourceMetrics];
}
