import { describe, expect, it } from '@jest/globals';
import { DEV_JWT_SECRET, SampleEnvError, validateEnv } from '../sample-app/config/env.js';

describe('sample app settings', () => {
  it('falls back to a marked development secret outside production', () => {
    for (const NODE_ENV of [undefined, 'development', 'test']) {
      const env = validateEnv({ NODE_ENV });
      expect(env.JWT_SECRET).toBe(DEV_JWT_SECRET);
      expect(env.JWT_SECRET_IS_DEV_DEFAULT).toBe(true);
    }
    expect(validateEnv({}).PORT).toBe(3000);
  });

  it('refuses production without JWT_SECRET, and accepts it with one', () => {
    expect(() => validateEnv({ NODE_ENV: 'production' })).toThrow(SampleEnvError);
    expect(() => validateEnv({ NODE_ENV: 'production', JWT_SECRET: '   ' })).toThrow(/JWT_SECRET is required/);
    const secret = 'x'.repeat(48);
    expect(validateEnv({ NODE_ENV: 'production', JWT_SECRET: secret })).toMatchObject({
      JWT_SECRET: secret,
      JWT_SECRET_IS_DEV_DEFAULT: false,
    });
  });

  it('says what is wrong with a bad value', () => {
    expect(() => validateEnv({ JWT_SECRET: 'short' })).toThrow(/at least 32 characters/);
    expect(() => validateEnv({ PORT: 'http' })).toThrow(/PORT must be an integer/);
    expect(() => validateEnv({ PORT: '70000' })).toThrow(/PORT must be an integer/);
    expect(() => validateEnv({ TOKEN_TTL: 'forever' })).toThrow(/TOKEN_TTL must be seconds or a duration/);
    expect(validateEnv({ TOKEN_TTL: '15m', CONFIRM_TOKEN_TTL: '600' })).toMatchObject({ TOKEN_TTL: '15m', CONFIRM_TOKEN_TTL: '600' });
    expect(() => validateEnv({ EXPUNGE_INTERVAL_HOURS: '0' })).toThrow(/EXPUNGE_INTERVAL_HOURS must be a positive number/);
  });
});
