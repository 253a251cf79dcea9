import { applyDecorators, type INestApplication, type Type } from '@nestjs/common';
import { PATH_METADATA } from '@nestjs/common/constants.js';
import { DiscoveryService, MetadataScanner, Reflector } from '@nestjs/core';
import { ApiBearerAuth, ApiServiceUnavailableResponse, ApiUnauthorizedResponse, DocumentBuilder, SwaggerModule } from '@nestjs/swagger';
import { SkipTokenCheck } from '../../lib/index.js';

/** Where the Swagger UI is served; the OpenAPI document is at `/docs-json`. */
export const API_DOCS_PATH = 'docs';

/** The name of the bearer security scheme in the OpenAPI document. */
export const BEARER_SCHEME = 'bearer';

/** The metadata key `@SkipTokenCheck()` sets, which `RevokedTokenGuard` reads. */
const SKIP_TOKEN_CHECK = SkipTokenCheck().KEY;

/**
 * What every route behind the app-wide `RevokedTokenGuard` answers besides its own responses:
 * it needs a bearer token, refuses a missing, invalid or revoked one with `401`, and answers
 * `503` when the token store is down (fail closed).
 */
export const ApiTokenChecked = (): MethodDecorator =>
  applyDecorators(
    ApiBearerAuth(BEARER_SCHEME),
    ApiUnauthorizedResponse({ description: 'No bearer token, or an invalid, expired or revoked one' }),
    ApiServiceUnavailableResponse({ description: 'The token store cannot answer; the token is not admitted' }),
  );

/** Handlers already given {@link ApiTokenChecked}: tests set up the docs of several apps in one process. */
const documented = new WeakSet<object>();

/**
 * Serves the Swagger UI at `/docs` and the OpenAPI document at `/docs-json`. Every route the
 * guard checks (all but those with `@SkipTokenCheck()`, read as the guard reads it: the
 * handler's setting overrides its controller's) gets {@link ApiTokenChecked}, so a new
 * route is documented with its security and its `401`/`503` without a decorator of its own.
 * Routes describe their own bodies and other answers with `@nestjs/swagger` decorators.
 */
export function setupApiDocs(app: INestApplication): void {
  const reflector = app.get(Reflector);
  const scanner = app.get(MetadataScanner);
  for (const wrapper of app.get(DiscoveryService).getControllers()) {
    const controller = wrapper.metatype as Type | undefined;
    const prototype = controller?.prototype as Record<string, () => unknown> | undefined;
    if (!controller || !prototype) continue;
    for (const name of scanner.getAllMethodNames(prototype)) {
      const handler = prototype[name];
      if (Reflect.getMetadata(PATH_METADATA, handler) === undefined || documented.has(handler)) continue;
      if (reflector.getAllAndOverride<boolean | undefined>(SKIP_TOKEN_CHECK, [handler, controller]) === true) continue;
      ApiTokenChecked()(prototype, name, Object.getOwnPropertyDescriptor(prototype, name)!);
      documented.add(handler);
    }
  }
  const config = new DocumentBuilder()
    .setTitle('nestjs-token-resource sample app')
    .setDescription('Log-in, revocable JWTs, log-out everywhere and e-mail changes, on nestjs-token-resource.')
    .addBearerAuth({ type: 'http', scheme: 'bearer', bearerFormat: 'JWT' }, BEARER_SCHEME)
    .build();
  SwaggerModule.setup(API_DOCS_PATH, app, () => SwaggerModule.createDocument(app, config));
}
