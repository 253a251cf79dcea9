import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { createConnection } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import { DEMO_USER } from '../sample-app/users/demo-user.js';
import { createTestDatabase } from './support/test-database.js';
import { freePort } from './support/free-port.js';

/**
 * Starts the sample app as a user would: `npm start` with DATABASE_URL unset, so it builds,
 * boots an embedded PostgreSQL in a temporary SAMPLE_DATA_DIR, and serves; then Ctrl-C
 * (SIGINT to the process group, as a terminal sends it) must stop the app and PostgreSQL.
 * A second start on the same directory reuses the cluster and its data.
 */

const root = process.cwd();
const children: ChildProcess[] = [];
let dataDir: string;

/** A started process and everything it printed so far. */
interface Run {
  child: ChildProcess;
  output: () => string;
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
}

function childEnv(extra: Record<string, string>): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = { ...process.env, NO_COLOR: '1', ...extra };
  delete env.DATABASE_URL;
  delete env.NODE_OPTIONS; // jest's --experimental-vm-modules is not part of `npm start`
  delete env.JWT_SECRET;
  return env;
}

/** Spawns in a process group of its own, so that the group can get the SIGINT of a Ctrl-C. */
function run(command: string, args: string[], env: NodeJS.ProcessEnv): Run {
  const child = spawn(command, args, { cwd: root, env, detached: true, stdio: ['ignore', 'pipe', 'pipe'] });
  children.push(child);
  let output = '';
  child.stdout.on('data', (chunk) => {
    output += chunk;
  });
  child.stderr.on('data', (chunk) => {
    output += chunk;
  });
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => {
    child.on('exit', (code, signal) => resolve({ code, signal }));
  });
  return { child, output: () => output, exited };
}

/** Polls GET /health until it answers 200; fails early if the process exits. */
async function waitForHealth(started: Run, port: number, timeoutMs: number): Promise<void> {
  let exited = false;
  void started.exited.then(() => {
    exited = true;
  });
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (exited) throw new Error(`the app exited before answering /health:\n${started.output()}`);
    try {
      const res = await fetch(`http://127.0.0.1:${port}/health`);
      if (res.status === 200) return;
    } catch {
      // not listening yet
    }
    await sleep(250);
  }
  throw new Error(`no /health within ${timeoutMs} ms:\n${started.output()}`);
}

async function withTimeout<T>(work: Promise<T>, ms: number, what: string, output: () => string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  try {
    return await Promise.race([
      work,
      new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new Error(`${what} within ${ms} ms:\n${output()}`)), ms);
      }),
    ]);
  } finally {
    clearTimeout(timer);
  }
}

async function login(port: number): Promise<string> {
  const res = await fetch(`http://127.0.0.1:${port}/auth/login`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ email: DEMO_USER.email, password: DEMO_USER.password }),
  });
  expect(res.status).toBe(200);
  return ((await res.json()) as { accessToken: string }).accessToken;
}

async function meStatus(port: number, token: string): Promise<number> {
  return (await fetch(`http://127.0.0.1:${port}/me`, { headers: { authorization: `Bearer ${token}` } })).status;
}

function postgresPortOf(output: string): number {
  const match = /embedded PostgreSQL on 127\.0\.0\.1:(\d+)/.exec(output);
  if (!match) throw new Error(`no embedded PostgreSQL port in the output:\n${output}`);
  return Number(match[1]);
}

async function portClosed(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = createConnection({ host: '127.0.0.1', port });
    socket.once('connect', () => {
      socket.destroy();
      resolve(false);
    });
    socket.once('error', () => resolve(true));
  });
}

beforeAll(async () => {
  dataDir = await mkdtemp(join(tmpdir(), 'ntr-sample-app-'));
});

afterAll(async () => {
  for (const child of children) {
    if (child.exitCode === null && child.signalCode === null && child.pid) {
      try {
        process.kill(-child.pid, 'SIGKILL'); // the group: npm, node and PostgreSQL
      } catch {
        // already gone
      }
    }
  }
  await sleep(200);
  if (dataDir) await rm(dataDir, { recursive: true, force: true });
});

