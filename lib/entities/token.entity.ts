import { Column, CreateDateColumn, Entity, Index, PrimaryColumn, UpdateDateColumn } from 'typeorm';

/**
 * What is known about one JWT, keyed by its `jti`. The token string itself is never stored.
 *
 * Subclass it with another `@Entity('table')` and pass it as the `entity` option to
 * use another table or add columns.
 */
@Entity('tokens')
export class Token {
  /** The JWT `jti` claim; the only primary key. */
  @PrimaryColumn({ type: 'text' })
  jti!: string;

  /** The JWT `sub` claim. Indexed for log-out-everywhere and listing. */
  @Index()
  @Column({ type: 'text' })
  subject!: string;

  /** From the `exp` claim. Indexed because the expunger scans it. */
  @Index()
  @Column({ name: 'expires_at', type: 'timestamptz' })
  expiresAt!: Date;

  /** `'revocation'`, `'user'`, `'confirm'`, ... */
  @Column({ type: 'text' })
  purpose!: string;

  /** Free-form data, such as pending confirmation changes. */
  @Column({ name: 'extra_data', type: 'jsonb', nullable: true })
  extraData!: Record<string, unknown> | null;

  /** When the row was created. */
  @CreateDateColumn({ name: 'created_at', type: 'timestamptz', default: () => 'now()' })
  createdAt!: Date;

  /** When the row was last changed. */
  @UpdateDateColumn({ name: 'updated_at', type: 'timestamptz', default: () => 'now()' })
  updatedAt!: Date;

  /**
   * The 64-bit id of the last transaction that wrote the row through this library in a way
   * that can revoke a token or change a check's answer (`txid_current()`, the value of
   * `pg_current_xact_id()`): its default on insert, `SET changed_xid = DEFAULT` on update.
   * Every instance's revocation cache polls the rows of transactions it has not seen yet
   * by it; the index keeps that poll a short range scan. Not selected by reads of the
   * entity (`select: false`); leave it to the database.
   */
  @Index()
  @Column({ name: 'changed_xid', type: 'bigint', default: () => 'txid_current()', select: false })
  changedXid?: string;
}
