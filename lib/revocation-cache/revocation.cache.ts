import { randomBytes } from 'node:crypto';
import { performance } from 'node:perf_hooks';
import { Inject, Injectable, Logger, type OnApplicationBootstrap, type OnModuleDestroy, type OnModuleInit } from '@nestjs/common';
import type { Client as PgClient } from 'pg';
import type { DataSource, EntityManager } from 'typeorm';
import type { LogOutMarker } from '../log-out-everywhere/log-out-marker.js';
import type { ResolvedTokenResourceOptions } from '../options/resolved-options.js';
import { LOG_OUT_EVERYWHERE_PURPOSE, TOKEN_DATA_SOURCE, TOKEN_RESOURCE_OPTIONS } from '../token-resource.internal-constants.js';
import { TokenStore, type Statement } from '../token.store.js';
import { registerSubscriber } from '../typeorm/register-subscriber.js';
import type { Announcement } from './announcement.js';
import { Pacer } from './pacer.js';
import { PostCommitForgets } from './post-commit-forgets.js';

/** The first and the longest wait before the poller connects again after losing its connection. */
const RECONNECT_DELAYS_MS = { first: 250, max: 30_000 };

/** How the poller's session shows in `pg_stat_activity.application_name`. */
export const LISTENER_APPLICATION_NAME = 'nestjs-token-resource revocation listener';

/** How long the poller may take to connect before it gives up and tries again later. */
const CONNECT_TIMEOUT_MS = 10_000;

/**
 * The shortest time between two wake-ups this instance sends, and between two polls: under a
 * steady stream of writes each instance sends at most one `NOTIFY` and makes at most one poll
 * per gap, and a write is still seen elsewhere within milliseconds.
 */
const WAKE_GAP_MS = 5;
const POLL_GAP_MS = 2;

/** The line of a wake-up that says some names did not fit: poll at once. */
const POLL_NOW = '*';

/** How many bytes of names a wake-up carries at most, below PostgreSQL's 8000-byte payload; the poll covers the rest. */
const WAKE_UP_NAMES_BYTES = 7000;

/** A transaction id above every real one: a connection's first poll reads no rows, only its snapshot. */
const NO_XID = '9223372036854775807';

/** Where a poll starts: the previous poll's snapshot, whose `xmax` and in-progress ids bound what it could not see. */
interface PollCursor {
  xmax: string;
  xip: string[];
}

