import { randomUUID } from 'node:crypto';
import { SignJWT, type JWTPayload } from 'jose';
import type { DataSource } from 'typeorm';
import { TEST_SECRET } from './token-app.js';

/** A subject no other test uses. */
export function uniqueSubject(): string {
  return `subject-${randomUUID()}`;
}

/** Seconds since the epoch, as JWT NumericDates count them. */
export function nowSeconds(): number {
  return Math.floor(Date.now() / 1000);
}

/** Options of {@link signToken}. */
export interface SignOptions {
  secret?: string;
  alg?: string;
  /** `exp` relative to now, in seconds (negative for an expired token). Default 3600. */
  expiresInSeconds?: number;
  /** Leave out these registered claims. */
  omit?: Array<'jti' | 'sub' | 'exp'>;
}

/**
 * Signs a token the way another service would, outside the library: `jti`, `sub`, `iat`,
 * `exp` set unless omitted, with the test secret unless another is given.
 */
export async function signToken(claims: JWTPayload = {}, options: SignOptions = {}): Promise<string> {
  const payload: JWTPayload = {
    jti: randomUUID(),
    sub: `user-${randomUUID()}`,
    iat: nowSeconds(),
    exp: nowSeconds() + (options.expiresInSeconds ?? 3600),
    ...claims,
  };
  for (const claim of options.omit ?? []) delete payload[claim];
  return new SignJWT(payload)
    .setProtectedHeader({ alg: options.alg ?? 'HS256', typ: 'JWT' })
    .sign(new TextEncoder().encode(options.secret ?? TEST_SECRET));
}

function base64url(value: unknown): string {
  return Buffer.from(JSON.stringify(value)).toString('base64url');
}

/** An unsigned token (`alg: none`) with plausible claims. */
export function unsignedToken(claims: JWTPayload = {}): string {
  const payload = { jti: randomUUID(), sub: 'victim', iat: nowSeconds(), exp: nowSeconds() + 3600, ...claims };
  return `${base64url({ alg: 'none', typ: 'JWT' })}.${base64url(payload)}.`;
}

/** The same unsigned token with `alg` spelt in other cases, which naive checks miss. */
export function unsignedTokenVariants(claims: JWTPayload = {}): string[] {
  const payload = { jti: randomUUID(), sub: 'victim', iat: nowSeconds(), exp: nowSeconds() + 3600, ...claims };
  return ['none', 'None', 'NONE'].map((alg) => `${base64url({ alg, typ: 'JWT' })}.${base64url(payload)}.`);
}

/** A validly signed token whose payload was then edited (signature no longer matches). */
export async function tamperedToken(): Promise<string> {
  const token = await signToken({ sub: 'alice' });
  const [header, payload, signature] = token.split('.');
  const claims = JSON.parse(Buffer.from(payload, 'base64url').toString());
  claims.sub = 'admin';
  return `${header}.${base64url(claims)}.${signature}`;
}

/** Strings that are not JWTs at all. */
export const MALFORMED_TOKENS = ['', 'garbage', 'a.b.c', 'eyJhbGciOiJIUzI1NiJ9.e30', 'eyJhbGciOiJIUzI1NiJ9..', '....'];

/** How many rows the token table (or another) holds. */
export async function countRows(dataSource: DataSource, table = 'tokens'): Promise<number> {
  const [{ count }] = await dataSource.query(`SELECT count(*)::int AS count FROM "${table}"`);
  return count;
}

/** Waits `ms` milliseconds. */
export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
