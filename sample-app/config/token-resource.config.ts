import { ConfigService } from '@nestjs/config';
import type { TokenResourceFactoryOptions } from '../../lib/index.js';
import { User } from '../users/user.entity.js';
import type { SampleEnv } from './env.js';

/**
 * The library's options, built from configuration (for `TokenResourceModule.forRootAsync`):
 * - every issued token is stored, and the guard admits only stored login tokens, so a
 *   confirmation token (same key, purpose `'confirm'`) cannot be used as a login;
 * - changing `User.hashedPassword` through TypeORM logs the user out everywhere;
 * - a login is a session: an access token of `TOKEN_TTL` and a 30-day refresh token; a
 *   refresh token presented twice within 10 s (two tabs refreshing at once) gets the same
 *   new pair, later it counts as stolen and ends the session;
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
    sessions: { accessTokenExpiresIn: config.get('TOKEN_TTL', { infer: true }), reuseIntervalSeconds: 10 },
    expunge: { enabled: true, intervalHours: config.get('EXPUNGE_INTERVAL_HOURS', { infer: true }) },
    logOutEverywhere: {
      applyOnPasswordChange: true,
      userEntity: User,
      passwordField: 'hashedPassword',
      subjectOf: (user: User) => user.id,
    },
  };
}