/** What `TokenStore.pollStatement` returns: its snapshot, and `[jti, subject, purpose]` of each row stamped since the previous one. */
interface PollRow {
  xmax: string;
  xip: string[];
  changed: Array<[string, string, string]> | null;
}

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
 * It polls the rows that writes stamped (`changed_xid`) since its previous poll, on a
 * connection of its own to the primary, every quarter of `maxStalenessMs` and whenever a
 * writer wakes it on {@link TokenStore.revocationChannel}; it answers only while a poll sent
 * within `maxStalenessMs` was applied. A check that misses stores its answer only if nothing
 * was invalidated meanwhile (the epoch). docs/internals.md ("The revocation cache") proves
 * both bounds.
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
  private readonly postCommit = new PostCommitForgets((announcement) => {
    this.apply(announcement);
    this.wake(announcement);
  });
  private unregister?: () => void;
  private epoch = 0;
  /** `performance.now()` at which the newest poll that was applied was sent. */
  private confirmedAt = -Infinity;
  /** The connection that polls and listens for wake-ups. */
  private listener?: PgClient;
  /** A client still connecting, so that shutdown can end it too. */
  private connecting?: PgClient;
  /** Where the next poll on {@link listener} starts; `undefined` before its first. */
  private cursor?: PollCursor;
  /** The polls: one at a time, wake-ups that come meanwhile share the next. */
  private readonly polls = new Pacer(() => this.poll(), POLL_GAP_MS);
  /** `performance.now()` when the latest poll was sent. */
  private pollSentAt = 0;
  private pollTimer?: NodeJS.Timeout;
  private reconnectTimer?: NodeJS.Timeout;
  private reconnectDelayMs = RECONNECT_DELAYS_MS.first;
  private stopped = false;
  /** This instance's wake-ups: one at a time, writes made meanwhile share the next. */
  private readonly wakeUps = new Pacer(() => this.sendWakeUp(), WAKE_GAP_MS);
  /** The first line of this instance's wake-ups, so that it does not poll on its own (it applied its writes already). */
  private readonly instanceId = randomBytes(8).toString('hex');
  /** The lines the next wake-up names (`j:<jti>`, `s:<subject>`), and their size in bytes. */
  private unsent: string[] = [];
  private unsentBytes = 0;
  /** Whether some names did not fit the next wake-up. */
  private unsentOverflowed = false;
  /**
   * Whether the poll connection may use named prepared statements (parsed and planned once):
   * it reaches PostgreSQL directly. Behind a pooler a name would exist on one server
   * connection only.
   */
  private sessionStatements = false;
  private readonly wakeStatement: Statement;
  /** Whether it has said that it polls through a pooler. */
  private saidPooled = false;
  /**
   * `performance.now()` when the cache last stopped polling (its connection lost or
   * refused), until a poll is answered again: an outage is logged once when it starts and
   * once when it ends, not at every attempt to connect again.
   */
  private deafSince?: number;

  constructor(
    @Inject(TOKEN_RESOURCE_OPTIONS) options: ResolvedTokenResourceOptions,
    private readonly store: TokenStore,
    @Inject(TOKEN_DATA_SOURCE) private readonly dataSource: DataSource,
  ) {
    this.settings = options.revocationCache;
    this.wakeStatement = {
      ...store.statement('wake', `SELECT pg_notify('${store.revocationChannel}', $1)`),
      timeoutMs: options.storeTimeoutMs,
    };
  }

  /** Whether the cache may answer now: enabled, and a poll sent within `maxStalenessMs` was answered and applied. */
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
   * Applies a stamped write this instance made: at once, and, when `manager` is inside a
   * transaction, again right after TypeORM commits it (a check in between may have cached
   * the state before the write). Then, with `announce`, it wakes the other instances to poll
   * for it, which they would otherwise do within a quarter of their `maxStalenessMs`.
   *
   * @internal used by the services that write.
   */
  written(announcement: Announcement, manager?: EntityManager): void {
    this.apply(announcement);
    const runner = manager?.queryRunner;
    if (runner && !runner.isReleased && runner.isTransactionActive) {
      if (this.unregister) this.postCommit.add(runner, announcement);
    } else {
      this.wake(announcement);
    }
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
    if (this.settings.enabled || this.settings.announce) this.unregister = registerSubscriber(this.dataSource, this.postCommit);
  }

  onApplicationBootstrap(): void {
    if (!this.settings.enabled) return;
    this.pollTimer = setInterval(() => this.tick(), this.settings.maxStalenessMs / 4).unref();
    void this.listen();
  }

  async onModuleDestroy(): Promise<void> {
    this.stopped = true;
    this.wakeUps.reset();
    this.unsent = [];
    this.unregister?.();
    this.unregister = undefined;
    clearInterval(this.pollTimer);
    clearTimeout(this.reconnectTimer);
    const clients = [this.listener, this.connecting];
    this.lose(this.listener);
    await Promise.all(
      clients.map((client) => (client ? client.end().catch(() => undefined) : undefined)).filter((ending) => ending !== undefined),
    );
  }

  /**
   * Tells the other instances' caches what this instance's write changed, once it has
   * committed: a `NOTIFY` in a transaction of its own that writes nothing, so no write waits
   * for the cluster-wide lock `NOTIFY` takes at commit. It names what was written, and the
   * others drop those answers on receipt; names that do not fit one payload are replaced by
   * {@link POLL_NOW}, on which they poll at once. Paced: writes made while one is on its way
   * or waiting share the next, sent after it (one sent before a write committed may have been
   * heard before it). A lost wake-up only delays the others until their next periodic poll.
   */
  private wake({ kind, key }: Announcement): void {
    if (!this.settings.announce || this.stopped) return;
    const line = `${kind === 'jti' ? 'j' : 's'}:${key}`;
    const bytes = Buffer.byteLength(line) + 1;
    if (this.unsentBytes + bytes <= WAKE_UP_NAMES_BYTES) {
      this.unsent.push(line);
      this.unsentBytes += bytes;
    } else {
      this.unsentOverflowed = true;
    }
    this.wakeUps.request();
  }

  /**
   * Sends the next wake-up on the poll connection when there is one (no wait for a pooled
   * connection, which the writes themselves compete for), else from the pool.
   */
  private sendWakeUp(): Promise<unknown> {
    const lines = [this.instanceId, ...this.unsent];
    if (this.unsentOverflowed) lines.push(POLL_NOW);
    this.unsent = [];
    this.unsentBytes = 0;
    this.unsentOverflowed = false;
    const listener = this.listener;
    if (!listener) return this.store.query(this.wakeStatement, [lines.join('\n')]);
    return listener.query({
      name: this.sessionStatements ? this.wakeStatement.name : undefined,
      text: this.wakeStatement.text,
      values: [lines.join('\n')],
    });
  }

  /**
   * Another instance's wake-up: drops the answers it names (dropping is always safe, so
   * anyone who may `NOTIFY` can make a cache read more, never answer wrong), and polls at
   * once when it says some names did not fit or names nothing it knows.
   */
  private wokenBy(payload: string): void {
    const [sender, ...names] = payload.split('\n');
    if (sender === this.instanceId) return;
    let named = false;
    for (const name of names) {
      if (name.startsWith('j:')) this.apply({ kind: 'jti', key: name.slice(2) });
      else if (name.startsWith('s:')) this.apply({ kind: 'subject', key: name.slice(2) });
      else continue;
      named = true;
    }
    if (!named || names.includes(POLL_NOW)) this.polls.request();
  }

  /** Every quarter of `maxStalenessMs`: polls, and drops a connection whose poll went unanswered (a silent partition). */
  private tick(): void {
    const listener = this.listener;
    if (!listener) return;
    const waited = performance.now() - this.pollSentAt;
    if (this.polls.running && waited > 2 * this.settings.maxStalenessMs) {
      this.lose(listener, new Error(`a poll went unanswered for ${Math.round(waited)} ms`));
      void listener.end().catch(() => undefined);
      return;
    }
    this.polls.request();
  }

  private async listen(): Promise<void> {
    let client: PgClient;
    try {
      client = this.store.createSessionClient({ role: LISTENER_APPLICATION_NAME, connectionTimeoutMillis: CONNECT_TIMEOUT_MS });
    } catch {
      this.reconnectLater();
      return;
    }
    client.on('notification', ({ payload }) => {
      if (client === this.listener) this.wokenBy(payload ?? '');
    });
    client.on('error', (error) => this.lose(client, error));
    client.on('end', () => this.lose(client, new Error('connection ended')));
    this.connecting = client;
    try {
      await client.connect();
      const {
        rows: [session],
      } = await client.query<{ pid: number }>('SELECT pg_backend_pid() AS pid');
      // Checked before LISTEN, which would stay behind on a pooler's server connection.
      this.sessionStatements = !this.throughPooler(client, session.pid);
      if (this.sessionStatements) await client.query(`LISTEN "${this.store.revocationChannel}"`);
    } catch (error) {
      if (!this.stopped && this.deafSince === undefined) {
        this.deafSince = performance.now();
        this.logger.warn(`cannot poll for revocations (${(error as Error).message}); checking the database meanwhile`);
      }
      await client.end().catch(() => undefined);
      this.reconnectLater();
      return;
    } finally {
      this.connecting = undefined;
    }
    if (this.stopped) {
      await client.end().catch(() => undefined);
      return;
    }
    this.listener = client;
    this.cursor = undefined;
    this.reconnectDelayMs = RECONNECT_DELAYS_MS.first;
    this.polls.request();
  }

  /**
   * Whether `client` may reach PostgreSQL through a pooler: the process id the connection
   * announced (a pooler announces its own key) is not the server process's. Behind a
   * transaction pooler, LISTEN would stay on one server connection and hear nothing, and
   * fail silently: the cache then polls every quarter of `maxStalenessMs` without wake-ups,
   * which keeps its bound but not its speed. Said once. The `pg-native` client announces no
   * id and counts as pooled.
   */
  private throughPooler(client: PgClient, serverPid: number): boolean {
    const announcedPid = (client as unknown as { processID?: number | null }).processID;
    if (announcedPid === serverPid) return false;
    if (!this.saidPooled) {
      this.saidPooled = true;
      this.logger.log(
        'the revocation cache polls without wake-ups: its connection may go through a pooler (PgBouncer or alike; the ' +
          `process id it announced, ${String(announcedPid)}, is not the server's, ${serverPid}), where LISTEN hears nothing. ` +
          `Revocations made on other instances are seen within ${this.settings.maxStalenessMs / 4} ms rather than at once. ` +
          'Connect the data source to PostgreSQL directly for wake-ups.',
      );
    }
    return true;
  }

  /**
   * Reads, on the listener's connection, every row stamped by a transaction the previous
   * poll could not see, and applies it; then the cache may answer for what committed before
   * this poll was sent. A connection's first poll only takes the snapshot it starts from and
   * empties the cache, which could not vouch for what it held.
   */
  private async poll(): Promise<void> {
    const listener = this.listener;
    if (!listener) return;
    const sentAt = performance.now();
    this.pollSentAt = sentAt;
    const cursor = this.cursor;
    let row: PollRow;
    try {
      const { name, text } = this.store.pollStatement();
      const values = cursor ? [cursor.xmax, cursor.xip] : [NO_XID, []];
      [row] = (await listener.query<PollRow>({ name: this.sessionStatements ? name : undefined, text, values })).rows;
    } catch (error) {
      this.lose(listener, error as Error);
      void listener.end().catch(() => undefined);
      return;
    }
    if (listener !== this.listener) return;
    if (cursor === undefined) this.forgetAll();
    for (const [jti, subject, purpose] of row.changed ?? []) {
      this.apply(purpose === LOG_OUT_EVERYWHERE_PURPOSE ? { kind: 'subject', key: subject } : { kind: 'jti', key: jti });
    }
    this.cursor = { xmax: row.xmax, xip: row.xip };
    this.confirmedAt = Math.max(this.confirmedAt, sentAt);
    if (this.deafSince !== undefined) {
      this.logger.log(
        `polling for revocations again after ${((performance.now() - this.deafSince) / 1000).toFixed(1)} s; the cache answers again`,
      );
      this.deafSince = undefined;
    }
  }

  private lose(client: PgClient | undefined, error?: Error): void {
    if (client === undefined || client !== this.listener) return;
    this.listener = undefined;
    this.polls.reset();
    // A wake-up on its way on the lost connection may never end; the next goes from the pool.
    this.wakeUps.reset();
    this.cursor = undefined;
    this.confirmedAt = -Infinity;
    this.forgetAll();
    if (this.stopped) return;
    if (this.unsent.length > 0) this.wakeUps.request();
    if (this.deafSince === undefined) {
      this.deafSince = performance.now();
      this.logger.warn(`stopped polling for revocations (${error?.message ?? 'closed'}); checking the database until it polls again`);
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
