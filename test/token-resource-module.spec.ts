import { generateKeyPairSync } from 'node:crypto';
import { Inject, Injectable, Module, type DynamicModule, type INestApplication } from '@nestjs/common';
import { Test } from '@nestjs/testing';
import { ScheduleModule } from '@nestjs/schedule';
import { getDataSourceToken, TypeOrmModule } from '@nestjs/typeorm';
import { Column, DataSource, Entity } from 'typeorm';
import {
  InvalidTokenError,
  REVOCATION_PURPOSE,
  Token,
  TokenResourceConfigError,
  TokenResourceModule,
  TokenService,
  type TokenResourceFactoryOptions,
  type TokenResourceModuleOptions,
  type TokenResourceOptionsFactory,
} from '../lib/index.js';
import type { ResolvedTokenResourceOptions } from '../lib/options/resolved-options.js';
import { TOKEN_RESOURCE_OPTIONS } from '../lib/token-resource.internal-constants.js';
import { countRows, signToken } from './support/jwt-fixtures.js';
import { createTestDatabase, type TestDatabase } from './support/test-database.js';
import { createTokenApp, dataSourceOf, TEST_SECRET, typeOrmOptions } from './support/token-app.js';

/** forRoot / forRootAsync wiring, named data sources, custom entities and start-up validation. */

const FACTORY_SECRET = 'a-secret-that-only-the-factory-knows-1234';
const SECRET_TOKEN = 'FACTORY_SECRET';

@Module({ providers: [{ provide: SECRET_TOKEN, useValue: FACTORY_SECRET }], exports: [SECRET_TOKEN] })
class SecretModule {}

@Injectable()
class OptionsFactory implements TokenResourceOptionsFactory {
  static calls = 0;
  createTokenResourceOptions(): TokenResourceFactoryOptions {
    OptionsFactory.calls += 1;
    return { jwt: { secret: FACTORY_SECRET }, storeAllTokens: true, expunge: { enabled: false } };
  }
}

@Module({ providers: [OptionsFactory], exports: [OptionsFactory] })
class OptionsFactoryModule {}

@Entity('my_tokens')
class MyToken extends Token {
  /** An extra column of the application's own. */
  @Column({ type: 'text', nullable: true })
  tenant!: string | null;
}

let db: TestDatabase;
const apps: INestApplication[] = [];

async function boot(
  url: string,
  tokenModule: DynamicModule,
  extra: Partial<Parameters<typeof createTokenApp>[1]> = {},
): Promise<INestApplication> {
  const app = await createTokenApp(url, { tokenModule, ...extra });
  apps.push(app);
  return app;
}

/** Proves which secret and storeAllTokens setting the module ended up with. */
async function expectFactoryOptionsApplied(app: INestApplication): Promise<void> {
  const tokens = app.get(TokenService);
  await expect(tokens.tokenRevoked(await signToken({}, { secret: FACTORY_SECRET }))).resolves.toBe(false);
  await expect(tokens.tokenRevoked(await signToken({}, { secret: TEST_SECRET }))).rejects.toBeInstanceOf(InvalidTokenError);
  const issued = await tokens.issueToken({ subject: 'async-user' });
  expect((await tokens.getToken({ jti: issued.jti }))?.subject).toBe('async-user');
}

beforeAll(async () => {
  db = await createTestDatabase();
});

afterAll(async () => {
  for (const app of apps) await app.close();
  await db?.drop();
});

