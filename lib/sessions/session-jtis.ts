import { createHmac, timingSafeEqual } from 'node:crypto';
import { SESSION_JTI_PREFIX } from '../token-resource.internal-constants.js';

/** A session id as `SessionService` makes them: a random UUID (lower case). */
const SID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

/** `<sid>.<kind><generation>.<mac>`: the `jti` of a token a session issued. */
const SESSION_TOKEN_JTI = /^([0-9a-f-]{36})\.([ar])(\d{1,9})\.([A-Za-z0-9_-]{22})$/;

/** Which of a session's tokens a `jti` names: its access (`a`) or refresh (`r`) token. */
export type SessionTokenKind = 'a' | 'r';

/** What a session token's `jti` says. */
export interface SessionTokenJti {
  sid: string;
  kind: SessionTokenKind;
  /** How many rotations the session had gone through when the token was issued. */
  generation: number;
}

/** Whether `value` is a session id `SessionService` could have made. */
export function isSessionId(value: unknown): value is string {
  return typeof value === 'string' && SID.test(value);
}

/** The `jti` of the row of session `sid`. */
export function sessionRowJti(sid: string): string {
  return SESSION_JTI_PREFIX + sid;
}

/**
 * The session a token's `jti` belongs to, read from the `jti` alone (no lookup): every
 * `jti` a session issues starts with its `sid` and a dot. `undefined` for any other `jti`.
 * This is how `logOutEverywhere({ exceptJti })` finds the session to keep.
 */
export function sessionOfJti(jti: string): string | undefined {
  const sid = jti.slice(0, 36);
  return jti.charAt(36) === '.' && isSessionId(sid) ? sid : undefined;
}

/**
 * Makes and checks the `jti`s of session tokens. The `jti` of generation `g` is a MAC of
 * `sid`, kind and `g` under a key derived from the signing key, so the successor of a
 * rotation can be made again, identical, from the session row alone (no token is ever
 * stored), and nobody without the key can name one in advance.
 */
export class SessionJtis {
  constructor(private readonly key: Buffer) {}

  /** The `jti` of the `kind` token of `sid` at `generation`. */
  make(sid: string, kind: SessionTokenKind, generation: number): string {
    const body = `${sid}.${kind}${generation}`;
    return `${body}.${this.mac(body)}`;
  }

  /** What `jti` says, if it is a session token `jti` this key made; `undefined` otherwise. */
  read(jti: unknown): SessionTokenJti | undefined {
    if (typeof jti !== 'string') return undefined;
    const match = SESSION_TOKEN_JTI.exec(jti);
    if (!match || !isSessionId(match[1])) return undefined;
    const body = jti.slice(0, jti.lastIndexOf('.'));
    const expected = Buffer.from(this.mac(body));
    if (!timingSafeEqual(expected, Buffer.from(match[4]))) return undefined;
    return { sid: match[1], kind: match[2] as SessionTokenKind, generation: Number(match[3]) };
  }

  /** 132 bits of HMAC-SHA256, base64url. */
  private mac(body: string): string {
    return createHmac('sha256', this.key).update(body).digest('base64url').slice(0, 22);
  }
}
