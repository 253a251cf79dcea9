import 'reflect-metadata';
import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import {
  Injectable,
  UseGuards,
  UseInterceptors,
  type CallHandler,
  type ContextType,
  type ExecutionContext,
  type NestInterceptor,
} from '@nestjs/common';
import { ROUTE_ARGS_METADATA } from '@nestjs/common/constants.js';
import { ExternalContextCreator } from '@nestjs/core';
import { Test, type TestingModule } from '@nestjs/testing';
import { InvalidTokenError, RevokedTokenGuard, SkipTokenCheck, TokenClaims, TokenService, type TokenClaimsPayload } from '../lib/index.js';
import { TokenCodec } from '../lib/jwt/token-codec.js';
import { TOKEN_RESOURCE_OPTIONS } from '../lib/token-resource.internal-constants.js';

// The guard and @TokenClaims() as Nest runs them for a WebSocket message or an RPC call.
// @nestjs/websockets and @nestjs/microservices are not installed; their context creators are
// built like @nestjs/core's ExternalContextCreator, used here: the guard gets the call's
// argument array, the parameter decorators a fresh ExecutionContext over a copy of it. So
// what ties the claims to the call is only what the elements are, which this exercises.

/** Tokens are `<sub>` or `<sub>:revoked`; the stub codec and store read them as such. */
const codec = {
  verify: async (token: string): Promise<TokenClaimsPayload> => {
    if (!/^[a-z]+(:revoked)?$/.test(token)) throw new InvalidTokenError('bad signature');
    return { jti: `jti-${token}`, sub: token.split(':')[0], exp: 2_000_000_000 };
  },
};
const tokenService = {
  checkClaims: async (claims: TokenClaimsPayload) => ({ revoked: claims.jti!.endsWith(':revoked'), presentForAuthentication: true }),
};
const options = { authenticationPurpose: 'user', storeTimeoutMs: 1000, requireTokenPresenceForAuthentication: false };

/** A WebSocket client with the token of its handshake, which a test may change between messages. */
interface FakeClient {
  handshake: { headers: { authorization?: string } };
}

/** Takes the token from the transport headers of an RPC call or the handshake of a WebSocket client. */
@Injectable()
class MessageTokenGuard extends RevokedTokenGuard {
  protected override extractToken(request: Record<string, any>): string | undefined {
    const header: unknown = request?.getHeaders?.().authorization ?? request?.handshake?.headers?.authorization;
    return typeof header === 'string' ? /^Bearer (\S+)$/i.exec(header)?.[1] : undefined;
  }
}

/** Holds a call between its guard and its parameters until told, as an async interceptor may. */
@Injectable()
class HoldInterceptor implements NestInterceptor {
  static readonly held = new Map<string, Promise<void>>();

  async intercept(context: ExecutionContext, next: CallHandler) {
    const data = context.getArgByIndex<{ hold?: string } | undefined>(context.getType() === 'ws' ? 1 : 0);
    const hold = typeof data === 'object' && data?.hold ? HoldInterceptor.held.get(data.hold) : undefined;
    if (hold) await hold;
    return next.handle();
  }
}

@Injectable()
@UseGuards(MessageTokenGuard)
@UseInterceptors(HoldInterceptor)
class Gateway {
  checked(@TokenClaims() claims: TokenClaimsPayload | undefined, @TokenClaims('sub') sub: string | undefined) {
    return { claims, sub };
  }

  @SkipTokenCheck()
  skipped(@TokenClaims() claims: TokenClaimsPayload | undefined) {
    return { claims };
  }
}

let moduleRef: TestingModule;

beforeAll(async () => {
  moduleRef = await Test.createTestingModule({
    providers: [
      { provide: TOKEN_RESOURCE_OPTIONS, useValue: options },
      { provide: TokenCodec, useValue: codec },
      { provide: TokenService, useValue: tokenService },
      HoldInterceptor,
      Gateway,
    ],
  }).compile();
  await moduleRef.init();
});

afterAll(async () => {
  await moduleRef?.close();
});