describe('forRootAsync', () => {
  it('useFactory with imports and inject', async () => {
    const app = await boot(
      db.url,
      TokenResourceModule.forRootAsync({
        imports: [SecretModule],
        inject: [SECRET_TOKEN],
        useFactory: (secret: string) => ({ jwt: { secret }, storeAllTokens: true, expunge: { enabled: false } }),
      }),
    );
    await expectFactoryOptionsApplied(app);
  });

  it('an async useFactory', async () => {
    const app = await boot(
      db.url,
      TokenResourceModule.forRootAsync({
        useFactory: async () => {
          await new Promise((resolve) => setTimeout(resolve, 10));
          return { jwt: { secret: FACTORY_SECRET }, storeAllTokens: true, expunge: { enabled: false } };
        },
      }),
    );
    await expectFactoryOptionsApplied(app);
  });

  it('useClass', async () => {
    OptionsFactory.calls = 0;
    const app = await boot(db.url, TokenResourceModule.forRootAsync({ useClass: OptionsFactory }));
    await expectFactoryOptionsApplied(app);
    expect(OptionsFactory.calls).toBe(1);
  });

  it('useExisting uses the imported provider', async () => {
    OptionsFactory.calls = 0;
    const app = await boot(db.url, TokenResourceModule.forRootAsync({ imports: [OptionsFactoryModule], useExisting: OptionsFactory }));
    await expectFactoryOptionsApplied(app);
    expect(OptionsFactory.calls).toBe(1);
  });

  it('fills in the documented defaults', async () => {
    const app = await boot(db.url, TokenResourceModule.forRootAsync({ useFactory: () => ({ jwt: { secret: TEST_SECRET } }) }));
    const {
      logOutEverywhere: { subjectOf, ...logOutEverywhere },
      ...options
    } = app.get<ResolvedTokenResourceOptions>(TOKEN_RESOURCE_OPTIONS);
    expect({ ...options, logOutEverywhere }).toEqual({
      dataSource: 'default',
      entity: Token,
      isGlobal: false,
      jwt: { secret: TEST_SECRET, clockToleranceSeconds: 0, algorithms: ['HS256', 'HS384', 'HS512'] },
      storeAllTokens: false,
      requireTokenPresenceForAuthentication: false,
      authenticationPurpose: 'user',
      storeTimeoutMs: 2000,
      expunge: { enabled: true, cron: '0 0,12 * * *', startupJitterSeconds: 60, batchSize: 20_000 },
      logOutEverywhere: {
        includePurposes: undefined,
        excludePurposes: [REVOCATION_PURPOSE],
        applyOnPasswordChange: false,
        userEntity: undefined,
        passwordField: 'hashedPassword',
        markerLifetimeSeconds: 365 * 86_400,
      },
      revocationCache: {
        enabled: false,
        announce: false,
        maxStalenessMs: 1000,
        maxEntries: 100_000,
        maxEntryAgeMs: 60_000,
        maxVerifiedTokens: 20_000,
      },
      sessions: { accessTokenLifetimeSeconds: 15 * 60, refreshTokenLifetimeSeconds: 30 * 86_400, reuseIntervalSeconds: 0 },
    });
    expect(subjectOf({ id: 42 })).toBe('42');
    expect(() => subjectOf({})).toThrow(TypeError);
  });

  it('needs useFactory, useClass or useExisting', () => {
    expect(() => TokenResourceModule.forRootAsync({})).toThrow(TokenResourceConfigError);
  });

  it('validates what the factory returns, at start-up', async () => {
    await expect(
      createTokenApp(db.url, {
        tokenModule: TokenResourceModule.forRootAsync({ useFactory: () => ({ jwt: {} }) }),
      }),
    ).rejects.toBeInstanceOf(TokenResourceConfigError);
  });

  it('a factory cannot return the wiring options: they do not compile, and the ones given to forRootAsync win', async () => {
    class WiringFactory implements TokenResourceOptionsFactory {
      createTokenResourceOptions(): TokenResourceFactoryOptions {
        // @ts-expect-error entity belongs next to useClass, not in what the factory returns
        return { jwt: { secret: TEST_SECRET }, expunge: { enabled: false }, entity: MyToken };
      }
    }
    const fromClass = await boot(db.url, TokenResourceModule.forRootAsync({ useClass: WiringFactory }));
    const fromFactory = await boot(
      db.url,
      TokenResourceModule.forRootAsync({
        // @ts-expect-error dataSource and isGlobal belong next to useFactory, not in what it returns
        useFactory: () => ({ jwt: { secret: TEST_SECRET }, expunge: { enabled: false }, dataSource: 'elsewhere', isGlobal: true }),
      }),
    );
    for (const app of [fromClass, fromFactory]) {
      const options = app.get<ResolvedTokenResourceOptions>(TOKEN_RESOURCE_OPTIONS);
      expect(options).toMatchObject({ dataSource: 'default', entity: Token, isGlobal: false });
    }
  });
});

