import type { EntityManager } from 'typeorm';
import { logOutMarkerJti, type LogOutLevel } from '../../lib/log-out-everywhere/log-out-marker.js';

/**
 * The latest log-out moment recorded for `subject` (epoch ms), as `session` sees it now:
 * a data source or manager (autocommit), or the manager of a transaction in progress.
 */
export async function loggedOutAt(session: Pick<EntityManager, 'query'>, subject: string): Promise<number> {
  const [row] = await session.query('SELECT extra_data FROM tokens WHERE jti = $1', [logOutMarkerJti(subject)]);
  return Math.max(...Object.values<LogOutLevel>(row.extra_data.levels).map((level) => level.at));
}
