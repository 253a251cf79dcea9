import { randomBytes } from 'node:crypto';
import { performance } from 'node:perf_hooks';
import { Inject, Injectable, Logger, type OnApplicationBootstrap, type OnModuleDestroy, type OnModuleInit } from '@nestjs/common';
import type { Client as PgClient, Notification } from 'pg';
import type { DataSource, EntityManager } from 'typeorm';
import type { LogOutMarker } from '../log-out-everywhere/log-out-marker.js';
import type { ResolvedTokenResourceOptions } from '../options/resolved-options.js';
import { TOKEN_DATA_SOURCE, TOKEN_RESOURCE_OPTIONS } from '../token-resource.internal-constants.js';
import { TokenStore } from '../token.store.js';
import { registerSubscriber } from '../typeorm/register-subscriber.js';
import { parseAnnouncement, type Announcement } from './announcement.js';
import { PostCommitForgets } from './post-commit-forgets.js';

/** The first and the longest wait before the listener connects again after losing its connection. */
const RECONNECT_DELAYS_MS = { first: 250, max: 30_000 };

/** How the listener's session shows in `pg_stat_activity.application_name`. */
export const LISTENER_APPLICATION_NAME = 'nestjs-token-resource revocation listener';

/** How long the listener may take to connect before it gives up and tries again later. */
const CONNECT_TIMEOUT_MS = 10_000;

/** What the cache keeps of a token's own row: the columns that decide a check. */
export interface CachedOwnRow {
  purpose: string;
  /** Its `expires_at` in milliseconds since the epoch: whether it is live is judged when the answer is used. */
  expiresMs: number;
}

/**
 * The cached tokens of one subject, so that its log-out drops their answers at once: it
 * marks the record dropped, and every answer that points to it stops counting. An answer
 * points to its record rather than the record listing its answers, which would cost a Set
 * entry per token.
 */
class SubjectTokens {
  /** How many answers point to this record; `-1` once a log-out dropped it. */
  count = 0;

  constructor(readonly subject: string) {}
}

/** `performance.now()` in whole milliseconds, rounded down (an answer looks older, never younger): V8 keeps it unboxed. */
const nowMs = (): number => Math.floor(performance.now());

/** What the cache knows of one token; numeric fields stay small integers, which V8 stores unboxed in the object. */
class TokenEntry {
  constructor(
    /**
     * The subject whose log-out drops this answer: the row's own subject (a log-out revokes
     * the rows of its subject), or the `sub` it was checked for when it had no row; `null`
     * when it had no row and was read without a subject (`jtiRevoked`).
     */
    readonly subject: SubjectTokens | null,
    /** The own row's purpose, or `null`: it had none. */
    readonly purpose: string | null,
    /** The own row's `expires_at` in whole seconds since the epoch, rounded down (it looks expired sooner, never later). */
    readonly expiresS: number,
    /** {@link nowMs} when the database said so. */
    readonly filledAt: number,
  ) {}

  /** Whether a log-out dropped it. */
  get dropped(): boolean {
    return this.subject !== null && this.subject.count < 0;
  }
}

interface SubjectEntry {
  /** The subject's log-out marker, or `null`: it had none. */
  marker: LogOutMarker | null;
  /** {@link nowMs} when the database said so. */
  filledAt: number;
}

/**
 * Remembers what the revoked-check read: each token's own row (revoked or not, its stored
 * purpose and expiry) and each subject's log-out-everywhere marker, so that a token seen
 * before is checked without a round trip. Off unless `revocationCache.enabled`.
 *
 * It listens for the writes announced on {@link TokenStore.revocationChannel} and answers
 * only while its own heartbeats, sent on the same connection, come back within
 * `maxStalenessMs`; a check that misses stores its answer only if nothing was invalidated
 * meanwhile (the epoch). docs/internals.md ("The revocation cache") proves both bounds.
 */