describe('a named TypeORM data source', () => {
  let other: TestDatabase;
  let plain: TestDatabase;

  beforeAll(async () => {
    other = await createTestDatabase();
    plain = await createTestDatabase();
  });

  afterAll(async () => {
    for (const app of apps.splice(0)) await app.close();
    await other?.drop();
    await plain?.drop();
  });

  async function bootNamed(tokenModule: DynamicModule): Promise<INestApplication> {
    const moduleRef = await Test.createTestingModule({
      imports: [
        // The default data source deliberately has no token table.
        TypeOrmModule.forRoot({ type: 'postgres', url: plain.url, entities: [], logging: false }),
        TypeOrmModule.forRoot(typeOrmOptions(other.url, { name: 'tokens' })),
        ScheduleModule.forRoot(),
        tokenModule,
      ],
    }).compile();
    const app = moduleRef.createNestApplication({ logger: false });
    await app.init();
    apps.push(app);
    return app;
  }

  it.each([
    [
      'forRoot',
      () =>
        TokenResourceModule.forRoot({
          dataSource: 'tokens',
          jwt: { secret: TEST_SECRET },
          storeAllTokens: true,
          expunge: { enabled: false },
        }),
    ],
    [
      'forRootAsync',
      () =>
        TokenResourceModule.forRootAsync({
          dataSource: 'tokens',
          useFactory: () => ({ jwt: { secret: TEST_SECRET }, storeAllTokens: true, expunge: { enabled: false } }),
        }),
    ],
  ])('%s writes to the named data source only', async (_label, make) => {
    const app = await bootNamed(make());
    const named = app.get<DataSource>(getDataSourceToken('tokens'));
    const before = await countRows(named);
    const tokens = app.get(TokenService);
    const issued = await tokens.issueToken({ subject: 'named' });
    await tokens.revoke(issued.token);
    expect(await tokens.tokenRevoked(issued.token)).toBe(true);
    expect(await countRows(named)).toBe(before + 1);
    expect(await tokens.expungeExpired()).toBeGreaterThanOrEqual(0);
    // The default data source's database has no token table at all.
    const [{ exists }] = await app.get(DataSource).query(`SELECT to_regclass('tokens') IS NOT NULL AS exists`);
    expect(exists).toBe(false);
  });

  it('revoke in a transaction takes a manager of the named data source, and refuses one of another', async () => {
    const app = await bootNamed(
      TokenResourceModule.forRoot({ dataSource: 'tokens', jwt: { secret: TEST_SECRET }, expunge: { enabled: false } }),
    );
    const named = app.get<DataSource>(getDataSourceToken('tokens'));
    const tokens = app.get(TokenService);
    const before = await countRows(named);
    const wrong = app.get(DataSource).createQueryRunner();
    await wrong.connect();
    await wrong.startTransaction();
    const token = await signToken();
    await expect(tokens.revoke(token, { manager: wrong.manager })).rejects.toThrow(/data source 'default'.*'tokens'/);
    await wrong.rollbackTransaction();
    await wrong.release();
    expect(await countRows(named)).toBe(before);
    await named.transaction((manager) => tokens.revoke(token, { manager }));
    expect(await tokens.tokenRevoked(token)).toBe(true);
  });
});

describe('isGlobal', () => {
  @Injectable()
  class Consumer {
    constructor(@Inject(TokenService) readonly tokens: TokenService) {}
  }

  @Module({ providers: [Consumer], exports: [Consumer] })
  class FeatureModule {}

  it('with isGlobal, a module that does not import TokenResourceModule can inject TokenService', async () => {
    const app = await createTokenApp(db.url, {
      options: { isGlobal: true, expunge: { enabled: false } },
      imports: [FeatureModule],
    });
    apps.push(app);
    const consumer = app.get(Consumer);
    expect(consumer.tokens).toBe(app.get(TokenService));
    expect(await consumer.tokens.tokenRevoked(await signToken())).toBe(false);
  });

  it('with isGlobal through forRootAsync too', async () => {
    const app = await createTokenApp(db.url, {
      tokenModule: TokenResourceModule.forRootAsync({
        isGlobal: true,
        useFactory: () => ({ jwt: { secret: TEST_SECRET }, expunge: { enabled: false } }),
      }),
      imports: [FeatureModule],
    });
    apps.push(app);
    expect(app.get(Consumer).tokens).toBeInstanceOf(TokenService);
  });

  it('without isGlobal, the same module cannot resolve TokenService', async () => {
    await expect(
      createTokenApp(db.url, {
        options: { expunge: { enabled: false } },
        imports: [FeatureModule],
      }),
    ).rejects.toThrow(/TokenService/);
  });
});

