import type { Provider } from '@nestjs/common';
import { getRepositoryToken } from '@nestjs/typeorm';
import type { Token } from './entities/token.entity.js';
import type {
  TokenResourceModuleAsyncOptions,
  TokenResourceModuleOptions,
  TokenResourceOptionsFactory,
} from './interfaces/token-resource-options.interface.js';
import { TokenCodec } from './jwt/token-codec.js';
import { resolveOptions, type ResolvedTokenResourceOptions } from './options/resolved-options.js';
import { TOKEN_REPOSITORY, TOKEN_RESOURCE_OPTIONS } from './token-resource.internal-constants.js';
import { TokenResourceConfigError } from './token-resource.exceptions.js';

/** Injection token of the options exactly as the application gave them. */
export const TOKEN_RESOURCE_MODULE_OPTIONS = Symbol('TOKEN_RESOURCE_MODULE_OPTIONS');

/** The data source and entity, which must be known before any options factory runs. */
export interface StaticWiring {
  dataSource: string;
  entity: new () => Token;
}

function checkWiring(options: TokenResourceModuleOptions, wiring: StaticWiring): ResolvedTokenResourceOptions {
  const resolved = resolveOptions(options);
  if (options.dataSource !== undefined && options.dataSource !== wiring.dataSource) {
    throw new TokenResourceConfigError(
      `nestjs-token-resource: the factory returned dataSource '${options.dataSource}', but the module was wired to '${wiring.dataSource}'. Pass dataSource to forRootAsync itself, next to useFactory.`,
    );
  }
  if (options.entity !== undefined && options.entity !== wiring.entity) {
    throw new TokenResourceConfigError(
      'nestjs-token-resource: the factory returned another entity than the module was wired to. Pass entity to forRootAsync itself, next to useFactory.',
    );
  }
  return { ...resolved, dataSource: wiring.dataSource, entity: wiring.entity };
}

/** Providers that turn raw options into validated options, the codec and the repository alias. */
export function createCoreProviders(wiring: StaticWiring): Provider[] {
  return [
    {
      provide: TOKEN_RESOURCE_OPTIONS,
      useFactory: (options: TokenResourceModuleOptions) => checkWiring(options, wiring),
      inject: [TOKEN_RESOURCE_MODULE_OPTIONS],
    },
    {
      provide: TokenCodec,
      useFactory: (options: ResolvedTokenResourceOptions) => new TokenCodec(options.jwt),
      inject: [TOKEN_RESOURCE_OPTIONS],
    },
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
    throw new TokenResourceConfigError('nestjs-token-resource: forRootAsync needs useFactory, useClass or useExisting.');
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
