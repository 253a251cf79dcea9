import { execFile } from 'node:child_process';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { createTestDatabase, type TestDatabase } from './support/test-database.js';

/**
 * The package as a user gets it: `npm pack`, installed into a scratch project that has only
 * the peer dependencies (no `@types/pg`, no dev dependencies of this repository), type-checked
 * in the strictest settings a consumer may use, and run as a small application.
 */

const run = promisify(execFile);
const root = process.cwd();
const PEERS = [
  '@nestjs/common',
  '@nestjs/core',
  '@nestjs/schedule',
  '@nestjs/typeorm',
  'cron',
  'pg',
  'reflect-metadata',
  'rxjs',
  'typeorm',
];
/** What any TypeScript Nest project has besides its dependencies. */
const CONSUMER_TOOLS = ['typescript', '@types/node'];

let scratch: string;
let db: TestDatabase;

async function installedVersion(name: string): Promise<string> {
  return (JSON.parse(await readFile(join(root, 'node_modules', name, 'package.json'), 'utf8')) as { version: string }).version;
}

const APP = `
import 'reflect-metadata';
import { Module } from '@nestjs/common';
import { NestFactory } from '@nestjs/core';
import { ScheduleModule } from '@nestjs/schedule';
import { TypeOrmModule } from '@nestjs/typeorm';
import {
  CreateTokensTable1763900000000, InvalidTokenError, Token, TokenResourceModule, TokenService, TokenStoreHealthIndicator,
  type TokenResourceModuleOptions,
} from 'nestjs-token-resource';

const options: TokenResourceModuleOptions = {
  jwt: { secret: 'a-consumer-secret-of-at-least-32-bytes!!', issuer: 'consumer' },
  storeAllTokens: true,
  expunge: { enabled: false },
};

@Module({
  imports: [
    TypeOrmModule.forRoot({ type: 'postgres', url: process.env.DATABASE_URL ?? 'postgres://localhost/app', entities: [Token], migrations: [CreateTokensTable1763900000000], migrationsRun: true }),
    ScheduleModule.forRoot(),
    TokenResourceModule.forRoot(options),
  ],
})
class AppModule {}

const app = await NestFactory.createApplicationContext(AppModule, { logger: false });
const tokens = app.get(TokenService);
const { token } = await tokens.issueToken({ subject: 'consumer' });
const before = await tokens.tokenRevoked(token);
await tokens.revoke(token);
const after = await tokens.tokenRevoked(token);
const rejected = await tokens.tokenRevoked('not-a-jwt').catch((error: unknown) => error instanceof InvalidTokenError);
let healthIndicator = true;
try {
  app.get(TokenStoreHealthIndicator);
} catch {
  healthIndicator = false;
}
await app.close();
console.log(JSON.stringify({ before, after, rejected, healthIndicator }));
`;

const TSCONFIG = {
  compilerOptions: {
    target: 'ES2022',
    module: 'NodeNext',
    moduleResolution: 'NodeNext',
    strict: true,
    exactOptionalPropertyTypes: true,
    noUncheckedIndexedAccess: true,
    skipLibCheck: false,
    experimentalDecorators: true,
    emitDecoratorMetadata: true,
    outDir: 'out',
    types: ['node'],
  },
  files: ['app.ts'],
};

beforeAll(async () => {
  db = await createTestDatabase();
  scratch = await mkdtemp(join(tmpdir(), 'ntr-consumer-'));
  const { stdout } = await run('npm', ['pack', '--silent', '--pack-destination', scratch], { cwd: root });
  const tarball = join(scratch, stdout.trim().split('\n').pop()!);
  const specs = await Promise.all([...PEERS, ...CONSUMER_TOOLS].map(async (name) => `${name}@${await installedVersion(name)}`));
  await writeFile(join(scratch, 'package.json'), JSON.stringify({ name: 'consumer', private: true, type: 'module' }));
  await run('npm', ['install', '--no-audit', '--no-fund', '--prefer-offline', tarball, ...specs], { cwd: scratch });
  await writeFile(join(scratch, 'app.ts'), APP);
  await writeFile(join(scratch, 'tsconfig.json'), JSON.stringify(TSCONFIG));
}, 300_000);

afterAll(async () => {
  if (scratch) await rm(scratch, { recursive: true, force: true });
  await db?.drop();
});

it("ships its licence and no @types/pg, and installs without the repository's dev dependencies or its optional peers", async () => {
  const installed = join(scratch, 'node_modules', 'nestjs-token-resource');
  expect(await readFile(join(installed, 'LICENSE'), 'utf8')).toContain('MIT License');
  await expect(readFile(join(scratch, 'node_modules', '@types', 'pg', 'package.json'))).rejects.toThrow();
  // The application below runs without them: the library loads them only when they are there.
  for (const optional of ['@nestjs/terminus', '@opentelemetry/api']) {
    await expect(readFile(join(scratch, 'node_modules', optional, 'package.json'))).rejects.toThrow();
  }
});

it('type-checks in a strict consumer project (exactOptionalPropertyTypes, skipLibCheck off) and runs without the optional peers', async () => {
  try {
    await run(process.execPath, [join(scratch, 'node_modules', 'typescript', 'bin', 'tsc'), '-p', scratch], { cwd: scratch });
  } catch (error) {
    throw new Error(`the consumer project does not type-check:\n${(error as { stdout?: string }).stdout ?? String(error)}`);
  }
  const { stdout } = await run(process.execPath, [join(scratch, 'out', 'app.js')], {
    cwd: scratch,
    env: { ...process.env, DATABASE_URL: db.url },
  });
  expect(JSON.parse(stdout.trim().split('\n').pop()!)).toEqual({ before: false, after: true, rejected: true, healthIndicator: false });
}, 120_000);
