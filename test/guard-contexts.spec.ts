import 'reflect-metadata';
import { validateHeaderValue } from 'node:http';
import { describe, expect, it, jest } from '@jest/globals';
import { Injectable, UnauthorizedException, type ContextType, type ExecutionContext } from '@nestjs/common';
import { ROUTE_ARGS_METADATA } from '@nestjs/common/constants.js';
import { Reflector } from '@nestjs/core';
import { ExecutionContextHost } from '@nestjs/core/helpers/execution-context-host.js';
import {
  getTokenClaims,
  InvalidTokenError,
  RevokedTokenGuard,
  SkipTokenCheck,
  TokenClaims,
  type TokenClaimsPayload,
  type TokenService,
} from '../lib/index.js';
import { bearerChallenge } from '../lib/guard/bearer-challenge.js';
import type { TokenCodec } from '../lib/jwt/token-codec.js';
import type { ResolvedTokenResourceOptions } from '../lib/options/resolved-options.js';

// The guard outside HTTP, with the codec and the store stubbed: what is under test here is
// where the guard reads the token, leaves the claims and sets the challenge, per context type.

const CLAIMS: TokenClaimsPayload = { jti: 'j-1', sub: 'alice', exp: 2_000_000_000 };
const GOOD = 'good-token';
/** Verifies, but the store has it revoked. */
const REVOKED = 'revoked-token';

const codec = {
  verify: async (token: string) => {
    if (token === REVOKED) return { ...CLAIMS, jti: 'j-revoked' };
    if (token !== GOOD) throw new InvalidTokenError('bad signature');
    return { ...CLAIMS };
  },
} as unknown as TokenCodec;
const tokenService = {
  checkClaims: async (claims: TokenClaimsPayload) => ({ revoked: claims.jti === 'j-revoked', presentForAuthentication: true }),
} as unknown as TokenService;
const options = {
  authenticationPurpose: 'user',
  storeTimeoutMs: 1000,
  requireTokenPresenceForAuthentication: false,
} as ResolvedTokenResourceOptions;

class Handlers {
  checked(@TokenClaims() _claims: unknown, @TokenClaims('sub') _sub: unknown) {}

  @SkipTokenCheck()
  skipped(@TokenClaims() _claims: unknown) {}
}

/** A transport context with headers, as NATS or Kafka give one (`TcpContext` has none). */
class FakeRpcContext {
  constructor(private readonly headers: Record<string, string>) {}
  getHeaders(): Record<string, string> {
    return this.headers;
  }
}

/** The documented way to take the token off an RPC or WebSocket call: override extractToken. */
@Injectable()
class MessageTokenGuard extends RevokedTokenGuard {
  protected override extractToken(request: Record<string, any>): string | undefined {
    const header: unknown = request?.getHeaders?.().authorization ?? request?.handshake?.headers?.authorization;
    return typeof header === 'string' ? /^Bearer (\S+)$/i.exec(header)?.[1] : undefined;
  }
}

function guard<T extends RevokedTokenGuard>(type: new (...args: ConstructorParameters<typeof RevokedTokenGuard>) => T): T {
  return new type(options, codec, tokenService, new Reflector());
}

/** A fresh context per call, as Nest makes one for the guard and another for the parameters. */
function contextOf(type: ContextType | 'graphql', args: unknown[], method: 'checked' | 'skipped' = 'checked'): ExecutionContext {
  const context = new ExecutionContextHost(args, Handlers, Handlers.prototype[method]);
  context.setType(type as ContextType);
  return context;
}

/** What `@TokenClaims(...)` at `index` of `method` yields in `context`. */
function param(method: 'checked' | 'skipped', index: number, context: ExecutionContext): unknown {
  const meta = Reflect.getMetadata(ROUTE_ARGS_METADATA, Handlers, method) as Record<
    string,
    { index: number; data: unknown; factory: (data: unknown, context: ExecutionContext) => unknown }
  >;
  const entry = Object.values(meta).find((candidate) => candidate.index === index)!;
  return entry.factory(entry.data, context);
}

