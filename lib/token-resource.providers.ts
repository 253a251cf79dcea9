import type { Provider } from '@nestjs/common';
import { getDataSourceToken, getRepositoryToken } from '@nestjs/typeorm';
import type {
  TokenResourceFactoryOptions,
  TokenResourceModuleAsyncOptions,
  TokenResourceModuleOptions,
  TokenResourceOptionsFactory,
} from './interfaces/token-resource-options.interface.js';
import { TokenCodec } from './jwt/token-codec.js';
import { fail } from './options/option-checks.js';
import { resolveOptions, type ResolvedTokenResourceOptions } from './options/resolved-options.js';
import { TOKEN_DATA_SOURCE, TOKEN_REPOSITORY, TOKEN_RESOURCE_OPTIONS } from './token-resource.internal-constants.js';

/** Injection token of the options exactly as the application or its factory gave them. */
export const TOKEN_RESOURCE_MODULE_OPTIONS = Symbol('TOKEN_RESOURCE_MODULE_OPTIONS');

/** The options that wire the module, known before any options factory runs. */
export type ModuleWiring = Required<Pick<TokenResourceModuleOptions, 'dataSource' | 'entity' | 'isGlobal'>>;

/** Providers that turn raw options into validated options, the codec, and the data source and repository aliases. */
export function createCoreProviders(wiring: ModuleWiring): Provider[] {
  return [
    {
      provide: TOKEN_RESOURCE_OPTIONS,
      useFactory: (options: TokenResourceFactoryOptions | TokenResourceModuleOptions) => resolveOptions({ ...options, ...wiring }),
      inject: [TOKEN_RESOURCE_MODULE_OPTIONS],
    },
    {
      provide: TokenCodec,
      useFactory: ({ jwt, revocationCache }: ResolvedTokenResourceOptions) =>
        new TokenCodec(jwt, revocationCache.enabled ? revocationCache.maxVerifiedTokens : 0),
      inject: [TOKEN_RESOURCE_OPTIONS],
    },
    { provide: TOKEN_DATA_SOURCE, useExisting: getDataSourceToken(wiring.dataSource) },
    { provide: TOKEN_REPOSITORY, useExisting: getRepositoryToken(wiring.entity, wiring.dataSource) },
  ];
}

/** The provider of the raw options for `forRootAsync`. */
export function createAsyncOptionsProviders(options: TokenResourceModuleAsyncOptions): Provider[] {
  if (options.useFactory) {
    return [{ provide: TOKEN_RESOURCE_MODULE_OPTIONS, useFactory: options.useFactory, inject: options.inject ?? [] }];
  }
  const factoryClass = options.useExisting ?? options.useClass;
  if (!factoryClass) {
    fail('forRootAsync needs useFactory, useClass or useExisting.');
  }
  const providers: Provider[] = [
    {
      provide: TOKEN_RESOURCE_MODULE_OPTIONS,
      useFactory: (factory: TokenResourceOptionsFactory) => factory.createTokenResourceOptions(),
      inject: [factoryClass],
    },
  ];
  if (options.useClass) providers.push({ provide: options.useClass, useClass: options.useClass });
  return providers;
}
