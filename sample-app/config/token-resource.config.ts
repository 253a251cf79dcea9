import { ConfigService } from '@nestjs/config';
import type { TokenResourceFactoryOptions } from '../../lib/index.js';
import { User } from '../users/user.entity.js';
import type { SampleEnv } from './env.js';

/**
 * The library's options, built from configuration (for `TokenResourceModule.forRootAsync`):
 * - every issued token is stored, and the guard admits only stored login tokens, so a
 *   confirmation token (same key, purpose `'confirm'`) cannot be used as a login;
 * - changing `User.hashedPassword` through TypeORM logs the user out everywhere;
 * - the expunger runs every `EXPUNGE_INTERVAL_HOURS`.
 */
export function tokenResourceOptions(config: ConfigService<SampleEnv, true>): TokenResourceFactoryOptions {
  return {
    jwt: {
      secret: config.get('JWT_SECRET', { infer: true }),
      issuer: config.get('JWT_ISSUER', { infer: true }),
      algorithms: ['HS256'],
    },
    storeAllTokens: true,
    requireTokenPresenceForAuthentication: true,
    authenticationPurpose: 'user',
    expunge: { enabled: true, intervalHours: config.get('EXPUNGE_INTERVAL_HOURS', { infer: true }) },
    logOutEverywhere: {
      applyOnPasswordChange: true,
      userEntity: User,
      passwordField: 'hashedPassword',
      subjectOf: (user: User) => user.id,
    },
  };
}
