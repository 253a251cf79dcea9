import type { INestApplication } from '@nestjs/common';
import fc from 'fast-check';
import { REVOCATION_PURPOSE, TokenAlreadyRevokedError, TokenService, type Token } from '../lib/index.js';
import { TOKEN_REPOSITORY } from '../lib/token-resource.internal-constants.js';
import type { Repository } from 'typeorm';
import { signToken } from './support/jwt-fixtures.js';
import { createTestDatabase, type TestDatabase } from './support/test-database.js';
import { createTokenApp } from './support/token-app.js';

/**
 * Model-based: any sequence of store / revoke / revokeJti / confirmation writes on a few
 * tokens agrees with a tiny in-memory model. Once revoked, a token stays revoked;
 * revoking again always rejects; a store never resurrects it.
 */

let db: TestDatabase;
let app: INestApplication;
let tokens: TokenService;
let repo: Repository<Token>;

beforeAll(async () => {
  db = await createTestDatabase();
  app = await createTokenApp(db.url, { options: { expunge: { enabled: false } } });
  tokens = app.get(TokenService);
  repo = app.get(TOKEN_REPOSITORY);
});

afterAll(async () => {
  await app?.close();
  await db?.drop();
});

type Op =
  | { kind: 'store'; slot: number; purpose: string }
  | { kind: 'confirm'; slot: number }
  | { kind: 'revoke'; slot: number }
  | { kind: 'revokeJti'; slot: number };

const SLOTS = 3;
const op: fc.Arbitrary<Op> = fc.oneof(
  fc.record({ kind: fc.constant('store' as const), slot: fc.nat(SLOTS - 1), purpose: fc.constantFrom('user', 'refresh', 'confirm') }),
  fc.record({ kind: fc.constant('confirm' as const), slot: fc.nat(SLOTS - 1) }),
  fc.record({ kind: fc.constant('revoke' as const), slot: fc.nat(SLOTS - 1) }),
  fc.record({ kind: fc.constant('revokeJti' as const), slot: fc.nat(SLOTS - 1) }),
);

let run = 0;

it('agrees with the model for any sequence of writes', async () => {
  await fc.assert(
    fc.asyncProperty(fc.array(op, { minLength: 1, maxLength: 12 }), async (ops) => {
      run += 1;
      const slots = await Promise.all(
        Array.from({ length: SLOTS }, async (_, i) => {
          const jti = `prop-${run}-${i}`;
          return { jti, sub: `sub-${i}`, token: await signToken({ jti, sub: `sub-${i}` }) };
        }),
      );
      const revoked = new Set<number>();
      const purpose = new Map<number, string>();
      for (const step of ops) {
        const { jti, sub, token } = slots[step.slot];
        const wasRevoked = revoked.has(step.slot);
        let call: Promise<void>;
        if (step.kind === 'store') call = tokens.storeToken({ token, purpose: step.purpose });
        else if (step.kind === 'confirm') call = tokens.storeConfirmationChanges({ token, changes: { n: 1 } });
        else if (step.kind === 'revoke') call = tokens.revoke(token);
        else call = tokens.revokeJti(jti, sub);
        if (wasRevoked) {
          await expect(call).rejects.toBeInstanceOf(TokenAlreadyRevokedError);
        } else {
          await call;
          if (step.kind === 'revoke' || step.kind === 'revokeJti') revoked.add(step.slot);
          else purpose.set(step.slot, step.kind === 'confirm' ? 'confirm' : step.purpose);
        }
      }
      for (const [i, { jti, token }] of slots.entries()) {
        expect(await tokens.tokenRevoked(token)).toBe(revoked.has(i));
        expect(await tokens.jtiRevoked(jti)).toBe(revoked.has(i));
        const rows = await repo.findBy({ jti });
        const expected = revoked.has(i) ? REVOCATION_PURPOSE : purpose.get(i);
        expect(rows.map((row) => row.purpose)).toEqual(expected === undefined ? [] : [expected]);
      }
    }),
    { numRuns: 40 },
  );
});
