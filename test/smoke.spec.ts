import { createTestDatabase } from './support/test-database.js';
import { createTokenApp, dataSourceOf } from './support/token-app.js';
import { TokenService } from '../lib/index.js';

test('boots', async () => {
  const db = await createTestDatabase();
  const app = await createTokenApp(db.url);
  const tokens = app.get(TokenService);
  const { token } = await tokens.issueToken({ subject: 'u1' });
  expect(await tokens.tokenRevoked(token)).toBe(false);
  await tokens.revoke(token);
  expect(await tokens.tokenRevoked(token)).toBe(true);
  expect(dataSourceOf(app).isInitialized).toBe(true);
  await app.close();
  await db.drop();
});