@Injectable()
export class RevocationCache implements OnModuleInit, OnApplicationBootstrap, OnModuleDestroy {
  private readonly logger = new Logger(RevocationCache.name);
  /**
   * Tokens' rows and subjects' markers, each oldest answer first; together at most
   * `maxEntries`. A hit does not move an entry, which would cost a delete and an insert on
   * every request; an entry in use is read again once it ages out, which moves it to the end.
   */
  private readonly tokens = new Map<string, TokenEntry>();
  private readonly subjects = new Map<string, SubjectEntry>();
  /** The cached tokens of each subject, so that a log-out drops their answers too. */
  private readonly tokensOf = new Map<string, SubjectTokens>();
  private readonly settings: ResolvedTokenResourceOptions['revocationCache'];
  private readonly postCommit = new PostCommitForgets((announcement) => this.apply(announcement));
  private unregister?: () => void;
  /** A channel no other instance uses, so that each instance hears only its own heartbeats. */
  private readonly heartbeatChannel = `ntr_heartbeat_${randomBytes(8).toString('hex')}`;
  private epoch = 0;
  /** `performance.now()` at which the newest heartbeat that came back was sent. */
  private confirmedAt = -Infinity;
  /** When the current listener started listening; older heartbeats vouch for nothing it missed. */
  private listeningSince = Infinity;
  private listener?: PgClient;
  /** A client still connecting, so that shutdown can end it too. */
  private connecting?: PgClient;
  /** Whether a heartbeat is on its way; the next one waits for it rather than piling up. */
  private beating = false;
  private heartbeatTimer?: NodeJS.Timeout;
  private reconnectTimer?: NodeJS.Timeout;
  private reconnectDelayMs = RECONNECT_DELAYS_MS.first;
  private stopped = false;
  /**
   * `performance.now()` when the cache last stopped hearing announcements (its listener
   * lost or refused), until a heartbeat comes back: an outage is logged once when it starts
   * and once when it ends, not at every attempt to listen again.
   */
  private deafSince?: number;

  constructor(
    @Inject(TOKEN_RESOURCE_OPTIONS) options: ResolvedTokenResourceOptions,
    private readonly store: TokenStore,
    @Inject(TOKEN_DATA_SOURCE) private readonly dataSource: DataSource,
  ) {
    this.settings = options.revocationCache;
  }

  /** Whether the cache may answer now: enabled, listening, and a heartbeat came back within `maxStalenessMs`. */
  get fresh(): boolean {
    return performance.now() - this.confirmedAt <= this.settings.maxStalenessMs;
  }

  /**
   * How many answers it holds, tokens' and subjects' together: never more than `maxEntries`.
   * Answers a log-out dropped count until they are looked up or evicted.
   */
  get size(): number {
    return this.tokens.size + this.subjects.size;
  }

  /**
   * The own row of token `jti` as the cache knows it: the row, `null` when it has none, or
   * `undefined` when the cache does not know or cannot vouch for its answer now.
   *
   * @internal used by `TokenService.checkClaims`.
   */
  lookupToken(jti: string): CachedOwnRow | null | undefined {
    if (!this.answering()) return undefined;
    const entry = this.tokens.get(jti);
    if (entry === undefined) return undefined;
    if (entry.dropped || this.aged(entry)) {
      this.dropToken(jti, entry);
      return undefined;
    }
    return entry.purpose === null ? null : { purpose: entry.purpose, expiresMs: entry.expiresS * 1000 };
  }

  /**
   * The marker of `subject` as the cache knows it: the marker, `null` when the subject has
   * none, or `undefined` when the cache does not know or cannot vouch for its answer now
   * (read the database then, and offer the answer to {@link rememberMarker}). An answer used
   * after an `await` must be re-checked with {@link confirms}.
   *
   * @internal used by `TokenService.checkClaims`.
   */
  lookupMarker(subject: string): LogOutMarker | null | undefined {
    if (!this.answering()) return undefined;
    const entry = this.subjects.get(subject);
    if (entry === undefined) return undefined;
    if (this.aged(entry)) {
      this.subjects.delete(subject);
      return undefined;
    }
    return entry.marker;
  }

  /**
   * Whether `marker`, returned by {@link lookupMarker} before the caller waited (for a pooled
   * connection, say), is still what the cache would answer: nothing about the subject was
   * announced meanwhile and the cache is still fresh. If not, the wait may have outlasted
   * the bound, and the caller must read the marker from the database.
   *
   * @internal used by `TokenService.checkClaims`.
   */
  confirms(subject: string, marker: LogOutMarker | null): boolean {
    return this.fresh && this.subjects.get(subject)?.marker === marker;
  }

  /**
   * A ticket to pass to the `remember` methods, taken before reading from the database.
   *
   * @internal used by `TokenService.checkClaims`.
   */
  ticket(): number {
    return this.epoch;
  }

  /**
   * Stores what the database said about token `jti`, indexed under `subject` (see
   * `TokenEntry.subject`; `undefined` only when it has no row), unless anything was
   * invalidated since `ticket` was taken (the answer may predate a write then).
   *
   * @internal used by `TokenService.checkClaims` and `TokenService.jtiRevoked`.
   */
  rememberToken(jti: string, subject: string | undefined, own: CachedOwnRow | null, ticket: number): void {
    if (ticket !== this.epoch || !this.fresh) return;
    const old = this.tokens.get(jti);
    if (old) this.dropToken(jti, old);
    let tokensOf: SubjectTokens | null = null;
    if (subject !== undefined) {
      tokensOf = this.tokensOf.get(subject) ?? null;
      if (tokensOf === null) this.tokensOf.set(subject, (tokensOf = new SubjectTokens(subject)));
      tokensOf.count++;
    }
    this.tokens.set(jti, new TokenEntry(tokensOf, own?.purpose ?? null, own ? Math.floor(own.expiresMs / 1000) : 0, nowMs()));
    this.evictOverflow();
  }