async function rejection(work: Promise<unknown>): Promise<unknown> {
  return work.then(
    () => 'admitted',
    (error: unknown) => error,
  );
}

describe('RevokedTokenGuard and @TokenClaims() outside HTTP', () => {
  it('hands the claims of an RPC call and a WebSocket message to @TokenClaims() and getTokenClaims(context) of that call, writing nothing on the data, the transport context or the client', async () => {
    const data = { hello: 'world' };
    const rpc = new FakeRpcContext({ authorization: `Bearer ${GOOD}` });
    await expect(guard(MessageTokenGuard).canActivate(contextOf('rpc', [data, rpc]))).resolves.toBe(true);
    expect(param('checked', 0, contextOf('rpc', [data, rpc]))).toEqual(CLAIMS);
    expect(param('checked', 1, contextOf('rpc', [data, rpc]))).toBe('alice');
    expect(getTokenClaims(contextOf('rpc', [data, rpc]))).toEqual(CLAIMS);
    expect(data).toEqual({ hello: 'world' });
    expect(Object.keys(rpc)).toEqual(['headers']);

    const handshake = { headers: { authorization: `Bearer ${GOOD}` } };
    const client = { handshake };
    const message = { text: 'hi' };
    await expect(guard(MessageTokenGuard).canActivate(contextOf('ws', [client, message, 'chat']))).resolves.toBe(true);
    expect(param('checked', 1, contextOf('ws', [client, message, 'chat']))).toBe('alice');
    expect(getTokenClaims(contextOf('ws', [client, message, 'chat']))).toEqual(CLAIMS);
    expect(message).toEqual({ text: 'hi' });
    // The socket outlives the message: claims left on it would reach later messages.
    expect(client).toEqual({ handshake });
  });

  it('keeps the claims of an admitted WebSocket message from a later refused message and a skipped handler on the same client', async () => {
    const client = { handshake: { headers: { authorization: `Bearer ${GOOD}` } } };
    const first = { n: 1 };
    await expect(guard(MessageTokenGuard).canActivate(contextOf('ws', [client, first, 'chat']))).resolves.toBe(true);
    expect(param('checked', 0, contextOf('ws', [client, first, 'chat']))).toEqual(CLAIMS);

    client.handshake.headers.authorization = `Bearer ${REVOKED}`;
    const second = { n: 2 };
    const refused = await rejection(guard(MessageTokenGuard).canActivate(contextOf('ws', [client, second, 'chat'])));
    expect((refused as UnauthorizedException).message).toBe('token revoked');
    expect(param('checked', 0, contextOf('ws', [client, second, 'chat']))).toBeUndefined();
    expect(getTokenClaims(client)).toBeUndefined();

    const third = { n: 3 };
    await expect(guard(MessageTokenGuard).canActivate(contextOf('ws', [client, third, 'chat'], 'skipped'))).resolves.toBe(true);
    expect(param('skipped', 0, contextOf('ws', [client, third, 'chat'], 'skipped'))).toBeUndefined();
  });

  it('clears claims already on the request before the skip check, so a skipped or refused call has none', async () => {
    const stale = { jti: 'old', sub: 'mallory' };
    const skippedRequest = { headers: {}, tokenClaims: stale };
    await expect(guard(RevokedTokenGuard).canActivate(contextOf('http', [skippedRequest, {}], 'skipped'))).resolves.toBe(true);
    expect(param('skipped', 0, contextOf('http', [skippedRequest, {}], 'skipped'))).toBeUndefined();

    const refusedRequest = { headers: { authorization: 'Bearer forged' }, tokenClaims: stale };
    await rejection(guard(RevokedTokenGuard).canActivate(contextOf('http', [refusedRequest, {}])));
    expect(refusedRequest).not.toHaveProperty('tokenClaims');

    const admitted = { headers: { authorization: `Bearer ${GOOD}` }, tokenClaims: stale };
    await expect(guard(RevokedTokenGuard).canActivate(contextOf('http', [admitted, {}]))).resolves.toBe(true);
    expect(param('checked', 0, contextOf('http', [admitted, {}]))).toEqual(CLAIMS);
  });

  it('never yields claims a client wrote into RPC message data', async () => {
    const forged = { tokenClaims: { jti: 'x', sub: 'admin' } };
    const rpc = new FakeRpcContext({});
    await expect(guard(MessageTokenGuard).canActivate(contextOf('rpc', [forged, rpc], 'skipped'))).resolves.toBe(true);
    expect(param('skipped', 0, contextOf('rpc', [forged, rpc], 'skipped'))).toBeUndefined();
  });

  it('refuses with a plain 401 outside HTTP, touching no header method of the call arguments', async () => {
    const rpc = Object.assign(new FakeRpcContext({ authorization: 'Bearer forged' }), { setHeader: jest.fn(), header: jest.fn() });
    const error = await rejection(guard(MessageTokenGuard).canActivate(contextOf('rpc', [{}, rpc])));
    expect(error).toBeInstanceOf(UnauthorizedException);
    expect((error as UnauthorizedException).message).toBe('invalid token');
    expect(rpc.setHeader).not.toHaveBeenCalled();
    expect(rpc.header).not.toHaveBeenCalled();

    // The second WebSocket argument is the message itself: a string here, no response at all.
    const ws = await rejection(guard(MessageTokenGuard).canActivate(contextOf('ws', [{ handshake: { headers: {} } }, 'payload', 'chat'])));
    expect(ws).toBeInstanceOf(UnauthorizedException);
    expect((ws as UnauthorizedException).message).toBe('missing bearer token');
  });

  it('answers 401 in a context of its own kind when a subclass overrides getRequest, and sets the challenge where getResponse says', async () => {
    const res = { header: jest.fn() };
    const gqlContext = { req: { headers: { authorization: 'Bearer forged' } }, res };
    @Injectable()
    class GqlLikeGuard extends RevokedTokenGuard {
      protected override getRequest(context: ExecutionContext) {
        return context.getArgByIndex<typeof gqlContext>(2).req;
      }
    }
    const args = [undefined, {}, gqlContext, {}];
    const error = await rejection(guard(GqlLikeGuard).canActivate(contextOf('graphql', args)));
    expect((error as UnauthorizedException).message).toBe('invalid token');
    // Without getResponse overridden there is no response outside HTTP: nothing was set.
    expect(res.header).not.toHaveBeenCalled();

    @Injectable()
    class GqlLikeGuardWithResponse extends GqlLikeGuard {
      protected override getResponse(context: ExecutionContext) {
        return context.getArgByIndex<typeof gqlContext>(2).res;
      }
    }
    await rejection(guard(GqlLikeGuardWithResponse).canActivate(contextOf('graphql', args)));
    expect(res.header).toHaveBeenCalledWith('WWW-Authenticate', 'Bearer error="invalid_token", error_description="invalid token"');
  });

  it('over HTTP, sets the challenge with setHeader (Express) or header (Fastify), and skips a response with neither', async () => {
    const request = { headers: {} };
    const express = { setHeader: jest.fn(), header: jest.fn() };
    await rejection(guard(RevokedTokenGuard).canActivate(contextOf('http', [request, express])));
    expect(express.setHeader).toHaveBeenCalledWith('WWW-Authenticate', 'Bearer');
    expect(express.header).not.toHaveBeenCalled();
    const fastify = { header: jest.fn() };
    await rejection(guard(RevokedTokenGuard).canActivate(contextOf('http', [request, fastify])));
    expect(fastify.header).toHaveBeenCalledWith('WWW-Authenticate', 'Bearer');
    const error = await rejection(guard(RevokedTokenGuard).canActivate(contextOf('http', [request, {}])));
    expect(error).toBeInstanceOf(UnauthorizedException);
  });
});

