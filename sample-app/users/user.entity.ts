import { Column, CreateDateColumn, Entity, PrimaryGeneratedColumn, UpdateDateColumn } from 'typeorm';

/**
 * An account of the sample app. Its `id` is the JWT `sub` of its tokens (the library's
 * default `subjectOf`), and `hashedPassword` is the property the library watches
 * (`logOutEverywhere.passwordField`, default `'hashedPassword'`).
 */
@Entity('users')
export class User {
  /** Random UUID, the JWT `sub`. */
  @PrimaryGeneratedColumn('uuid')
  id!: string;

  /** Lower-case e-mail address, unique. */
  @Column({ type: 'text', unique: true })
  email!: string;

  /** Argon2id hash (PHC string) of the password; never the password. */
  @Column({ name: 'hashed_password', type: 'text' })
  hashedPassword!: string;

  @CreateDateColumn({ name: 'created_at', type: 'timestamptz' })
  createdAt!: Date;

  @UpdateDateColumn({ name: 'updated_at', type: 'timestamptz' })
  updatedAt!: Date;
}