describe('a custom entity with another table name', () => {
  let own: TestDatabase;

  beforeAll(async () => {
    own = await createTestDatabase();
  });

  afterAll(async () => {
    await own?.drop();
  });

  it('uses its table for every operation, with synchronize: true', async () => {
    const app = await boot(
      own.url,
      TokenResourceModule.forRoot({ entity: MyToken, jwt: { secret: TEST_SECRET }, expunge: { enabled: false } }),
      {
        typeOrm: { entities: [MyToken], migrations: [], migrationsRun: false, synchronize: true },
      },
    );
    const dataSource = dataSourceOf(app);
    const tokens = app.get(TokenService);
    const token = await signToken({ jti: 'custom-1', sub: 'olga' });
    await tokens.storeToken({ token, purpose: 'user', extraData: { k: 'v' } });
    const row = await tokens.getToken({ jti: 'custom-1' });
    expect(row).toBeInstanceOf(MyToken);
    expect(row?.extraData).toEqual({ k: 'v' });
    expect((await tokens.listTokens('olga')).map((t) => t.jti)).toEqual(['custom-1']);
    await tokens.revoke(token);
    expect(await tokens.tokenRevoked(token)).toBe(true);
    expect(await tokens.jtiRevoked('custom-1')).toBe(true);
    await tokens.revokeJti('custom-2', 'olga');
    await tokens.storeConfirmationChanges({ token: await signToken({ jti: 'custom-3', sub: 'olga' }), changes: { email: 'o@x' } });
    expect(await tokens.getConfirmationChanges('custom-3')).toEqual({ email: 'o@x' });
    await tokens.revoke(await signToken({ jti: 'custom-old' }, { expiresInSeconds: -60 }));
    expect(await tokens.expungeExpired()).toBe(1);
    expect(await countRows(dataSource, 'my_tokens')).toBe(3);
    const [{ exists }] = await dataSource.query(`SELECT to_regclass('tokens') IS NOT NULL AS exists`);
    expect(exists).toBe(false);
  });
});