  /**
   * Stores what the database said about `subject`'s marker, unless anything was
   * invalidated since `ticket` was taken.
   *
   * @internal used by `TokenService.checkClaims`.
   */
  rememberMarker(subject: string, marker: LogOutMarker | null, ticket: number): void {
    if (ticket !== this.epoch || !this.fresh) return;
    this.subjects.delete(subject);
    this.subjects.set(subject, { marker, filledAt: nowMs() });
    this.evictOverflow();
  }

  /**
   * Applies a write this instance made: at once, and, when `manager` is inside a
   * transaction, again right after TypeORM commits it (a check in between may have cached
   * the state before the write). Other instances apply its announcement.
   *
   * @internal used by the services that write.
   */
  written(announcement: Announcement, manager?: EntityManager): void {
    this.apply(announcement);
    const runner = manager?.queryRunner;
    if (this.settings.enabled && runner && !runner.isReleased && runner.isTransactionActive) this.postCommit.add(runner, announcement);
  }

  /** Drops every answer about the announced token, or about the announced subject and all its tokens. */
  private apply({ kind, key }: Announcement): void {
    this.epoch++;
    if (kind === 'jti') {
      const entry = this.tokens.get(key);
      if (entry) this.dropToken(key, entry);
      return;
    }
    this.subjects.delete(key);
    const tokensOf = this.tokensOf.get(key);
    if (!tokensOf) return;
    this.tokensOf.delete(key);
    // Its tokens' answers stop counting now; each leaves the map when next looked up or evicted.
    tokensOf.count = -1;
  }

  /** Drops everything. */
  private forgetAll(): void {
    this.epoch++;
    this.tokens.clear();
    this.subjects.clear();
    this.tokensOf.clear();
  }

  /** Whether answers may be given now; a cache that cannot vouch for them empties itself. */
  private answering(): boolean {
    if (this.fresh) return true;
    if (this.tokens.size + this.subjects.size > 0) this.forgetAll();
    return false;
  }

  /** Writes that bypass this library are never announced; an age limit bounds them too. */
  private aged(entry: { filledAt: number }): boolean {
    return performance.now() - entry.filledAt > this.settings.maxEntryAgeMs;
  }

  private dropToken(jti: string, entry: TokenEntry): void {
    this.tokens.delete(jti);
    const tokensOf = entry.subject;
    if (tokensOf === null || tokensOf.count < 0 || --tokensOf.count > 0) return;
    this.tokensOf.delete(tokensOf.subject);
  }

  /** Drops the oldest answers, of either kind, until at most `maxEntries` remain. */
  private evictOverflow(): void {
    while (this.tokens.size + this.subjects.size > this.settings.maxEntries) {
      const token = this.tokens.entries().next().value;
      const subject = this.subjects.entries().next().value;
      if (token && (!subject || token[1].filledAt <= subject[1].filledAt)) this.dropToken(token[0], token[1]);
      else if (subject) this.subjects.delete(subject[0]);
    }
  }

  /** Follows the commits of the token table's data source, for {@link written}. */
  onModuleInit(): void {
    if (this.settings.enabled) this.unregister = registerSubscriber(this.dataSource, this.postCommit);
  }

  onApplicationBootstrap(): void {
    if (!this.settings.enabled) return;
    this.heartbeatTimer = setInterval(() => this.beat(), this.settings.maxStalenessMs / 4).unref();
    void this.listen();
  }

  async onModuleDestroy(): Promise<void> {
    this.stopped = true;
    this.unregister?.();
    this.unregister = undefined;
    clearInterval(this.heartbeatTimer);
    clearTimeout(this.reconnectTimer);
    const clients = [this.listener, this.connecting];
    this.lose(this.listener);
    await Promise.all(
      clients.map((client) => (client ? client.end().catch(() => undefined) : undefined)).filter((ending) => ending !== undefined),
    );
  }

