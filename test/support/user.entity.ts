import { Column, Entity, PrimaryGeneratedColumn } from 'typeorm';

/** An application's user, whose password change logs it out everywhere (`users` table). */
@Entity('users')
export class User {
  @PrimaryGeneratedColumn()
  id!: number;

  @Column({ type: 'text' })
  email!: string;

  @Column({ type: 'text' })
  hashedPassword!: string;
}
