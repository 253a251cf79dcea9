import { Body, Controller, HttpCode, HttpStatus, Post } from '@nestjs/common';
import { SkipTokenCheck, TokenClaims } from '../../lib/index.js';
import { changeEmailBody, confirmEmailBody, type ChangeEmailBody, type ConfirmEmailBody } from './auth.bodies.js';
import { EmailChangeService, type PendingEmailChange } from './email-change.service.js';

/** E-mail address changes, confirmed by a single-use token. */
@Controller('auth/email')
export class EmailController {
  constructor(private readonly emailChanges: EmailChangeService) {}

  /** `POST /auth/email {email}` (logged in) → `{confirmationToken, expiresAt}`. */
  @Post()
  @HttpCode(HttpStatus.ACCEPTED)
  request(@TokenClaims('sub') userId: string, @Body(changeEmailBody) body: ChangeEmailBody): Promise<PendingEmailChange> {
    return this.emailChanges.request(userId, body.email);
  }

  /**
   * `POST /auth/email/confirm {token}` → `{email}`. Public, like the link in an e-mail:
   * the confirmation token is the credential. A second use is refused with `409`.
   */
  @Post('confirm')
  @SkipTokenCheck()
  @HttpCode(HttpStatus.OK)
  confirm(@Body(confirmEmailBody) body: ConfirmEmailBody): Promise<{ email: string }> {
    return this.emailChanges.confirm(body.token);
  }
}
