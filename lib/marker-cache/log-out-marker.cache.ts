import { randomBytes } from 'node:crypto';
import { performance } from 'node:perf_hooks';
import { Inject, Injectable, Logger, type OnApplicationBootstrap, type OnModuleDestroy } from '@nestjs/common';
import type { Client as PgClient, Notification } from 'pg';
import type { LogOutMarker } from '../log-out-everywhere/log-out-marker.js';
import type { ResolvedTokenResourceOptions } from '../options/resolved-options.js';
import { TOKEN_RESOURCE_OPTIONS } from '../token-resource.constants.js';
import { TokenStore, type Statement } from '../token.store.js';

/** The first and the longest wait before the listener connects again after losing its connection. */
const RECONNECT_DELAYS_MS = { first: 250, max: 30_000 };

/**
 * Remembers subjects' log-out-everywhere markers (or that a subject has none), so that the
 * revoked-check reads only the token's own row. Off unless `logOutMarkerCache.enabled`.
 *
 * **Why the staleness is bounded.** `LogOutEverywhereService` announces every log-out on
 * {@link TokenStore.logOutChannel} with `pg_notify`, in the log-out's own transaction, so
 * the announcement is delivered when (and only if) it commits. Each instance listens on
 * one dedicated connection and drops the subject on receipt. Every quarter of
 * `maxStalenessMs` it also sends a heartbeat, through the pool, on a channel of its own.
 * PostgreSQL delivers notifications in commit order, so once a heartbeat sent at time
 * `s` comes back, every log-out committed before `s` has been applied. The cache answers
 * only while its newest returned heartbeat is at most `maxStalenessMs` old; otherwise it
 * empties itself and the check reads the marker from the database, until heartbeats flow
 * again. A listener that dies, a notification path that silently stops (a network
 * partition, a transaction-pooling proxy) and a stalled event loop all end in that state.
 *
 * **Why a fill cannot undo an invalidation.** A check that misses takes a ticket (the
 * epoch) before it queries, and stores its answer only if no notification, local
 * invalidation or listener change bumped the epoch meanwhile: a log-out that committed
 * after the query's snapshot is announced after it too, so it either bumps the epoch
 * before the answer is stored or deletes the stored answer when it arrives.
 */
@Injectable()
export class LogOutMarkerCache implements OnApplicationBootstrap, OnModuleDestroy {
  private readonly logger = new Logger(LogOutMarkerCache.name);
  /** Subject to marker (`null`: no marker), in least-recently-used-first order. */
  private readonly markers = new Map<string, LogOutMarker | null>();
  private readonly settings: ResolvedTokenResourceOptions['logOutMarkerCache'];
  /** A channel no other instance uses, so that each instance hears only its own heartbeats. */
  private readonly heartbeatChannel = `ntr_heartbeat_${randomBytes(8).toString('hex')}`;
  private readonly heartbeatStatement: Statement;
  private epoch = 0;
  /** `performance.now()` at which the newest heartbeat that came back was sent. */
  private confirmedAt = -Infinity;
  /** When the current listener started listening; older heartbeats vouch for nothing it missed. */
  private listeningSince = Infinity;
  private listener?: PgClient;
  private heartbeatTimer?: NodeJS.Timeout;
  private reconnectTimer?: NodeJS.Timeout;
  private reconnectDelayMs = RECONNECT_DELAYS_MS.first;
  private stopped = false;

  constructor(
    @Inject(TOKEN_RESOURCE_OPTIONS) options: ResolvedTokenResourceOptions,
    private readonly store: TokenStore,
  ) {
    this.settings = options.logOutMarkerCache;
    this.heartbeatStatement = { ...store.statement('heartbeat', 'SELECT pg_notify($1, $2)'), timeoutMs: this.settings.maxStalenessMs };
  }

  /** Whether the cache may answer now: enabled, listening, and a heartbeat came back within `maxStalenessMs`. */
  get fresh(): boolean {
    return performance.now() - this.confirmedAt <= this.settings.maxStalenessMs;
  }

  /**
   * The marker of `subject` as the cache knows it: the marker, `null` when the subject has
   * none, or `undefined` when the cache does not know or cannot vouch for its answer now
   * (read the database then, and offer the answer to {@link remember}).
   */
  lookup(subject: string): LogOutMarker | null | undefined {
    if (!this.fresh) {
      if (this.markers.size > 0) this.forgetAll();
      return undefined;
    }
    const marker = this.markers.get(subject);
    if (marker !== undefined) {
      this.markers.delete(subject);
      this.markers.set(subject, marker);
    }
    return marker;
  }

