import { createConnection, createServer, type Server, type Socket } from 'node:net';

/**
 * What the proxy does with connections:
 * - `forward`: pipes them to the upstream server;
 * - `reset`: resets them at once (the database is down, the port refuses);
 * - `blackhole`: accepts them and never answers (a network partition), holding them
 *   until the mode goes back to `forward`, when they are piped through.
 */
export type ProxyMode = 'forward' | 'reset' | 'blackhole';

/** A TCP proxy in front of PostgreSQL, to make real outages for a running application. */
export interface TcpProxy {
  port: number;
  setMode(mode: ProxyMode): void;
  /** Drops every forwarded connection, as a database restart would. */
  cut(): void;
  /**
   * Stops every established connection from carrying bytes, without closing it: a peer
   * gone silent mid-query, as in a network partition that never heals. New connections
   * still follow the mode.
   */
  freeze(): void;
  /** How many connections are being held in `blackhole` mode. */
  held(): number;
  close(): Promise<void>;
}

export async function startTcpProxy(upstreamHost: string, upstreamPort: number): Promise<TcpProxy> {
  let mode: ProxyMode = 'forward';
  const piped = new Set<Socket>();
  const pairs = new Set<[Socket, Socket]>();
  const holding = new Set<Socket>();

  const forward = (client: Socket): void => {
    const upstream = createConnection({ host: upstreamHost, port: upstreamPort });
    piped.add(client).add(upstream);
    const pair: [Socket, Socket] = [client, upstream];
    pairs.add(pair);
    const drop = (): void => {
      pairs.delete(pair);
      client.destroy();
      upstream.destroy();
      piped.delete(client);
      piped.delete(upstream);
    };
    client.on('error', drop).on('close', drop);
    upstream.on('error', drop).on('close', drop);
    client.pipe(upstream).pipe(client);
  };

  const server: Server = createServer((client) => {
    client.pause();
    if (mode === 'reset') {
      client.on('error', () => undefined);
      client.resetAndDestroy();
    } else if (mode === 'blackhole') {
      holding.add(client);
      client.on('error', () => holding.delete(client)).on('close', () => holding.delete(client));
    } else {
      forward(client);
    }
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));

  return {
    port: (server.address() as { port: number }).port,
    setMode(next) {
      mode = next;
      if (next === 'forward') {
        for (const client of holding) {
          holding.delete(client);
          client.removeAllListeners('error').removeAllListeners('close');
          forward(client);
        }
      }
    },
    cut() {
      for (const socket of piped) socket.destroy();
      piped.clear();
    },
    freeze() {
      for (const [client, upstream] of pairs) {
        client.unpipe(upstream);
        upstream.unpipe(client);
        client.pause();
        upstream.pause();
      }
    },
    held: () => holding.size,
    async close() {
      for (const socket of [...piped, ...holding]) socket.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

/** A proxy in front of the server of `databaseUrl`, and the same URL pointing at the proxy. */
export async function proxyDatabase(databaseUrl: string): Promise<{ proxy: TcpProxy; url: string }> {
  const url = new URL(databaseUrl);
  const proxy = await startTcpProxy(url.hostname, Number(url.port || 5432));
  url.hostname = '127.0.0.1';
  url.port = String(proxy.port);
  return { proxy, url: url.toString() };
}
