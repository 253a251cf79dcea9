import { Module, type DynamicModule } from '@nestjs/common';
import { ConfigModule, ConfigService } from '@nestjs/config';
import { APP_GUARD, DiscoveryModule } from '@nestjs/core';
import { ScheduleModule } from '@nestjs/schedule';
import { TerminusModule } from '@nestjs/terminus';
import { TypeOrmModule } from '@nestjs/typeorm';
import { CreateTokensTable1763900000000, RevokedTokenGuard, Token, TokenResourceModule } from '../lib/index.js';
import { AuthModule } from './auth/auth.module.js';
import { validateEnv } from './config/env.js';
import { tokenResourceOptions } from './config/token-resource.config.js';
import { HealthController } from './health/health.controller.js';
import { CreateUsersTable1763900000100 } from './users/create-users-table.migration.js';
import { User } from './users/user.entity.js';

/** Options of {@link AppModule.forRoot}. */
export interface AppModuleOptions {
  /** PostgreSQL connection URL; the schema is migrated on start-up. */
  databaseUrl: string;
  /** Environment to configure from. Default `process.env`. */
  env?: Record<string, string | undefined>;
}

/**
 * The sample application: TypeORM on `databaseUrl` (migrations run at start-up),
 * `@nestjs/schedule` for the expunger, the token library configured from the environment,
 * and `RevokedTokenGuard` on every route unless `@SkipTokenCheck()`.
 */
@Module({})
export class AppModule {
  /** The app module for one database; tests pass a database of their own. */
  static forRoot(options: AppModuleOptions): DynamicModule {
    const env = options.env ?? process.env;
    return {
      module: AppModule,
      imports: [
        ConfigModule.forRoot({
          isGlobal: true,
          ignoreEnvFile: true,
          load: [() => validateEnv(env)],
        }),
        TypeOrmModule.forRoot({
          type: 'postgres',
          url: options.databaseUrl,
          entities: [Token, User],
          migrations: [CreateTokensTable1763900000000, CreateUsersTable1763900000100],
          migrationsRun: true,
          logging: ['error'],
        }),
        ScheduleModule.forRoot(),
        TokenResourceModule.forRootAsync({
          isGlobal: true,
          inject: [ConfigService],
          useFactory: tokenResourceOptions,
        }),
        TerminusModule.forRoot(),
        // For setupApiDocs, which finds the routes the guard checks.
        DiscoveryModule,
        AuthModule,
      ],
      controllers: [HealthController],
      providers: [{ provide: APP_GUARD, useExisting: RevokedTokenGuard }],
    };
  }
}
