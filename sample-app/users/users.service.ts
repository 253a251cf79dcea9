import { ConflictException, Injectable, Logger, type OnApplicationBootstrap } from '@nestjs/common';
import { InjectRepository } from '@nestjs/typeorm';
import { QueryFailedError, type EntityManager, type Repository } from 'typeorm';
import { DEMO_USER } from './demo-user.js';
import { PasswordHasher } from './password-hasher.js';
import { User } from './user.entity.js';

/** PostgreSQL's `unique_violation`. */
const UNIQUE_VIOLATION = '23505';

/** Accounts: look-up, credentials, password and e-mail changes, and the demo account. */
@Injectable()
export class UsersService implements OnApplicationBootstrap {
  private readonly logger = new Logger(UsersService.name);

  constructor(
    @InjectRepository(User) private readonly users: Repository<User>,
    private readonly hasher: PasswordHasher,
  ) {}

  /** Seeds {@link DEMO_USER} once; concurrent or repeated starts leave the existing row alone. */
  async onApplicationBootstrap(): Promise<void> {
    const inserted = await this.users
      .createQueryBuilder()
      .insert()
      .values({ email: DEMO_USER.email, hashedPassword: await this.hasher.hash(DEMO_USER.password) })
      .orIgnore()
      .execute();
    if (inserted.identifiers.some((id) => id !== undefined)) this.logger.log(`Seeded the demo user ${DEMO_USER.email}`);
  }

  /** The account with this id, or `null`. */
  findById(id: string): Promise<User | null> {
    return this.users.findOneBy({ id });
  }

  /** The account with this (lower-case) e-mail address, or `null`. */
  findByEmail(email: string): Promise<User | null> {
    return this.users.findOneBy({ email });
  }

  /** The account if `password` is its password, else `null`, in about the same time either way. */
  async verifyCredentials(email: string, password: string): Promise<User | null> {
    const user = await this.findByEmail(email);
    const ok = await this.hasher.verify(user?.hashedPassword ?? (await this.hasher.dummyHash()), password);
    return user && ok ? user : null;
  }

  /** Whether `password` is the password of `user`. */
  checkPassword(user: User, password: string): Promise<boolean> {
    return this.hasher.verify(user.hashedPassword, password);
  }

  /**
   * Stores a new password hash with `Repository.save`, the TypeORM path that the library's
   * `applyOnPasswordChange` subscriber watches: in the same transaction it revokes every
   * token of the user. If the save fails, nothing is revoked.
   */
  async changePassword(user: User, newPassword: string): Promise<void> {
    user.hashedPassword = await this.hasher.hash(newPassword);
    await this.users.save(user);
  }

  /**
   * Sets the e-mail address, inside the caller's transaction when `manager` is given.
   *
   * @throws ConflictException when another account has the address.
   */
  async changeEmail(userId: string, email: string, manager: EntityManager = this.users.manager): Promise<void> {
    try {
      await manager.update(User, { id: userId }, { email });
    } catch (error) {
      if (error instanceof QueryFailedError && (error.driverError as { code?: string })?.code === UNIQUE_VIOLATION) {
        throw new ConflictException('that e-mail address is already in use');
      }
      throw error;
    }
  }
}
