import { Table, TableIndex, type MigrationInterface, type QueryRunner } from 'typeorm';

/**
 * Builds a migration that creates a token table and its `subject`, `expires_at` and
 * `changed_xid` indexes. Index names come from the data source's naming strategy, so the schema
 * matches what `synchronize` would create for the same entity.
 *
 * @param tableName the table to create. Default `'tokens'`.
 */
export function createTokensTableMigration(tableName = 'tokens'): new () => MigrationInterface {
  return class implements MigrationInterface {
    name = `CreateTokensTable${tableName === 'tokens' ? '' : `_${tableName}`}1763900000000`;

    async up(queryRunner: QueryRunner): Promise<void> {
      const timestamp = { type: 'timestamptz', isNullable: false, default: 'now()' };
      await queryRunner.createTable(
        new Table({
          name: tableName,
          columns: [
            { name: 'jti', type: 'text', isPrimary: true },
            { name: 'subject', type: 'text', isNullable: false },
            { name: 'expires_at', type: 'timestamptz', isNullable: false },
            { name: 'purpose', type: 'text', isNullable: false },
            { name: 'extra_data', type: 'jsonb', isNullable: true },
            { name: 'created_at', ...timestamp },
            { name: 'updated_at', ...timestamp },
            { name: 'changed_xid', type: 'bigint', isNullable: false, default: 'txid_current()' },
          ],
        }),
        true,
      );
      const naming = queryRunner.connection.namingStrategy;
      for (const column of ['subject', 'expires_at', 'changed_xid']) {
        await queryRunner.createIndex(tableName, new TableIndex({ name: naming.indexName(tableName, [column]), columnNames: [column] }));
      }
    }

    async down(queryRunner: QueryRunner): Promise<void> {
      await queryRunner.dropTable(tableName, true);
    }
  };
}

/** TypeORM migration that creates the default `tokens` table and its indexes. */
export const CreateTokensTable1763900000000 = createTokensTableMigration();
