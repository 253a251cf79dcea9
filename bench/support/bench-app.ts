import { Module, type DynamicModule, type Provider, type Type } from '@nestjs/common';
import { ScheduleModule } from '@nestjs/schedule';
import { TypeOrmModule } from '@nestjs/typeorm';
import { CreateTokensTable1763900000000, Token, TokenResourceModule, type TokenResourceModuleOptions } from '../../lib/index.js';

/** The HMAC secret every benchmark signs and verifies with. */
export const BENCH_SECRET = 'bench-secret-that-is-at-least-32-bytes-long!!';

@Module({})
class BenchAppModule {}

/** What a benchmark's application needs beyond the token module on `url`. */
export interface BenchAppOptions {
  /** TypeORM pool size. Default: TypeORM's. */
  poolSize?: number;
  /** Module options over `{ jwt: { secret: BENCH_SECRET }, expunge: { enabled: false } }`. */
  options?: Partial<TokenResourceModuleOptions>;
  controllers?: Type[];
  providers?: Provider[];
}

/**
 * The application of a benchmark: TypeORM on `url` with the library's migration, the
 * schedule module and `TokenResourceModule`, as a host application would wire them.
 */
export function benchAppModule(url: string, app: BenchAppOptions = {}): DynamicModule {
  return {
    module: BenchAppModule,
    imports: [
      TypeOrmModule.forRoot({
        type: 'postgres',
        url,
        entities: [Token],
        logging: false,
        poolSize: app.poolSize,
        migrations: [CreateTokensTable1763900000000],
        migrationsRun: true,
      }),
      ScheduleModule.forRoot(),
      TokenResourceModule.forRoot({ jwt: { secret: BENCH_SECRET }, expunge: { enabled: false }, ...app.options }),
    ],
    controllers: app.controllers ?? [],
    providers: app.providers ?? [],
  };
}
