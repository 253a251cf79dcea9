import type { MigrationInterface, QueryRunner } from 'typeorm';

/** Creates the sample app's `users` table; runs after the library's `CreateTokensTable1763900000000`. */
export class CreateUsersTable1763900000100 implements MigrationInterface {
  name = 'CreateUsersTable1763900000100';

  async up(queryRunner: QueryRunner): Promise<void> {
    await queryRunner.query(`
      CREATE TABLE users (
        id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
        email text NOT NULL,
        hashed_password text NOT NULL,
        created_at timestamptz NOT NULL DEFAULT now(),
        updated_at timestamptz NOT NULL DEFAULT now(),
        CONSTRAINT users_email_key UNIQUE (email)
      )`);
  }

  async down(queryRunner: QueryRunner): Promise<void> {
    await queryRunner.query('DROP TABLE users');
  }
}
