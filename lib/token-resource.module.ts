import { Module, type DynamicModule, type Provider } from '@nestjs/common';
import { TypeOrmModule } from '@nestjs/typeorm';
import { ExpiredTokenDeleter } from './expunger/expired-token.deleter.js';
import { ExpungerService } from './expunger/expunger.service.js';
import { RevokedTokenCheck } from './guard/revoked-token.check.js';
import { RevokedTokenGuard } from './guard/revoked-token.guard.js';
import type { TokenResourceModuleAsyncOptions, TokenResourceModuleOptions } from './interfaces/token-resource-options.interface.js';
import { TokenCodec } from './jwt/token-codec.js';
import { LogOutEverywhereService } from './log-out-everywhere/log-out-everywhere.service.js';
import { PasswordChangeSubscriber } from './log-out-everywhere/password-change.subscriber.js';
import { createObservabilityProviders, observabilityExports } from './observability/observability.providers.js';
import { DEFAULT_OPTIONS } from './options/defaults.js';
import { OutageLog } from './outage-log.js';
import { RevocationCache } from './revocation-cache/revocation.cache.js';
import {
  createAsyncOptionsProviders,
  createCoreProviders,
  TOKEN_RESOURCE_MODULE_OPTIONS,
  type ModuleWiring,
} from './token-resource.providers.js';
import { TOKEN_REPOSITORY, TOKEN_RESOURCE_OPTIONS } from './token-resource.internal-constants.js';
import { SessionService } from './sessions/session.service.js';
import { TokenService } from './token.service.js';
import { TokenStore } from './token.store.js';

const SERVICES = [
  OutageLog,
  TokenStore,
  RevocationCache,
  ExpiredTokenDeleter,
  TokenService,
  LogOutEverywhereService,
  SessionService,
  ExpungerService,
  PasswordChangeSubscriber,
  RevokedTokenGuard,
  RevokedTokenCheck,
];
const EXPORTS = [
  TOKEN_RESOURCE_OPTIONS,
  TOKEN_REPOSITORY,
  TokenCodec,
  TokenStore,
  RevocationCache,
  TokenService,
  LogOutEverywhereService,
  SessionService,
  ExpungerService,
  OutageLog,
  RevokedTokenGuard,
  RevokedTokenCheck,
];

/**
 * Revocable JWTs backed by a TypeORM/PostgreSQL token table. The host application
 * brings its own `TypeOrmModule.forRoot(...)` (with `Token` among its entities, or
 * `autoLoadEntities: true`) and `ScheduleModule.forRoot()`.
 */
@Module({})
export class TokenResourceModule {
  /**
   * Configures the module with static options, validated at start-up.
   *
   * @throws TokenResourceConfigError (at bootstrap) when the options are wrong.
   */
  static forRoot(options: TokenResourceModuleOptions): DynamicModule {
    const optionsProvider: Provider = { provide: TOKEN_RESOURCE_MODULE_OPTIONS, useValue: options };
    return this.assemble(this.wiringOf(options ?? {}), [], [optionsProvider]);
  }

  /**
   * Configures the module with options made by a factory, a class or an existing
   * provider. `dataSource`, `entity` and `isGlobal` are given here, next to the factory,
   * because the module's wiring depends on them; the factory's return type leaves them out.
   */
  static forRootAsync(options: TokenResourceModuleAsyncOptions): DynamicModule {
    return this.assemble(this.wiringOf(options), options.imports ?? [], createAsyncOptionsProviders(options));
  }

  private static wiringOf(options: Partial<ModuleWiring>): ModuleWiring {
    return {
      dataSource: options.dataSource ?? DEFAULT_OPTIONS.dataSource,
      entity: options.entity ?? DEFAULT_OPTIONS.entity,
      isGlobal: options.isGlobal ?? DEFAULT_OPTIONS.isGlobal,
    };
  }

  private static assemble(wiring: ModuleWiring, imports: DynamicModule['imports'], optionsProviders: Provider[]): DynamicModule {
    return {
      module: TokenResourceModule,
      global: wiring.isGlobal,
      imports: [...(imports ?? []), TypeOrmModule.forFeature([wiring.entity], wiring.dataSource)],
      providers: [...optionsProviders, ...createCoreProviders(wiring), ...createObservabilityProviders(), ...SERVICES],
      exports: [...EXPORTS, ...observabilityExports()],
    };
  }
}
