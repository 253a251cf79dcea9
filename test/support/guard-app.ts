import type { DynamicModule, INestApplication, Type } from '@nestjs/common';
import { FastifyAdapter } from '@nestjs/platform-fastify';
import { ScheduleModule } from '@nestjs/schedule';
import { Test } from '@nestjs/testing';
import { TypeOrmModule, type TypeOrmModuleOptions } from '@nestjs/typeorm';
import { TokenResourceModule, type TokenResourceModuleOptions } from '../../lib/index.js';
import { TEST_SECRET, typeOrmOptions } from './token-app.js';

/** The HTTP platforms the guard is tested on. */
export const PLATFORMS = ['express', 'fastify'] as const;
export type Platform = (typeof PLATFORMS)[number];

/** Options of {@link createGuardApp}. */
export interface GuardAppOptions {
  platform: Platform;
  /** Module options; `jwt.secret` defaults to the test secret, expunge is off. */
  options?: Partial<TokenResourceModuleOptions>;
  typeOrm?: Partial<TypeOrmModuleOptions>;
  imports?: Array<Type | DynamicModule>;
  controllers?: Type[];
  providers?: any[];
}

/**
 * Boots an application on Express or Fastify with TypeORM on `url` and the token module,
 * listening on a free port, as a real HTTP server for supertest.
 */
export async function createGuardApp(url: string, config: GuardAppOptions): Promise<INestApplication> {
  const options = {
    expunge: { enabled: false },
    ...config.options,
    jwt: { secret: TEST_SECRET, ...config.options?.jwt },
  } as TokenResourceModuleOptions;
  const moduleRef = await Test.createTestingModule({
    imports: [
      TypeOrmModule.forRoot(typeOrmOptions(url, config.typeOrm)),
      ScheduleModule.forRoot(),
      TokenResourceModule.forRoot(options),
      ...(config.imports ?? []),
    ],
    controllers: config.controllers ?? [],
    providers: config.providers ?? [],
  }).compile();
  const app =
    config.platform === 'fastify'
      ? moduleRef.createNestApplication(new FastifyAdapter(), { logger: false })
      : moduleRef.createNestApplication({ logger: false });
  await app.listen(0, '127.0.0.1');
  return app;
}
