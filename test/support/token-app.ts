import type { DynamicModule, INestApplication, Type } from '@nestjs/common';
import { Test } from '@nestjs/testing';
import { TypeOrmModule, type TypeOrmModuleOptions } from '@nestjs/typeorm';
import { ScheduleModule } from '@nestjs/schedule';
import { DataSource } from 'typeorm';
import { CreateTokensTable1763900000000, Token, TokenResourceModule, type TokenResourceModuleOptions } from '../../lib/index.js';

/** The HMAC secret the tests sign with: 64 bytes and more, long enough for HS512 (RFC 7518 §3.2). */
export const TEST_SECRET = 'test-secret-that-is-at-least-64-bytes-long-for-hs512-as-rfc-7518!';

/** TypeORM options for a test database, with the library's migration run at start-up. */
export function typeOrmOptions(url: string, overrides: Partial<TypeOrmModuleOptions> = {}): TypeOrmModuleOptions {
  return {
    type: 'postgres',
    url,
    entities: [Token],
    migrations: [CreateTokensTable1763900000000],
    migrationsRun: true,
    logging: false,
    ...overrides,
  } as TypeOrmModuleOptions;
}

/** Options for building a Nest application around the module. */
export interface TokenAppOptions {
  /** Module options; `jwt.secret` defaults to {@link TEST_SECRET}. */
  options?: Partial<TokenResourceModuleOptions>;
  /** Replaces `TokenResourceModule.forRoot(...)`, for forRootAsync tests. */
  tokenModule?: DynamicModule;
  typeOrm?: Partial<TypeOrmModuleOptions>;
  imports?: Array<Type | DynamicModule>;
  controllers?: Type[];
  providers?: any[];
}

/** Boots a Nest application with TypeORM on `url`, the schedule module and the token module. */
export async function createTokenApp(url: string, config: TokenAppOptions = {}): Promise<INestApplication> {
  const options = { ...config.options, jwt: { secret: TEST_SECRET, ...config.options?.jwt } } as TokenResourceModuleOptions;
  const moduleRef = await Test.createTestingModule({
    imports: [
      TypeOrmModule.forRoot(typeOrmOptions(url, config.typeOrm)),
      ScheduleModule.forRoot(),
      config.tokenModule ?? TokenResourceModule.forRoot(options),
      ...(config.imports ?? []),
    ],
    controllers: config.controllers ?? [],
    providers: config.providers ?? [],
  }).compile();
  const app = moduleRef.createNestApplication({ logger: false });
  await app.init();
  return app;
}

/** The default data source of an application. */
export function dataSourceOf(app: INestApplication): DataSource {
  return app.get(DataSource);
}
