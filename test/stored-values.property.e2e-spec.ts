import { randomUUID } from 'node:crypto';
import { afterAll, beforeAll, expect, it } from '@jest/globals';
import type { INestApplication } from '@nestjs/common';
import fc from 'fast-check';
import { SignJWT, type JWTPayload } from 'jose';
import type { DataSource } from 'typeorm';
import { InvalidTokenError, LogOutEverywhereService, TokenService } from '../lib/index.js';
import { TOKEN_GUARD_MESSAGES } from '../lib/guard/token-guard.constants.js';
import { createGuardApp } from './support/guard-app.js';
import { GuardedSubjectController } from './support/guarded-controller.js';
import { guardAnswer } from './support/guard-answer.js';
import { countRows, nowSeconds } from './support/jwt-fixtures.js';
import { createTestDatabase, type TestDatabase } from './support/test-database.js';
import { dataSourceOf, TEST_SECRET } from './support/token-app.js';

/**
 * The revocation invariant over generated claims: once `revoke`, `revokeJti` or
 * `logOutEverywhere` resolves, the affected tokens are refused (`tokenRevoked`, guard 401);
 * otherwise the call rejects with `InvalidTokenError` or `TypeError`, writes nothing, and
 * the guard does not admit a token it could not have revoked. Strings with lone surrogates,
 * NUL and any length, expiries of any size and fraction, issue times ahead of the clock.
 */

let db: TestDatabase;
let app: INestApplication;
let dataSource: DataSource;
let tokens: TokenService;
let logOut: LogOutEverywhereService;

beforeAll(async () => {
  db = await createTestDatabase();
  app = await createGuardApp(db.url, { platform: 'express', controllers: [GuardedSubjectController] });
  tokens = app.get(TokenService);
  logOut = app.get(LogOutEverywhereService);
  dataSource = dataSourceOf(app);
});

afterAll(async () => {
  await app?.close();
  await db?.drop();
});

function sign(payload: JWTPayload): Promise<string> {
  return new SignJWT(payload).setProtectedHeader({ alg: 'HS256' }).sign(new TextEncoder().encode(TEST_SECRET));
}

/** What a call did: resolved, or the error it rejected with. */
async function settle(call: Promise<unknown>): Promise<{ ok: true } | { ok: false; error: unknown }> {
  return call.then(
    () => ({ ok: true as const }),
    (error: unknown) => ({ ok: false as const, error }),
  );
}

/** A rejection that is the caller's fault, said by the library: never a raw database error. */
function expectClientError(error: unknown): void {
  expect(error instanceof InvalidTokenError || error?.constructor === TypeError).toBe(true);
}

const awkwardChars = fc.constantFrom('a', 'Z', '-', ':', 'é', '€', '😀', '\0', '\ud800', '\udbff', '\udc00', '\udfff', '\uFFFD');
const keyString = fc.oneof(
  fc.uuid(),
  fc.string({ maxLength: 24 }),
  fc.string({ unit: 'binary', maxLength: 24 }),
  fc.string({ unit: awkwardChars, maxLength: 24 }),
  // Around the limits: 255 bytes for a jti, 1024 for a subject, and far beyond.
  fc.tuple(fc.constantFrom('a', 'é', '€', '😀'), fc.integer({ min: 60, max: 1100 })).map(([char, n]) => char.repeat(n)),
);
const exp = fc.oneof(
  fc.integer({ min: 60, max: 10 ** 7 }).map((s) => nowSeconds() + s),
  fc.double({ min: 60, max: 10 ** 7, noNaN: true }).map((s) => nowSeconds() + s),
  fc.double({ min: 1e10, max: 1e300, noNaN: true, noDefaultInfinity: true }),
  fc.integer({ min: 1, max: 10 ** 6 }).map((s) => nowSeconds() - s),
);
const iat = fc.oneof(
  fc.constant(undefined),
  fc.integer({ min: -(10 ** 6), max: -1 }).map((s) => nowSeconds() + s),
  fc.double({ min: 60, max: 1e12, noNaN: true }).map((s) => nowSeconds() + s),
);

let run = 0;

it('revoke, revokeJti and logOutEverywhere: revoked once resolved, otherwise a library error and nothing written', async () => {
  await fc.assert(
    fc.asyncProperty(keyString, keyString, exp, iat, async (rawJti, rawSub, expiry, issuedAt) => {
      run += 1;
      // Unique per run, with the generated content kept inside.
      const jti = `${run}.${rawJti}`;
      const sub = `${run}.${rawSub}`;
      const token = await sign({ jti, sub, exp: expiry, ...(issuedAt === undefined ? {} : { iat: issuedAt }) });
      const unexpired = expiry > Date.now() / 1000 + 5;

      let before = await countRows(dataSource);
      const revoked = await settle(tokens.revoke(token));
      if (revoked.ok) {
        expect(await tokens.tokenRevoked(token)).toBe(true);
        if (unexpired) expect(await guardAnswer(app, token)).toEqual({ status: 401, message: TOKEN_GUARD_MESSAGES.revoked });
      } else {
        expectClientError(revoked.error);
        expect(await countRows(dataSource)).toBe(before);
        expect((await guardAnswer(app, token)).status).toBe(401);
      }

      const bareJti = `bare.${jti}`;
      before = await countRows(dataSource);
      const bare = await settle(tokens.revokeJti(bareJti, sub));
      if (bare.ok) {
        expect(await tokens.jtiRevoked(bareJti)).toBe(true);
        const bareToken = await sign({ jti: bareJti, sub, iat: nowSeconds(), exp: nowSeconds() + 3600 });
        expect(await guardAnswer(app, bareToken)).toEqual({ status: 401, message: TOKEN_GUARD_MESSAGES.revoked });
      } else {
        expectClientError(bare.error);
        expect(await countRows(dataSource)).toBe(before);
      }

      const session = await sign({ jti: randomUUID(), sub, iat: nowSeconds() - 1, exp: nowSeconds() + 3600 });
      before = await countRows(dataSource);
      const loggedOut = await settle(logOut.logOutEverywhere(sub));
      if (loggedOut.ok) {
        expect(await tokens.tokenRevoked(session)).toBe(true);
        expect(await guardAnswer(app, session)).toEqual({ status: 401, message: TOKEN_GUARD_MESSAGES.revoked });
      } else {
        expectClientError(loggedOut.error);
        expect(await countRows(dataSource)).toBe(before);
        // A subject that cannot be logged out has no token the guard admits.
        expect((await guardAnswer(app, session)).status).toBe(401);
      }
    }),
    { numRuns: 60 },
  );
});
