/**
 * The load generator of bench:http, run in its own process (forked by the benchmark) so
 * that sending requests does not share the server's event loop. It receives one job over
 * IPC, runs autocannon, and answers with the figures.
 */
import autocannon from 'autocannon';

/** What the benchmark asks for. */
export interface LoadJob {
  url: string;
  /** Bearer tokens, sent in turn. */
  tokens: string[];
  connections: number;
  durationSeconds: number;
}

/** What the loader answers. */
export interface LoadReport {
  requests: number;
  durationSeconds: number;
  p50: number;
  p99: number;
  non2xx: number;
  errors: number;
  timeouts: number;
}

async function load(job: LoadJob): Promise<void> {
  let next = 0;
  const result = await autocannon({
    url: job.url,
    connections: job.connections,
    duration: job.durationSeconds,
    requests: [
      {
        setupRequest(request: { headers?: Record<string, string> }) {
          request.headers = { ...request.headers, authorization: `Bearer ${job.tokens[next++ % job.tokens.length]}` };
          return request;
        },
      },
    ],
  });
  const report: LoadReport = {
    requests: result.requests.total,
    durationSeconds: result.duration,
    p50: result.latency.p50,
    p99: result.latency.p99,
    non2xx: result.non2xx,
    errors: result.errors,
    timeouts: result.timeouts,
  };
  process.send!(report, () => process.exit(0));
}

process.once('message', (job: LoadJob) => void load(job));
