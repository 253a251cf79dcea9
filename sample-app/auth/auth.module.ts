import { Module } from '@nestjs/common';
import { UsersModule } from '../users/users.module.js';
import { AuthController } from './auth.controller.js';
import { AuthService } from './auth.service.js';
import { EmailChangeService } from './email-change.service.js';
import { EmailController } from './email.controller.js';
import { MeController } from './me.controller.js';

/** The HTTP API around the token library (which the app module registers globally). */
@Module({
  imports: [UsersModule],
  controllers: [AuthController, EmailController, MeController],
  providers: [AuthService, EmailChangeService],
})
export class AuthModule {}
