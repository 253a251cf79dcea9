import { Injectable, type CanActivate, type ExecutionContext } from '@nestjs/common';

/** Verifies the bearer JWT and rejects revoked ones (placeholder until issue 3 lands). */
@Injectable()
export class RevokedTokenGuard implements CanActivate {
  canActivate(_context: ExecutionContext): boolean {
    return false;
  }
}
