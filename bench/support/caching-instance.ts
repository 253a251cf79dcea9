/**
 * Another application instance with the revocation cache on, in a process of its own, as the
 * rest of a fleet runs: its polls cost the database, not the benchmark's own process. Prints
 * `ready` once its cache is fresh, and closes when its stdin ends.
 *
 *   node .build/bench/support/caching-instance.js <database url>
 */
import 'reflect-metadata';
import { NestFactory } from '@nestjs/core';
import { RevocationCache } from '../../lib/index.js';
import { benchAppModule } from './bench-app.js';

async function main(): Promise<void> {
  const app = await NestFactory.createApplicationContext(
    benchAppModule(process.argv[2], { poolSize: 2, options: { revocationCache: { enabled: true } } }),
    { logger: ['error', 'warn'] },
  );
  while (!app.get(RevocationCache).fresh) await new Promise((resolve) => setTimeout(resolve, 10));
  process.stdout.write('ready\n');
  process.stdin.on('end', () => void app.close().finally(() => process.exit(0)));
  process.stdin.resume();
}

main().catch((error) => {
  console.error(error);
  process.exit(1);
});