  /** A ticket to pass to {@link remember}, taken before reading a marker from the database. */
  ticket(): number {
    return this.epoch;
  }

  /**
   * Stores what the database said about `subject`'s marker, unless anything was
   * invalidated since `ticket` was taken (the answer may predate a log-out then).
   */
  remember(subject: string, marker: LogOutMarker | null, ticket: number): void {
    if (ticket !== this.epoch || !this.fresh) return;
    this.markers.set(subject, marker);
    if (this.markers.size > this.settings.maxSubjects) this.markers.delete(this.markers.keys().next().value!);
  }

  /** Drops what is known about `subject`; `LogOutEverywhereService` calls it after each log-out here. */
  forget(subject: string): void {
    this.epoch++;
    this.markers.delete(subject);
  }

  /** Drops everything. */
  forgetAll(): void {
    this.epoch++;
    this.markers.clear();
  }

  onApplicationBootstrap(): void {
    if (!this.settings.enabled) return;
    this.heartbeatTimer = setInterval(() => this.beat(), this.settings.maxStalenessMs / 4).unref();
    void this.listen();
  }

  async onModuleDestroy(): Promise<void> {
    this.stopped = true;
    clearInterval(this.heartbeatTimer);
    clearTimeout(this.reconnectTimer);
    const listener = this.listener;
    this.lose(listener);
    await listener?.end().catch(() => undefined);
  }

  private async listen(): Promise<void> {
    let client: PgClient;
    try {
      client = this.store.createSessionClient();
    } catch {
      this.reconnectLater();
      return;
    }
    client.on('notification', (message) => this.receive(client, message));
    client.on('error', (error) => this.lose(client, error));
    client.on('end', () => this.lose(client, new Error('connection ended')));
    try {
      await client.connect();
      await client.query(`LISTEN "${this.store.logOutChannel}"; LISTEN "${this.heartbeatChannel}"`);
    } catch (error) {
      this.logger.warn(`cannot listen for log-outs (${(error as Error).message}); checking markers in the database meanwhile`);
      await client.end().catch(() => undefined);
      this.reconnectLater();
      return;
    }
    if (this.stopped) {
      await client.end().catch(() => undefined);
      return;
    }
    // Answers read before LISTEN took effect may miss log-outs this listener never hears of.
    this.forgetAll();
    this.listener = client;
    this.listeningSince = performance.now();
    this.reconnectDelayMs = RECONNECT_DELAYS_MS.first;
    this.beat();
  }

  private receive(client: PgClient, { channel, payload }: Notification): void {
    if (client !== this.listener) return;
    if (channel === this.heartbeatChannel) {
      const sentAt = Number(payload);
      if (sentAt >= this.listeningSince && sentAt > this.confirmedAt) this.confirmedAt = sentAt;
    } else if (payload) {
      this.forget(payload);
    } else {
      // A subject too long for a notification payload is announced without one.
      this.forgetAll();
    }
  }

  /** Sends a heartbeat through the pool; drops a listener whose heartbeats stopped coming back. */
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
    // A failed heartbeat needs no handling: the cache goes stale and stops answering.
    this.store.query(this.heartbeatStatement, [this.heartbeatChannel, String(now)]).catch(() => undefined);
  }

  private lose(client: PgClient | undefined, error?: Error): void {
    if (client === undefined || client !== this.listener) return;
    this.listener = undefined;
    this.listeningSince = Infinity;
    this.confirmedAt = -Infinity;
    this.forgetAll();
    if (this.stopped) return;
    this.logger.warn(`stopped listening for log-outs (${error?.message ?? 'closed'}); checking markers in the database until it listens again`);
    this.reconnectLater();
  }

  private reconnectLater(): void {
    if (this.stopped) return;
    clearTimeout(this.reconnectTimer);
    this.reconnectTimer = setTimeout(() => void this.listen(), this.reconnectDelayMs).unref();
    this.reconnectDelayMs = Math.min(this.reconnectDelayMs * 2, RECONNECT_DELAYS_MS.max);
  }
}