describe('the WWW-Authenticate challenge', () => {
  it('is "Bearer" alone without parameters, and lists realm, error and error_description in that order', () => {
    expect(bearerChallenge()).toBe('Bearer');
    expect(bearerChallenge({ errorDescription: 'ignored without an error' })).toBe('Bearer');
    expect(bearerChallenge({ realm: 'api', error: 'invalid_token', errorDescription: 'token expired' })).toBe(
      'Bearer realm="api", error="invalid_token", error_description="token expired"',
    );
  });

  it('escapes the realm and keeps error and error_description to the characters RFC 6750 allows, so Node accepts the header', () => {
    const value = bearerChallenge({ realm: 'a "b" \\c\r\n', error: 'invalid_token', errorDescription: 'say "no" \\ now\né\u{1F600}' });
    expect(value).toBe('Bearer realm="a \\"b\\" \\\\c??", error="invalid_token", error_description="say \'no\' / now???"');
    expect(() => validateHeaderValue('WWW-Authenticate', value)).not.toThrow();
    const description = /error_description="([^"]*)"$/.exec(value)![1];
    expect(description).toMatch(/^[\x20\x21\x23-\x5b\x5d-\x7e]*$/);
  });

  it('carries a reason a subclass passes to throwUnauthorized(), sanitised, on a real 401', async () => {
    @Injectable()
    class StrictGuard extends RevokedTokenGuard {
      protected override throwUnauthorized(context: ExecutionContext, reason: string, error?: string): never {
        return super.throwUnauthorized(context, error ? `refused: "${reason}"\n` : reason, error);
      }
    }
    const response = { setHeader: jest.fn() };
    const error = await rejection(
      guard(StrictGuard).canActivate(contextOf('http', [{ headers: { authorization: 'Bearer nope' } }, response])),
    );
    expect((error as UnauthorizedException).getResponse()).toEqual({
      statusCode: 401,
      error: 'Unauthorized',
      message: 'refused: "invalid token"\n',
    });
    expect(response.setHeader).toHaveBeenCalledWith(
      'WWW-Authenticate',
      'Bearer error="invalid_token", error_description="refused: \'invalid token\'?"',
    );
  });

  it('throws every 401 through throwUnauthorized(), once each, so one override shapes the body and the challenge of all', async () => {
    const calls: Array<[string, string | undefined]> = [];
    @Injectable()
    class OwnBodyGuard extends RevokedTokenGuard {
      protected override throwUnauthorized(context: ExecutionContext, reason: string, error?: string): never {
        calls.push([reason, error]);
        this.setChallenge(context, error, error && 'sign in again');
        throw new UnauthorizedException({ code: 'SESSION_GONE', reason });
      }
    }
    const refusals = [];
    for (const authorization of [undefined, 'Bearer forged', `Bearer ${REVOKED}`]) {
      const response = new FakeResponse();
      const error = await rejection(guard(OwnBodyGuard).canActivate(contextOf('http', [{ headers: { authorization } }, response])));
      refusals.push({ body: (error as UnauthorizedException).getResponse(), challenge: response.set });
    }
    expect(calls).toEqual([
      ['missing bearer token', undefined],
      ['invalid token', 'invalid_token'],
      ['token revoked', 'invalid_token'],
    ]);
    expect(refusals).toEqual([
      { body: { code: 'SESSION_GONE', reason: 'missing bearer token' }, challenge: [['WWW-Authenticate', 'Bearer']] },
      {
        body: { code: 'SESSION_GONE', reason: 'invalid token' },
        challenge: [['WWW-Authenticate', 'Bearer error="invalid_token", error_description="sign in again"']],
      },
      {
        body: { code: 'SESSION_GONE', reason: 'token revoked' },
        challenge: [['WWW-Authenticate', 'Bearer error="invalid_token", error_description="sign in again"']],
      },
    ]);
  });

  it('never admits a refused call when an override of throwUnauthorized() returns instead of throwing', async () => {
    class LaxGuard extends RevokedTokenGuard {}
    // Only plain JavaScript (or a cast) can make a `never` method return.
    (LaxGuard.prototype as unknown as { throwUnauthorized: () => void }).throwUnauthorized = () => undefined;
    const outcomes = [];
    for (const authorization of [undefined, 'Bearer forged', `Bearer ${REVOKED}`]) {
      outcomes.push(
        await guard(LaxGuard)
          .canActivate(contextOf('http', [{ headers: { authorization } }, {}]))
          .catch(() => 'thrown'),
      );
    }
    expect(outcomes).not.toContain(true);
  });

  it("lets a subclass's verifyToken refuse a verified token through throwUnauthorized() with the context it is given", async () => {
    @Injectable()
    class FreshSessionGuard extends RevokedTokenGuard {
      protected override async verifyToken(context: ExecutionContext, token: string): Promise<TokenClaimsPayload> {
        const claims = await super.verifyToken(context, token);
        if (claims.sub === 'alice') this.throwUnauthorized(context, 'session too old', 'invalid_token');
        return claims;
      }
    }
    const response = new FakeResponse();
    const error = await rejection(
      guard(FreshSessionGuard).canActivate(contextOf('http', [{ headers: { authorization: `Bearer ${GOOD}` } }, response])),
    );
    expect((error as UnauthorizedException).getResponse()).toEqual({ statusCode: 401, error: 'Unauthorized', message: 'session too old' });
    expect(response.set).toEqual([['WWW-Authenticate', 'Bearer error="invalid_token", error_description="session too old"']]);
  });
});

