import { SetMetadata, type CustomDecorator } from '@nestjs/common';
import { SKIP_TOKEN_CHECK_KEY } from './token-guard.constants.js';

/**
 * Lets requests to a handler, or to every handler of a controller, through
 * {@link RevokedTokenGuard} unchecked (no token needed, no claims attached).
 * `@SkipTokenCheck(false)` on a handler re-enables the check inside a skipped controller.
 * Its `KEY` is the metadata key, for tools that tell checked routes from skipped ones (API
 * docs, say) with `Reflector.getAllAndOverride(SkipTokenCheck().KEY, [handler, controller])`.
 */
export const SkipTokenCheck = (skip = true): CustomDecorator<string> => SetMetadata(SKIP_TOKEN_CHECK_KEY, skip);
