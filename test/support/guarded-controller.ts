import { Controller, Get, UseGuards, type CanActivate, type Type } from '@nestjs/common';
import { RevokedTokenGuard, TokenClaims } from '../../lib/index.js';

/** A controller whose `GET /<path>` is behind `guard` and answers `{ sub }` of the admitted token. */
export function subjectController(path: string, guard: Type<CanActivate>): Type {
  @Controller(path)
  @UseGuards(guard)
  class SubjectController {
    @Get()
    get(@TokenClaims('sub') sub: string) {
      return { sub };
    }
  }
  return SubjectController;
}

/** `GET /guarded` behind {@link RevokedTokenGuard}, answering `{ sub }`. */
export const GuardedSubjectController = subjectController('guarded', RevokedTokenGuard);
