import { Controller, Get, UnauthorizedException } from '@nestjs/common';
import { TokenClaims, type TokenClaimsPayload } from '../../lib/index.js';
import { UsersService } from '../users/users.service.js';

/** The caller's identity. */
@Controller('me')
export class MeController {
  constructor(private readonly users: UsersService) {}

  /** `GET /me` → `{claims, user}`: the verified JWT payload and the current account data. */
  @Get()
  async me(@TokenClaims() claims: TokenClaimsPayload) {
    const user = await this.users.findById(String(claims.sub));
    if (!user) throw new UnauthorizedException('account no longer exists');
    return { claims, user: { id: user.id, email: user.email } };
  }
}
