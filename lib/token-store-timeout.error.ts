import { TokenResourceUnavailableError } from './token-resource.exceptions.js';

/**
 * The token store gave no answer within `timeoutMs` (a silent connection, or no pooled
 * connection free in time). Internal: callers see a {@link TokenResourceUnavailableError};
 * `OutageLog` groups these by their bound rather than by message.
 */
export class TokenStoreTimeoutError extends TokenResourceUnavailableError {
  constructor(readonly timeoutMs: number) {
    super(`the token store gave no answer within ${timeoutMs} ms`);
  }
}