/** The handler as Nest calls it for a message of `type`: guards, interceptors, then parameters. */
function handlerOf(type: ContextType, method: 'checked' | 'skipped'): (...args: unknown[]) => Promise<Record<string, unknown>> {
  const gateway = moduleRef.get(Gateway);
  const paramsFactory = { exchangeKeyForValue: () => undefined };
  return moduleRef
    .get(ExternalContextCreator)
    .create(
      gateway,
      gateway[method] as (...args: unknown[]) => unknown,
      method,
      ROUTE_ARGS_METADATA,
      paramsFactory,
      undefined,
      undefined,
      { guards: true, interceptors: true, filters: false },
      type,
    );
}

async function outcome(work: Promise<Record<string, unknown>>): Promise<Record<string, unknown> | string> {
  return work.then(
    (result) => result,
    (error: unknown) => (error as Error).message,
  );
}

describe("RevokedTokenGuard and @TokenClaims() in Nest's call pipeline", () => {
  it('on one WebSocket client, a refused message and a skipped handler after an admitted message get no claims', async () => {
    const checked = handlerOf('ws', 'checked');
    const skipped = handlerOf('ws', 'skipped');
    const client: FakeClient = { handshake: { headers: { authorization: 'Bearer alice' } } };

    expect(await outcome(checked(client, { n: 1 }, 'chat'))).toMatchObject({ sub: 'alice', claims: { sub: 'alice', jti: 'jti-alice' } });
    // The token of the connection is revoked now; the next message is refused...
    client.handshake.headers.authorization = 'Bearer alice:revoked';
    expect(await outcome(checked(client, { n: 2 }, 'chat'))).toBe('token revoked');
    // ...and a handler the guard lets through unchecked is handed no identity at all.
    expect(await outcome(skipped(client, { n: 3 }, 'chat'))).toEqual({ claims: undefined });
    // Nor does anything else that looks at the connection find one.
    expect(client).toEqual({ handshake: { headers: { authorization: 'Bearer alice:revoked' } } });
  });

  it('hands concurrent WebSocket messages on one client each their own claims', async () => {
    const checked = handlerOf('ws', 'checked');
    const client: FakeClient = { handshake: { headers: { authorization: 'Bearer alice' } } };
    let release!: () => void;
    HoldInterceptor.held.set(
      'first',
      new Promise<void>((resolve) => {
        release = resolve;
      }),
    );
    // alice's message is admitted, then held before its parameters are read...
    const first = outcome(checked(client, { hold: 'first' }, 'chat'));
    await new Promise((resolve) => setImmediate(resolve));
    // ...while bob's message on the same connection (a token per message) is admitted and answered.
    client.handshake.headers.authorization = 'Bearer bob';
    expect(await outcome(checked(client, { n: 2 }, 'chat'))).toMatchObject({ sub: 'bob' });
    client.handshake.headers.authorization = 'Bearer bob:revoked';
    expect(await outcome(checked(client, { n: 3 }, 'chat'))).toBe('token revoked');
    release();
    expect(await first).toMatchObject({ sub: 'alice', claims: { sub: 'alice' } });
  });

  it('gives a WebSocket message whose payload is no object no claims, as there is nothing of its own to keep them by', async () => {
    const checked = handlerOf('ws', 'checked');
    const client: FakeClient = { handshake: { headers: { authorization: 'Bearer carol' } } };
    expect(await outcome(checked(client, 'just text', 'chat'))).toEqual({ claims: undefined, sub: undefined });
    expect(await outcome(checked(client, { text: 'an object' }, 'chat'))).toMatchObject({ sub: 'carol' });
  });

  it('hands an RPC call the claims verified for it, and none to a refused or skipped call, also where a transport reuses its context object', async () => {
    const checked = handlerOf('rpc', 'checked');
    const skipped = handlerOf('rpc', 'skipped');
    // Nest's own transports make a context per message; a custom one may keep one per connection.
    const headers = { authorization: 'Bearer dave' };
    const transport = { getHeaders: () => headers };
    expect(await outcome(checked({ n: 1 }, transport))).toMatchObject({ sub: 'dave', claims: { jti: 'jti-dave' } });
    headers.authorization = 'Bearer dave:revoked';
    expect(await outcome(checked({ n: 2 }, transport))).toBe('token revoked');
    // Neither what the guard verified before nor claims a client put in the message data.
    expect(await outcome(skipped({ tokenClaims: { sub: 'admin' } }, transport))).toEqual({ claims: undefined });
    expect(Object.keys(transport)).toEqual(['getHeaders']);
  });
});
