import { TokenResourceConfigError } from '../token-resource.exceptions.js';

/**
 * Throws a {@link TokenResourceConfigError} whose message names the package, so that a
 * failed boot says which module refused its options.
 */
export function failConfig(message: string, cause?: unknown): never {
  throw new TokenResourceConfigError(`nestjs-token-resource: ${message}`, cause === undefined ? undefined : { cause });
}