  private async listen(): Promise<void> {
    let client: PgClient;
    try {
      client = this.store.createSessionClient({ role: LISTENER_APPLICATION_NAME, connectionTimeoutMillis: CONNECT_TIMEOUT_MS });
    } catch {
      this.reconnectLater();
      return;
    }
    client.on('notification', (message) => this.receive(client, message));
    client.on('error', (error) => this.lose(client, error));
    client.on('end', () => this.lose(client, new Error('connection ended')));
    this.connecting = client;
    let pooled: boolean;
    try {
      await client.connect();
      const {
        rows: [session],
      } = await client.query<{ pid: number }>('SELECT pg_backend_pid() AS pid');
      // Checked before LISTEN, which would stay behind on a pooler's server connection.
      pooled = this.throughPooler(client, session.pid);
      if (!pooled) await client.query(`LISTEN "${this.store.revocationChannel}"; LISTEN "${this.heartbeatChannel}"`);
    } catch (error) {
      if (!this.stopped && this.deafSince === undefined) {
        this.deafSince = performance.now();
        this.logger.warn(`cannot listen for revocations (${(error as Error).message}); checking the database meanwhile`);
      }
      await client.end().catch(() => undefined);
      this.reconnectLater();
      return;
    } finally {
      this.connecting = undefined;
    }
    if (this.stopped || pooled) {
      await client.end().catch(() => undefined);
      return;
    }
    // Answers read before LISTEN took effect may miss writes this listener never hears of.
    this.forgetAll();
    this.listener = client;
    this.listeningSince = performance.now();
    this.reconnectDelayMs = RECONNECT_DELAYS_MS.first;
    this.beat();
  }

  /**
   * Whether `client` may reach PostgreSQL through a pooler: the process id the connection
   * announced (a pooler announces its own key) is not the server process's. Behind a
   * transaction pooler, LISTEN stays on one server connection while later statements,
   * heartbeats too, run on it or on others, so heartbeats can come back while revocations go
   * unheard: the cache must stay off. It stops trying then (a pooler stays) and warns once.
   * The `pg-native` client announces no id and is refused too.
   */
  private throughPooler(client: PgClient, serverPid: number): boolean {
    const announcedPid = (client as unknown as { processID?: number | null }).processID;
    if (announcedPid === serverPid) return false;
    this.logger.warn(
      'the revocation cache is off: its connection may go through a pooler (PgBouncer or alike; the ' +
        `process id it announced, ${String(announcedPid)}, is not the server's, ${serverPid}), where LISTEN cannot hear ` +
        'revocations, so every check reads the database. Connect the data source to PostgreSQL directly ' +
        'to use the cache, or drop revocationCache.enabled to silence this.',
    );
    return true;
  }

  private receive(client: PgClient, { channel, payload }: Notification): void {
    if (client !== this.listener) return;
    if (channel === this.heartbeatChannel) {
      const sentAt = Number(payload);
      // Anyone who may NOTIFY could send a heartbeat from the future and pin the cache fresh.
      if (sentAt >= this.listeningSince && sentAt > this.confirmedAt && sentAt <= performance.now()) {
        this.confirmedAt = sentAt;
        if (this.deafSince !== undefined) {
          this.logger.log(
            `listening for revocations again after ${((performance.now() - this.deafSince) / 1000).toFixed(1)} s; the cache answers again`,
          );
          this.deafSince = undefined;
        }
      }
    } else if (payload !== undefined) {
      const announcement = parseAnnouncement(payload);
      if (announcement) this.apply(announcement);
    }
  }

  /**
   * Sends a heartbeat on the listener's own connection: the session receives its own
   * notification in the same commit order as everyone else's, and needs no pool slot.
   * Drops a listener whose heartbeats stopped coming back.
   */
  private beat(): void {
    const listener = this.listener;
    if (!listener) return;
    const now = performance.now();
    const silentFor = now - Math.max(this.confirmedAt, this.listeningSince);
    if (silentFor > 4 * this.settings.maxStalenessMs) {
      this.lose(listener, new Error(`no heartbeat came back for ${Math.round(silentFor)} ms`));
      void listener.end().catch(() => undefined);
      return;
    }
    if (this.beating) return;
    this.beating = true;
    // A failed heartbeat needs no handling here: the connection reports its error, or the cache goes stale.
    listener
      .query('SELECT pg_notify($1, $2)', [this.heartbeatChannel, String(now)])
      .catch(() => undefined)
      .finally(() => {
        this.beating = false;
      });
  }

  private lose(client: PgClient | undefined, error?: Error): void {
    if (client === undefined || client !== this.listener) return;
    this.listener = undefined;
    this.beating = false;
    this.listeningSince = Infinity;
    this.confirmedAt = -Infinity;
    this.forgetAll();
    if (this.stopped) return;
    if (this.deafSince === undefined) {
      this.deafSince = performance.now();
      this.logger.warn(`stopped listening for revocations (${error?.message ?? 'closed'}); checking the database until it listens again`);
    }
    this.reconnectLater();
  }

  private reconnectLater(): void {
    if (this.stopped) return;
    clearTimeout(this.reconnectTimer);
    this.reconnectTimer = setTimeout(() => void this.listen(), this.reconnectDelayMs).unref();
    this.reconnectDelayMs = Math.min(this.reconnectDelayMs * 2, RECONNECT_DELAYS_MS.max);
  }
}
