import type { INestApplication } from '@nestjs/common';
import type { TypeOrmModuleOptions } from '@nestjs/typeorm';
import { decodeJwt } from 'jose';
import type { TokenResourceModuleOptions } from '../../lib/index.js';
import { createGuardApp } from './guard-app.js';
import { GuardedSubjectController } from './guarded-controller.js';

/** An Express application with sessions and `GET /guarded` behind the guard; expunge is off. */
export function createSessionApp(
  url: string,
  options: Partial<TokenResourceModuleOptions> = {},
  max = 10,
  typeOrm: Partial<TypeOrmModuleOptions> = {},
): Promise<INestApplication> {
  return createGuardApp(url, {
    platform: 'express',
    options,
    controllers: [GuardedSubjectController],
    typeOrm: { ...typeOrm, extra: { max } },
  });
}

/** The `jti` of a token, unverified: for tests that look at rows. */
export function jtiOf(token: string): string {
  return decodeJwt(token).jti!;
}
