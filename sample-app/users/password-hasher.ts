import { Injectable } from '@nestjs/common';
import { hash, verify } from '@node-rs/argon2';

/**
 * Argon2id password hashing (the library's defaults: 19 MiB, 2 passes, the OWASP
 * minimum). Verifying against {@link PasswordHasher.dummyHash} for unknown accounts keeps
 * the login's timing the same whether or not the e-mail address exists.
 */
@Injectable()
export class PasswordHasher {
  private dummy?: Promise<string>;

  /** The PHC string of a new salted hash of `password`. */
  hash(password: string): Promise<string> {
    return hash(password);
  }

  /** Whether `password` matches `hashed`; `false` (never a throw) for a malformed hash. */
  async verify(hashed: string, password: string): Promise<boolean> {
    try {
      return await verify(hashed, password);
    } catch {
      return false;
    }
  }

  /** A hash of nothing anyone knows, to verify against when there is no account. */
  dummyHash(): Promise<string> {
    return (this.dummy ??= hash(`no-such-account-${Math.random()}`));
  }
}