describe('npm start', () => {
  let token: string;

  it('builds, boots the embedded database, serves the API, and stops on Ctrl-C', async () => {
    const port = await freePort();
    const app = run('npm', ['start'], childEnv({ PORT: String(port), SAMPLE_DATA_DIR: dataDir, NODE_ENV: 'development' }));
    await waitForHealth(app, port, 150_000);

    expect(app.output()).toContain(`listening on http://localhost:${port}`);
    expect(app.output()).toContain('new cluster');
    expect(app.output()).toContain(`curl -s http://localhost:${port}/auth/login`);
    token = await login(port);
    expect(await meStatus(port, token)).toBe(200);
    const pgPort = postgresPortOf(app.output());

    process.kill(-app.child.pid!, 'SIGINT');
    const exit = await withTimeout(app.exited, 30_000, 'no exit after SIGINT', app.output);
    expect(app.output()).toContain('Stopped cleanly');
    expect(app.output()).not.toMatch(/\bERROR\b|Error:/);
    // npm re-raises the Ctrl-C it got itself once the app has exited 0.
    expect(exit.code === 0 || exit.signal === 'SIGINT').toBe(true);
    expect(await portClosed(port)).toBe(true);
    expect(await portClosed(pgPort)).toBe(true);
    expect(existsSync(join(dataDir, 'postmaster.pid'))).toBe(false);
  }, 200_000);

  it('restarts on the same cluster with its data, and stops on SIGTERM with exit code 0', async () => {
    expect(token).toBeDefined();
    const port = await freePort();
    // The build is there from `npm start`; run its second half directly.
    const app = run(process.execPath, ['.build/sample-app/main.js'], childEnv({ PORT: String(port), SAMPLE_DATA_DIR: dataDir }));
    await waitForHealth(app, port, 60_000);
    expect(app.output()).toContain('existing cluster');
    expect(app.output()).not.toContain('Seeded the demo user');
    expect(await meStatus(port, token)).toBe(200); // the first run's stored token is still known

    process.kill(app.child.pid!, 'SIGTERM');
    const exit = await withTimeout(app.exited, 30_000, 'no exit after SIGTERM', app.output);
    expect(exit).toEqual({ code: 0, signal: null });
    expect(app.output()).toContain('Stopped cleanly');
    expect(await portClosed(postgresPortOf(app.output()))).toBe(true);
  }, 90_000);

  it('uses DATABASE_URL when it is set, and boots no database of its own', async () => {
    const db = await createTestDatabase();
    try {
      const port = await freePort();
      const app = run(process.execPath, ['.build/sample-app/main.js'], { ...childEnv({ PORT: String(port) }), DATABASE_URL: db.url });
      await waitForHealth(app, port, 60_000);
      expect(app.output()).toContain('database: DATABASE_URL postgres://');
      expect(app.output()).not.toContain('embedded PostgreSQL');
      expect(await meStatus(port, await login(port))).toBe(200);
      process.kill(app.child.pid!, 'SIGTERM');
      expect(await withTimeout(app.exited, 30_000, 'no exit after SIGTERM', app.output)).toEqual({ code: 0, signal: null });
    } finally {
      await db.drop();
    }
  }, 90_000);

  it('refuses to start in production without JWT_SECRET, before touching the database', async () => {
    const emptyDir = join(dataDir, 'never-created');
    const app = run(
      process.execPath,
      ['.build/sample-app/main.js'],
      childEnv({ NODE_ENV: 'production', SAMPLE_DATA_DIR: emptyDir, PORT: '0' }),
    );
    const exit = await withTimeout(app.exited, 30_000, 'no exit', app.output);
    expect(exit.code).toBe(1);
    expect(app.output()).toContain('JWT_SECRET is required when NODE_ENV=production');
    expect(existsSync(emptyDir)).toBe(false);
  }, 40_000);
});
