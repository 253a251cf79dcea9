import { randomBytes } from 'node:crypto';
import { performance } from 'node:perf_hooks';
import { Inject, Injectable, Logger, type OnApplicationBootstrap, type OnModuleDestroy } from '@nestjs/common';
import type { Client as PgClient, Notification } from 'pg';
import type { LogOutMarker } from '../log-out-everywhere/log-out-marker.js';
import type { ResolvedTokenResourceOptions } from '../options/resolved-options.js';
import { TOKEN_RESOURCE_OPTIONS } from '../token-resource.internal-constants.js';
import { TokenStore } from '../token.store.js';
import { isSubject } from '../validation/token-values.js';

/** The first and the longest wait before the listener connects again after losing its connection. */
const RECONNECT_DELAYS_MS = { first: 250, max: 30_000 };

/** How the listener's session shows in `pg_stat_activity.application_name`. */
export const LISTENER_APPLICATION_NAME = 'nestjs-token-resource log-out listener';

/** How long the listener may take to connect before it gives up and tries again later. */
const CONNECT_TIMEOUT_MS = 10_000;

interface CacheEntry {
  /** The marker, or `null`: the subject had none. */
  marker: LogOutMarker | null;
  /** `performance.now()` when the database said so. */
  filledAt: number;
}

/**
 * Remembers subjects' log-out-everywhere markers (or that a subject has none), so that the
 * revoked-check reads only the token's own row. Off unless `logOutMarkerCache.enabled`.
 *
 * It listens for the log-outs announced on {@link TokenStore.logOutChannel} and answers
 * only while its own heartbeats, sent on the same connection, come back within
 * `maxStalenessMs`; a check that misses stores its answer only if nothing was invalidated
 * meanwhile (the epoch). docs/internals.md ("The marker cache") proves both bounds.
 */
@Injectable()
export class LogOutMarkerCache implements OnApplicationBootstrap, OnModuleDestroy {
  private readonly logger = new Logger(LogOutMarkerCache.name);
  /**
   * Subject to what is known of its marker, oldest answer first. A hit does not move an
   * entry, which would cost a delete and an insert on every request; a subject in use is
   * read again once its entry ages out, which moves it to the end.
   */
  private readonly entries = new Map<string, CacheEntry>();
  private readonly settings: ResolvedTokenResourceOptions['logOutMarkerCache'];
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
   * `performance.now()` when the cache last stopped hearing log-outs (its listener lost or
   * refused), until a heartbeat comes back: an outage is logged once when it starts and once
   * when it ends, not at every attempt to listen again.
   */
  private deafSince?: number;

  constructor(
    @Inject(TOKEN_RESOURCE_OPTIONS) options: ResolvedTokenResourceOptions,
    private readonly store: TokenStore,
  ) {
    this.settings = options.logOutMarkerCache;
  }

  /** Whether the cache may answer now: enabled, listening, and a heartbeat came back within `maxStalenessMs`. */
  get fresh(): boolean {
    return performance.now() - this.confirmedAt <= this.settings.maxStalenessMs;
  }

  /**
   * The marker of `subject` as the cache knows it: the marker, `null` when the subject has
   * none, or `undefined` when the cache does not know or cannot vouch for its answer now
   * (read the database then, and offer the answer to {@link remember}). An answer used
   * after an `await` must be re-checked with {@link confirms}.
   *
   * @internal used by `TokenService.checkClaims`.
   */
  lookup(subject: string): LogOutMarker | null | undefined {
    if (!this.fresh) {
      if (this.entries.size > 0) this.forgetAll();
      return undefined;
    }
    const entry = this.entries.get(subject);
    if (entry === undefined) return undefined;
    // Writes that bypass LogOutEverywhereService are never announced; an age limit bounds them too.
    if (performance.now() - entry.filledAt > this.settings.maxEntryAgeMs) {
      this.entries.delete(subject);
      return undefined;
    }
    return entry.marker;
  }

  /**
   * Whether `marker`, returned by {@link lookup} before the caller waited (for a pooled
   * connection, say), is still what the cache would answer: nothing about the subject was
   * announced meanwhile and the cache is still fresh. If not, the wait may have outlasted
   * the bound, and the caller must read the marker from the database.
   *
   * @internal used by `TokenService.checkClaims`.
   */
  confirms(subject: string, marker: LogOutMarker | null): boolean {
    return this.fresh && this.entries.get(subject)?.marker === marker;
  }

  /**
   * A ticket to pass to {@link remember}, taken before reading a marker from the database.
   *
   * @internal used by `TokenService.checkClaims`.
   */
  ticket(): number {
    return this.epoch;
  }

  /**
   * Stores what the database said about `subject`'s marker, unless anything was
   * invalidated since `ticket` was taken (the answer may predate a log-out then).
   *
   * @internal used by `TokenService.checkClaims`.
   */
  remember(subject: string, marker: LogOutMarker | null, ticket: number): void {
    if (ticket !== this.epoch || !this.fresh) return;
    this.entries.delete(subject);
    this.entries.set(subject, { marker, filledAt: performance.now() });
    if (this.entries.size > this.settings.maxSubjects) this.entries.delete(this.entries.keys().next().value!);
  }

  /** Drops what is known about `subject`; `LogOutEverywhereService` calls it after each log-out here. */
  forget(subject: string): void {
    this.epoch++;
    this.entries.delete(subject);
  }

  /** Drops everything. */
  forgetAll(): void {
    this.epoch++;
    this.entries.clear();
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
      if (!pooled) await client.query(`LISTEN "${this.store.logOutChannel}"; LISTEN "${this.heartbeatChannel}"`);
    } catch (error) {
      if (!this.stopped && this.deafSince === undefined) {
        this.deafSince = performance.now();
        this.logger.warn(`cannot listen for log-outs (${(error as Error).message}); checking markers in the database meanwhile`);
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
    // Answers read before LISTEN took effect may miss log-outs this listener never hears of.
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
   * heartbeats too, run on it or on others, so heartbeats can come back while log-outs go
   * unheard: the cache must stay off. It stops trying then (a pooler stays) and warns once.
   * The `pg-native` client announces no id and is refused too.
   */
  private throughPooler(client: PgClient, serverPid: number): boolean {
    const announcedPid = (client as unknown as { processID?: number | null }).processID;
    if (announcedPid === serverPid) return false;
    this.logger.warn(
      'the log-out marker cache is off: its connection may go through a pooler (PgBouncer or alike; the ' +
        `process id it announced, ${String(announcedPid)}, is not the server's, ${serverPid}), where LISTEN cannot hear ` +
        'log-outs, so every check reads the marker from the database. Connect the data source to PostgreSQL directly ' +
        'to use the cache, or drop logOutMarkerCache.enabled to silence this.',
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
            `listening for log-outs again after ${((performance.now() - this.deafSince) / 1000).toFixed(1)} s; the cache answers again`,
          );
          this.deafSince = undefined;
        }
      }
    } else if (isSubject(payload)) {
      // Every log-out announces its subject. Anyone may NOTIFY on this channel: a payload no
      // log-out sends (empty, too long) must not be a cheap way to empty every cache.
      this.forget(payload);
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
      this.logger.warn(
        `stopped listening for log-outs (${error?.message ?? 'closed'}); checking markers in the database until it listens again`,
      );
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
