import type { TokenResourceSessionsOptions } from '../interfaces/token-resource-options.interface.js';
import { durationToSeconds } from '../jwt/duration.js';
import { DEFAULT_OPTIONS } from './defaults.js';
import { between, fail, shown } from './option-checks.js';

/** `sessions` with every default filled in, lifetimes in seconds. */
export interface ResolvedSessionsOptions {
  accessTokenLifetimeSeconds: number;
  refreshTokenLifetimeSeconds: number;
  reuseIntervalSeconds: number;
}

/** The longest `reuseIntervalSeconds`: a racing request comes within seconds, a thief may wait for hours. */
const MAX_REUSE_INTERVAL_SECONDS = 300;

function lifetimeOf(value: unknown, fallback: string, name: string): number {
  try {
    return durationToSeconds((value ?? fallback) as string | number);
  } catch (error) {
    fail(`${name}: ${(error as Error).message}.`);
  }
}

/**
 * Validates `sessions` and fills in its defaults.
 *
 * @param markerLifetimeSeconds `logOutEverywhere.markerLifetime`: a refresh token must not
 *   outlive the record of its subject's log-outs.
 * @throws TokenResourceConfigError naming the option and how to fix it.
 */
export function resolveSessions(sessions: TokenResourceSessionsOptions, markerLifetimeSeconds: number): ResolvedSessionsOptions {
  if (typeof sessions !== 'object' || sessions === null) {
    fail(`sessions must be an object such as { refreshTokenExpiresIn: '30d' }, got ${shown(sessions)}.`);
  }
  const defaults = DEFAULT_OPTIONS.sessions;
  const access = lifetimeOf(sessions.accessTokenExpiresIn, defaults.accessTokenExpiresIn, 'sessions.accessTokenExpiresIn');
  const refresh = lifetimeOf(sessions.refreshTokenExpiresIn, defaults.refreshTokenExpiresIn, 'sessions.refreshTokenExpiresIn');
  if (access > refresh) {
    fail(
      `sessions.accessTokenExpiresIn (${access} s) exceeds sessions.refreshTokenExpiresIn (${refresh} s): an access token would outlive its session. Shorten accessTokenExpiresIn or lengthen refreshTokenExpiresIn.`,
    );
  }
  // Only a lifetime given on purpose fails the boot: an application that shortened
  // markerLifetime and never starts a session must not need a sessions option.
  // `SessionService.start` refuses the default when it is too long.
  if (sessions.refreshTokenExpiresIn !== undefined && refresh > markerLifetimeSeconds) {
    fail(
      `sessions.refreshTokenExpiresIn (${refresh} s) exceeds logOutEverywhere.markerLifetime (${markerLifetimeSeconds} s): a log-out would be forgotten while a refresh token is still valid. Shorten refreshTokenExpiresIn or raise markerLifetime.`,
    );
  }
  const reuseIntervalSeconds =
    between(sessions.reuseIntervalSeconds, 0, MAX_REUSE_INTERVAL_SECONDS, 'sessions.reuseIntervalSeconds') ?? defaults.reuseIntervalSeconds;
  return { accessTokenLifetimeSeconds: access, refreshTokenLifetimeSeconds: refresh, reuseIntervalSeconds };
}