describe('setChallenge()', () => {
  it('sets the challenge of every 401 (throwUnauthorized calls it), so that overriding it changes the header alone', async () => {
    @Injectable()
    class TaggedChallengeGuard extends RevokedTokenGuard {
      readonly calls: Array<[string | undefined, string | undefined]> = [];
      protected override setChallenge(context: ExecutionContext, error?: string, description?: string): void {
        this.calls.push([error, description]);
        super.setChallenge(context, error, description && `${description} (see /docs/auth)`);
      }
    }
    const tagged = guard(TaggedChallengeGuard);
    const challenges: unknown[] = [];
    const bodies: unknown[] = [];
    for (const authorization of [undefined, 'Bearer forged', `Bearer ${REVOKED}`]) {
      const response = new FakeResponse();
      const error = await rejection(tagged.canActivate(contextOf('http', [{ headers: { authorization } }, response])));
      challenges.push(response.getHeader('WWW-Authenticate'));
      bodies.push((error as UnauthorizedException).message);
    }
    expect(tagged.calls).toEqual([
      [undefined, undefined],
      ['invalid_token', 'invalid token'],
      ['invalid_token', 'token revoked'],
    ]);
    expect(challenges).toEqual([
      'Bearer',
      'Bearer error="invalid_token", error_description="invalid token (see /docs/auth)"',
      'Bearer error="invalid_token", error_description="token revoked (see /docs/auth)"',
    ]);
    // The bodies are unaffected.
    expect(bodies).toEqual(['missing bearer token', 'invalid token', 'token revoked']);
  });
});

/** An Express-like response that records the headers set on it. */
class FakeResponse {
  readonly set: Array<[string, string]> = [];
  private readonly headers = new Map<string, string>();

  setHeader(name: string, value: string): void {
    this.set.push([name, value]);
    this.headers.set(name.toLowerCase(), value);
  }

  getHeader(name: string): string | undefined {
    return this.headers.get(name.toLowerCase());
  }
}
