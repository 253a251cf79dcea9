import { execFile } from 'node:child_process';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import ts from 'typescript';

/**
 * `npm run build` emits a typed ESM package with its TSDoc. Built into a scratch
 * directory inside the project (so that the emitted imports resolve against
 * node_modules) rather than over dist/.
 */

const run = promisify(execFile);
const root = process.cwd();
let outDir: string;

beforeAll(async () => {
  outDir = await mkdtemp(join(root, '.build-test-'));
  try {
    await run('npm', ['run', 'build', '--', '--outDir', outDir], { cwd: root });
  } catch (error) {
    // tsc reports its errors on stdout; show them rather than only the exit status.
    const { stdout = '', message } = error as { stdout?: string; message: string };
    throw new Error(`npm run build failed:\n${stdout || message}`);
  }
}, 180_000);

afterAll(async () => {
  if (outDir) await rm(outDir, { recursive: true, force: true });
});

it('emits index.js and index.d.ts', async () => {
  const js = await readFile(join(outDir, 'index.js'), 'utf8');
  const dts = await readFile(join(outDir, 'index.d.ts'), 'utf8');
  expect(js).toMatch(/export \{ TokenService|export \* from '\.\/token\.service\.js'/);
  expect(dts).toContain('TokenResourceModule');
});

it('keeps the TSDoc in the declarations', async () => {
  const service = await readFile(join(outDir, 'token.service.d.ts'), 'utf8');
  expect(service).toMatch(/\/\*\*[^]*Revokes a token[^]*\*\/\s*revoke\(/);
  expect(service).toContain('@throws TokenAlreadyRevokedError');
  const options = await readFile(join(outDir, 'interfaces', 'token-resource-options.interface.d.ts'), 'utf8');
  expect(options).toMatch(/Default `false`[^]*storeAllTokens\?: boolean/);
});

it('ships source maps only together with their sources', async () => {
  const map = JSON.parse(await readFile(join(outDir, 'token.service.js.map'), 'utf8')) as { sources: string[]; sourcesContent?: string[] };
  expect(map.sourcesContent).toHaveLength(map.sources.length);
  expect(map.sourcesContent?.[0]).toContain('class TokenService');
});

/** The package root's runtime exports: the documented API, nothing else. */
const PUBLIC_VALUES = [
  'CreateTokensTable1763900000000',
  'EXPUNGE_JOB_NAME',
  'ExpungerService',
  'InvalidTokenError',
  'LogOutEverywhereService',
  'RefreshTokenReusedError',
  'RevocationCache',
  'REVOCATION_PURPOSE',
  'RevokedTokenCheck',
  'RevokedTokenGuard',
  'SessionService',
  'SkipTokenCheck',
  'Token',
  'TokenAlreadyRevokedError',
  'TokenClaims',
  'TokenResourceConfigError',
  'TokenResourceError',
  'TokenResourceModule',
  'TokenResourceUnavailableError',
  'TokenService',
  'TokenStoreHealthIndicator',
  'createTokensTableMigration',
  'getTokenClaims',
];

/** The types users write against: options, inputs and results of the public methods, the verified claims. */
const PUBLIC_TYPES = [
  'ExpungeExpiredOptions',
  'ExpungeRunResult',
  'GetTokenQuery',
  'IssueTokenInput',
  'IssuedToken',
  'ListTokensOptions',
  'LogOutEverywhereOptions',
  'RevokeJtiOptions',
  'RefreshSessionOptions',
  'RevokeOptions',
  'SessionSummary',
  'SessionTokens',
  'StartSessionInput',
  'StoreConfirmationChangesInput',
  'StoreTokenInput',
  'TokenClaimsPayload',
  'TokenResourceExpungeOptions',
  'TokenResourceJwtOptions',
  'TokenResourceLogOutEverywhereOptions',
  'TokenResourceRevocationCacheOptions',
  'TokenResourceSessionsOptions',
  'TokenResourceModuleAsyncOptions',
  'TokenResourceModuleOptions',
  'TokenResourceOptionsFactory',
  'TokenResourceFactoryOptions',
  'TokenStoreHealth',
];

it('loads as an ES module under plain node and exports exactly the documented values', async () => {
  const script = `import(${JSON.stringify(join(outDir, 'index.js'))}).then((m) => console.log(JSON.stringify(Object.keys(m))))`;
  const { stdout } = await run(process.execPath, ['--input-type=module', '-e', script], { cwd: root });
  expect((JSON.parse(stdout) as string[]).sort()).toEqual([...PUBLIC_VALUES].sort());
}, 60_000);

it('declares exactly the documented values and types, and no building block', () => {
  const program = ts.createProgram([join(outDir, 'index.d.ts')], {
    module: ts.ModuleKind.NodeNext,
    moduleResolution: ts.ModuleResolutionKind.NodeNext,
    noLib: true,
    types: [],
  });
  const checker = program.getTypeChecker();
  const index = checker.getSymbolAtLocation(program.getSourceFile(join(outDir, 'index.d.ts'))!)!;
  const names = checker.getExportsOfModule(index).map((symbol) => symbol.name);
  expect(names.sort()).toEqual([...PUBLIC_VALUES, ...PUBLIC_TYPES].sort());
});