describe('configuration errors fail at start-up with TokenResourceConfigError saying how to fix them', () => {
  const { publicKey: rsaPublic, privateKey: rsaPrivate } = generateKeyPairSync('rsa', {
    modulusLength: 2048,
    publicKeyEncoding: { type: 'spki', format: 'pem' },
    privateKeyEncoding: { type: 'pkcs8', format: 'pem' },
  });
  const { publicKey: edPublic } = generateKeyPairSync('ed25519', {
    publicKeyEncoding: { type: 'spki', format: 'pem' },
    privateKeyEncoding: { type: 'pkcs8', format: 'pem' },
  });

  const CASES: Array<[string, Record<string, unknown>, RegExp]> = [
    ['no key', { jwt: {} }, /exactly one.*jwt\.secret.*jwt\.publicKey.*jwt\.jwksUri/],
    ['no jwt option at all', {}, /jwt/],
    ['two keys', { jwt: { secret: TEST_SECRET, publicKey: rsaPublic } }, /exactly one.*jwt\.secret and jwt\.publicKey/],
    ['three keys', { jwt: { secret: TEST_SECRET, publicKey: rsaPublic, jwksUri: 'https://x.test/jwks' } }, /exactly one/],
    ['an empty secret', { jwt: { secret: '' } }, /jwt\.secret must be a non-empty/],
    ['a secret with a private key', { jwt: { secret: TEST_SECRET, privateKey: rsaPrivate } }, /jwt\.privateKey/],
    ['a 1-byte secret', { jwt: { secret: 'x' } }, /jwt\.secret is 1 bytes, too short for HS256, HS384, HS512.*32 bytes for HS256/],
    ['a 31-byte secret', { jwt: { secret: new Uint8Array(31) } }, /jwt\.secret is 31 bytes.*RFC 7518/],
    [
      'HS512 with a 48-byte secret',
      { jwt: { secret: 'x'.repeat(48), algorithms: ['HS256', 'HS512'] } },
      /too short for HS512.*leave those algorithms out of jwt\.algorithms/,
    ],
    [
      'requireTokenPresenceForAuthentication without storeAllTokens',
      { jwt: { secret: TEST_SECRET }, requireTokenPresenceForAuthentication: true },
      /storeAllTokens: true/,
    ],
    ["algorithms containing 'none'", { jwt: { secret: TEST_SECRET, algorithms: ['HS256', 'none'] } }, /none/],
    ["algorithms containing 'NONE'", { jwt: { publicKey: rsaPublic, algorithms: ['NONE'] } }, /none/],
    ['RS256 with an HMAC secret', { jwt: { secret: TEST_SECRET, algorithms: ['RS256'] } }, /RS256.*jwt\.secret.*HS256/],
    ['HS256 with an RSA public key', { jwt: { publicKey: rsaPublic, algorithms: ['HS256'] } }, /HS256.*jwt\.publicKey.*RS256/],
    ['ES256 with an Ed25519 key', { jwt: { publicKey: edPublic, algorithms: ['ES256'] } }, /ES256.*EdDSA/],
    ['HS256 with a JWKS', { jwt: { jwksUri: 'https://x.test/jwks', algorithms: ['HS256'] } }, /HS256/],
    ['an empty algorithms list', { jwt: { secret: TEST_SECRET, algorithms: [] } }, /non-empty/],
    [
      'an unreadable PEM public key',
      { jwt: { publicKey: '-----BEGIN PUBLIC KEY-----\nnot a key\n-----END PUBLIC KEY-----' } },
      /jwt\.publicKey could not be read.*PEM/,
    ],
    ['an unreadable private key', { jwt: { publicKey: rsaPublic, privateKey: 'garbage' } }, /jwt\.privateKey could not be read/],
    [
      'a private key that cannot sign the accepted algorithms',
      {
        jwt: {
          publicKey: rsaPublic,
          privateKey: generateKeyPairSync('ec', {
            namedCurve: 'prime256v1',
            privateKeyEncoding: { type: 'pkcs8', format: 'pem' },
            publicKeyEncoding: { type: 'spki', format: 'pem' },
          }).privateKey,
        },
      },
      /privateKey cannot sign/,
    ],
    [
      'a private key that does not match the public key',
      {
        jwt: {
          publicKey: rsaPublic,
          privateKey: generateKeyPairSync('rsa', {
            modulusLength: 2048,
            privateKeyEncoding: { type: 'pkcs8', format: 'pem' },
            publicKeyEncoding: { type: 'spki', format: 'pem' },
          }).privateKey,
        },
      },
      /not the private half of jwt\.publicKey/,
    ],
    ['a relative jwksUri', { jwt: { jwksUri: '/jwks.json' } }, /jwksUri must be an absolute URL/],
    ['a garbage jwksUri', { jwt: { jwksUri: 'not a url' } }, /jwksUri/],
    ['a non-http jwksUri', { jwt: { jwksUri: 'ftp://x.test/jwks' } }, /jwksUri/],
    ['negative clockToleranceSeconds', { jwt: { secret: TEST_SECRET, clockToleranceSeconds: -1 } }, /clockToleranceSeconds.*>= 0/],
    ['NaN clockToleranceSeconds', { jwt: { secret: TEST_SECRET, clockToleranceSeconds: Number.NaN } }, /clockToleranceSeconds/],
    ['batchSize 0', { jwt: { secret: TEST_SECRET }, expunge: { batchSize: 0 } }, /expunge\.batchSize must be a positive integer/],
    ['fractional batchSize', { jwt: { secret: TEST_SECRET }, expunge: { batchSize: 2.5 } }, /expunge\.batchSize/],
    [
      'negative intervalHours',
      { jwt: { secret: TEST_SECRET }, expunge: { intervalHours: -1 } },
      /expunge\.intervalHours must be a whole number of hours that divides 24/,
    ],
    ['zero intervalHours', { jwt: { secret: TEST_SECRET }, expunge: { intervalHours: 0 } }, /expunge\.intervalHours/],
    [
      "authenticationPurpose 'revocation'",
      { jwt: { secret: TEST_SECRET }, authenticationPurpose: REVOCATION_PURPOSE },
      /authenticationPurpose/,
    ],
    ['a secret that is neither a string nor bytes', { jwt: { secret: 42 } }, /jwt\.secret must be a non-empty string or Uint8Array/],
    ['storeTimeoutMs 0', { jwt: { secret: TEST_SECRET }, storeTimeoutMs: 0 }, /storeTimeoutMs must be a positive number, got 0/],
    [
      'an expunge.cron that is no string',
      { jwt: { secret: TEST_SECRET }, expunge: { cron: 5 } },
      /expunge\.cron must be a cron expression such as '0 0,12 \* \* \*'/,
    ],
    [
      'an empty purpose in includePurposes',
      { jwt: { secret: TEST_SECRET }, logOutEverywhere: { includePurposes: [''] } },
      /logOutEverywhere\.includePurposes must be an array of purposes/,
    ],
    [
      'excludePurposes that is no array',
      { jwt: { secret: TEST_SECRET }, logOutEverywhere: { excludePurposes: 'revocation' } },
      /logOutEverywhere\.excludePurposes must be an array/,
    ],
    [
      'applyOnPasswordChange without userEntity',
      { jwt: { secret: TEST_SECRET }, logOutEverywhere: { applyOnPasswordChange: true } },
      /applyOnPasswordChange needs logOutEverywhere\.userEntity/,
    ],
    [
      'a subjectOf that is no function',
      { jwt: { secret: TEST_SECRET }, logOutEverywhere: { subjectOf: 'uuid' } },
      /logOutEverywhere\.subjectOf must be a function/,
    ],
    [
      'a markerLifetime that is no duration',
      { jwt: { secret: TEST_SECRET }, logOutEverywhere: { markerLifetime: 'forever' } },
      /logOutEverywhere\.markerLifetime/,
    ],
    [
      'revocationCache.maxEntries 0',
      { jwt: { secret: TEST_SECRET }, revocationCache: { maxEntries: 0 } },
      /revocationCache\.maxEntries must be a positive integer/,
    ],
    [
      'a revocationCache that is no object',
      { jwt: { secret: TEST_SECRET }, revocationCache: true },
      /revocationCache must be an object such as \{ enabled: true \}, got true/,
    ],
    [
      'a revocationCache.announce that is no boolean',
      { jwt: { secret: TEST_SECRET }, revocationCache: { announce: 'yes' } },
      /revocationCache\.announce must be true or false/,
    ],
    ['sessions that are no object', { jwt: { secret: TEST_SECRET }, sessions: 'long' }, /sessions must be an object/],
    [
      'a malformed sessions.refreshTokenExpiresIn',
      { jwt: { secret: TEST_SECRET }, sessions: { refreshTokenExpiresIn: 'a month' } },
      /sessions\.refreshTokenExpiresIn: expected seconds or a duration such as '15m'/,
    ],
    [
      'access tokens that outlive refresh tokens',
      { jwt: { secret: TEST_SECRET }, sessions: { accessTokenExpiresIn: '2d', refreshTokenExpiresIn: '1d' } },
      /sessions\.accessTokenExpiresIn \(172800 s\) exceeds sessions\.refreshTokenExpiresIn.*Shorten accessTokenExpiresIn/,
    ],
    [
      'refresh tokens that outlive the log-out marker',
      { jwt: { secret: TEST_SECRET }, sessions: { refreshTokenExpiresIn: '400d' } },
      /sessions\.refreshTokenExpiresIn .* exceeds logOutEverywhere\.markerLifetime.*raise markerLifetime/,
    ],
    [
      'a negative sessions.reuseIntervalSeconds',
      { jwt: { secret: TEST_SECRET }, sessions: { reuseIntervalSeconds: -1 } },
      /sessions\.reuseIntervalSeconds must be a number from 0 to 300/,
    ],
  ];

  it.each(CASES)('%s', async (_label, options, message) => {
    const attempt = createTokenApp(db.url, { tokenModule: TokenResourceModule.forRoot(options as unknown as TokenResourceModuleOptions) });
    const error = await attempt.then(
      () => null,
      (e: unknown) => e,
    );
    expect(error).toBeInstanceOf(TokenResourceConfigError);
    expect((error as Error).message).toMatch(message);
  });

  it('a correct configuration of each kind boots', async () => {
    for (const jwt of [
      { secret: TEST_SECRET },
      { publicKey: rsaPublic, privateKey: rsaPrivate },
      { publicKey: edPublic },
      { jwksUri: 'https://x.test/jwks' },
    ]) {
      const app = await createTokenApp(db.url, { tokenModule: TokenResourceModule.forRoot({ jwt, expunge: { enabled: false } }) });
      await app.close();
    }
  });
});
