import { Injectable } from '@nestjs/common';
import type { EntityManager } from 'typeorm';

/** Options of {@link LogOutEverywhereService.logOutEverywhere}. */
export interface LogOutEverywhereOptions {
  includePurposes?: string[];
  excludePurposes?: string[];
  exceptJti?: string;
  manager?: EntityManager;
}

/** Revokes all of a subject's tokens (placeholder until issue 5 lands). */
@Injectable()
export class LogOutEverywhereService {
  async logOutEverywhere(_subject: string, _opts: LogOutEverywhereOptions = {}): Promise<number> {
    throw new Error('not implemented yet');
  }
}
