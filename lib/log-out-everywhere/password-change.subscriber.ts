import { Injectable } from '@nestjs/common';

/** Revokes a user's tokens when the password changes (placeholder until issue 5 lands). */
@Injectable()
export class PasswordChangeSubscriber {}
