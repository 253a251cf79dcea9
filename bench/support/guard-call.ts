import type { ExecutionContext } from '@nestjs/common';
import type { RevokedTokenGuard } from '../../lib/index.js';

/** The handler and controller the bench's guard is asked about: no `@SkipTokenCheck()`. */
class BenchController {
  handler(): void {}
}

/**
 * Runs `guard.canActivate` for a bearer `token` as Nest would over HTTP, with a fresh request
 * object per call (the guard leaves the claims on it), without an HTTP server in between:
 * what bench:check compares is the guard's own cost.
 */
export function guardCall(guard: RevokedTokenGuard, token: string): Promise<boolean> {
  const request = { headers: { authorization: `Bearer ${token}` } };
  const http = { getRequest: () => request, getResponse: () => undefined, getNext: () => undefined };
  const context = {
    getType: () => 'http',
    getHandler: () => BenchController.prototype.handler,
    getClass: () => BenchController,
    switchToHttp: () => http,
    getArgs: () => [request],
    getArgByIndex: (i: number) => (i === 0 ? request : undefined),
  } as unknown as ExecutionContext;
  return guard.canActivate(context);
}
