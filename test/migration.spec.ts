import { DataSource, Entity } from 'typeorm';
import { CreateTokensTable1763900000000, createTokensTableMigration, Token } from '../lib/index.js';
import { createTestDatabase, type TestDatabase } from './support/test-database.js';

/** The exported migration creates exactly the schema `synchronize` would. */

@Entity('my_tokens')
class MyToken extends Token {}

let db: TestDatabase;

beforeAll(async () => {
  db = await createTestDatabase();
});

afterAll(async () => {
  await db?.drop();
});

async function migrated(entities: Array<new () => unknown>, migrations: Array<new () => unknown>): Promise<DataSource> {
  const dataSource = new DataSource({ type: 'postgres', url: db.url, entities, migrations, logging: false });
  await dataSource.initialize();
  await dataSource.runMigrations();
  return dataSource;
}

describe('CreateTokensTable1763900000000', () => {
  let dataSource: DataSource;

  beforeAll(async () => {
    dataSource = await migrated([Token], [CreateTokensTable1763900000000]);
  });

  afterAll(async () => {
    await dataSource?.destroy();
  });

  it('leaves nothing for synchronize to do', async () => {
    const pending = await dataSource.driver.createSchemaBuilder().log();
    expect(pending.upQueries.map((query) => query.query)).toEqual([]);
  });

  it('creates the documented columns', async () => {
    const columns = await dataSource.query(`
      SELECT column_name, data_type, is_nullable, column_default
        FROM information_schema.columns WHERE table_name = 'tokens' ORDER BY column_name`);
    expect(columns).toEqual([
      { column_name: 'changed_xid', data_type: 'bigint', is_nullable: 'NO', column_default: 'txid_current()' },
      { column_name: 'created_at', data_type: 'timestamp with time zone', is_nullable: 'NO', column_default: 'now()' },
      { column_name: 'expires_at', data_type: 'timestamp with time zone', is_nullable: 'NO', column_default: null },
      { column_name: 'extra_data', data_type: 'jsonb', is_nullable: 'YES', column_default: null },
      { column_name: 'jti', data_type: 'text', is_nullable: 'NO', column_default: null },
      { column_name: 'purpose', data_type: 'text', is_nullable: 'NO', column_default: null },
      { column_name: 'subject', data_type: 'text', is_nullable: 'NO', column_default: null },
      { column_name: 'updated_at', data_type: 'timestamp with time zone', is_nullable: 'NO', column_default: 'now()' },
    ]);
  });

  it('makes jti the only primary key and indexes subject, expires_at and changed_xid', async () => {
    const indexes: Array<{ indexdef: string }> = await dataSource.query(`SELECT indexdef FROM pg_indexes WHERE tablename = 'tokens'`);
    const defs = indexes.map((row) => row.indexdef.replace(/^.* USING /, ''));
    expect(defs.sort()).toEqual(['btree (changed_xid)', 'btree (expires_at)', 'btree (jti)', 'btree (subject)']);
    const [{ columns }] = await dataSource.query(`
      SELECT array_agg(a.attname::text) AS columns FROM pg_index i
        JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey)
       WHERE i.indrelid = 'tokens'::regclass AND i.indisprimary`);
    expect(columns).toEqual(['jti']);
  });

  it('records itself, so running the migrations again does nothing', async () => {
    expect(await dataSource.runMigrations()).toEqual([]);
    const [{ count }] = await dataSource.query(`SELECT count(*)::int AS count FROM migrations WHERE name = $1`, [
      'CreateTokensTable1763900000000',
    ]);
    expect(count).toBe(1);
  });

  it('reverts by dropping the table', async () => {
    await dataSource.undoLastMigration();
    const [{ exists }] = await dataSource.query(`SELECT to_regclass('tokens') IS NOT NULL AS exists`);
    expect(exists).toBe(false);
    await dataSource.runMigrations();
    expect((await dataSource.driver.createSchemaBuilder().log()).upQueries).toEqual([]);
  });
});

describe('createTokensTableMigration for a custom table', () => {
  it('creates the table of a Token subclass, again matching synchronize', async () => {
    const dataSource = await migrated([MyToken], [createTokensTableMigration('my_tokens')]);
    try {
      expect((await dataSource.driver.createSchemaBuilder().log()).upQueries.map((query) => query.query)).toEqual([]);
      const [{ exists }] = await dataSource.query(`SELECT to_regclass('my_tokens') IS NOT NULL AS exists`);
      expect(exists).toBe(true);
    } finally {
      await dataSource.destroy();
    }
  });
});

describe('synchronize, for comparison', () => {
  it('creates an equivalent table on its own (the schema builder sees the same)', async () => {
    const other = await createTestDatabase();
    const dataSource = new DataSource({ type: 'postgres', url: other.url, entities: [Token], synchronize: true, logging: false });
    await dataSource.initialize();
    try {
      const columns = await dataSource.query(`SELECT count(*)::int AS count FROM information_schema.columns WHERE table_name = 'tokens'`);
      expect(columns[0].count).toBe(8);
      const indexes = await dataSource.query(`SELECT count(*)::int AS count FROM pg_indexes WHERE tablename = 'tokens'`);
      expect(indexes[0].count).toBe(4);
    } finally {
      await dataSource.destroy();
      await other.drop();
    }
  });
});
