import { BadRequestException, ConflictException, Injectable, Logger } from '@nestjs/common';
import { ConfigService } from '@nestjs/config';
import { DataSource } from 'typeorm';
import { InvalidTokenError, TokenAlreadyRevokedError, TokenService } from '../../lib/index.js';
import type { SampleEnv } from '../config/env.js';
import { UsersService } from '../users/users.service.js';

/** Purpose of e-mail confirmation tokens (the library's default for confirmation changes). */
export const CONFIRM_PURPOSE = 'confirm';

/** What `POST /auth/email` answers. */
export interface PendingEmailChange {
  /** In a real app this goes out by e-mail, in a link; the sample returns it so curl can use it. */
  confirmationToken: string;
  expiresAt: Date;
}

/**
 * E-mail changes confirmed by a token, on `storeConfirmationChanges` /
 * `getConfirmationChanges`: the new address waits on the token's row until the token
 * comes back, and the token is revoked as the change is applied, so it works once.
 *
 * A confirmation token is a JWT signed with the same key as login tokens, so it must not
 * open the API: the module runs with `requireTokenPresenceForAuthentication`, and the
 * guard admits only stored tokens of purpose `'user'`.
 */
@Injectable()
export class EmailChangeService {
  private readonly logger = new Logger(EmailChangeService.name);

  constructor(
    private readonly tokens: TokenService,
    private readonly users: UsersService,
    private readonly dataSource: DataSource,
    private readonly config: ConfigService<SampleEnv, true>,
  ) {}

  /**
   * Issues a confirmation token for `email` and stores the change on it.
   *
   * @throws ConflictException when the address belongs to an account already.
   */
  async request(userId: string, email: string): Promise<PendingEmailChange> {
    const owner = await this.users.findByEmail(email);
    if (owner)
      throw new ConflictException(owner.id === userId ? 'that is already your e-mail address' : 'that e-mail address is already in use');
    const issued = await this.tokens.issueToken({
      subject: userId,
      purpose: CONFIRM_PURPOSE,
      expiresIn: this.config.get('CONFIRM_TOKEN_TTL', { infer: true }),
    });
    await this.tokens.storeConfirmationChanges({ token: issued.token, changes: { email } });
    this.logger.log(`(development) would e-mail a confirmation link to ${email}`);
    return { confirmationToken: issued.token, expiresAt: issued.expiresAt };
  }

  /**
   * Applies the change stored on `token` and revokes the token, in one transaction: the
   * revocation is atomic, so of two concurrent confirmations exactly one applies the change,
   * and if the change fails (the address was taken meanwhile) the token stays usable.
   *
   * @throws BadRequestException for a token that is not a valid, pending confirmation token.
   * @throws ConflictException when the token was used already, or the address was taken.
   */
  async confirm(token: string): Promise<{ email: string }> {
    const used = () => new ConflictException('confirmation token already used or revoked');
    let pending: { subject: string; email: string } | undefined;
    try {
      // Revoked covers a replay (the row became a revocation) and a log-out everywhere.
      if (await this.tokens.tokenRevoked(token)) throw used();
      const row = await this.tokens.getToken({ token, purpose: CONFIRM_PURPOSE });
      const email = row ? (await this.tokens.getConfirmationChanges(row.jti, CONFIRM_PURPOSE))?.email : undefined;
      if (row && typeof email === 'string') pending = { subject: row.subject, email };
      // A concurrent confirmation may have revoked it since the first check.
      else if (await this.tokens.tokenRevoked(token)) throw used();
    } catch (error) {
      if (error instanceof InvalidTokenError) throw new BadRequestException('invalid or expired confirmation token');
      throw error;
    }
    if (!pending) throw new BadRequestException('not a pending confirmation token');
    const { subject, email } = pending;

    try {
      await this.dataSource.transaction(async (manager) => {
        await this.tokens.revoke(token, { manager });
        await this.users.changeEmail(subject, email, manager);
      });
    } catch (error) {
      if (error instanceof TokenAlreadyRevokedError) throw used();
      throw error;
    }
    return { email };
  }
}
