import { afterAll, beforeAll, expect, it } from '@jest/globals';
import type { INestApplication } from '@nestjs/common';
import { Test } from '@nestjs/testing';
import request from 'supertest';
import { AppModule } from '../sample-app/app.module.js';
import { API_DOCS_PATH, BEARER_SCHEME, setupApiDocs } from '../sample-app/docs/api-docs.js';
import { createTestDatabase, type TestDatabase } from './support/test-database.js';

/**
 * The sample app's OpenAPI document covers every route the running app serves, found in its
 * Express router rather than listed here, so that routes added later are held to it too.
 */

interface Route {
  method: string;
  /** The Express path, `/auth/sessions/:id`. */
  path: string;
}

interface Operation {
  security?: Array<Record<string, string[]>>;
  responses: Record<string, unknown>;
}

let db: TestDatabase;
let app: INestApplication;
let http: ReturnType<INestApplication['getHttpServer']>;

beforeAll(async () => {
  db = await createTestDatabase();
  const moduleRef = await Test.createTestingModule({
    imports: [AppModule.forRoot({ databaseUrl: db.url, env: { NODE_ENV: 'test' } })],
  }).compile();
  app = moduleRef.createNestApplication({ logger: false });
  setupApiDocs(app);
  await app.init();
  http = app.getHttpServer();
});

afterAll(async () => {
  await app?.close();
  await db?.drop();
});

/** Every route of the running app's Express router but the docs' own. */
function servedRoutes(): Route[] {
  type Layer = { route?: { path: string | string[]; methods: Record<string, boolean> } };
  const express = app.getHttpAdapter().getInstance() as { router: { stack: Layer[] } };
  const routes: Route[] = [];
  for (const { route } of express.router.stack) {
    if (!route) continue;
    for (const path of ([] as string[]).concat(route.path)) {
      if (path === `/${API_DOCS_PATH}` || path.startsWith(`/${API_DOCS_PATH}-`) || path.startsWith(`/${API_DOCS_PATH}/`)) continue;
      for (const [method, on] of Object.entries(route.methods)) if (on && method !== '_all') routes.push({ method, path });
    }
  }
  return routes;
}

/** Whether the guard checks `route`: without a token it is refused before anything else runs. */
async function checked(route: Route): Promise<boolean> {
  const res = await (request(http) as unknown as Record<string, (path: string) => request.Test>)[route.method](
    route.path.replace(/:(\w+)/g, 'x'),
  );
  return res.status === 401 && (res.body as { message?: string }).message === 'missing bearer token';
}

it('serves the Swagger UI at /docs', async () => {
  const res = await request(http).get(`/${API_DOCS_PATH}`).redirects(1);
  expect(res.status).toBe(200);
  expect(res.text).toContain('swagger');
});

it('documents every route, with bearer auth, 401 and 503 on every route the guard checks', async () => {
  const document = (await request(http).get(`/${API_DOCS_PATH}-json`).expect(200)).body as {
    paths: Record<string, Record<string, Operation>>;
    components: { securitySchemes: Record<string, { type: string; scheme: string }> };
  };
  expect(document.components.securitySchemes[BEARER_SCHEME]).toMatchObject({ type: 'http', scheme: 'bearer' });

  const routes = servedRoutes();
  // The sample app's own routes at least: a router that lists nothing would prove nothing.
  expect(routes).toEqual(
    expect.arrayContaining([
      { method: 'post', path: '/auth/login' },
      { method: 'get', path: '/me' },
    ]),
  );
  const seen: string[] = [];
  for (const route of routes) {
    const openApiPath = route.path.replace(/:(\w+)/g, '{$1}');
    const operation = document.paths[openApiPath]?.[route.method];
    const name = `${route.method.toUpperCase()} ${route.path}`;
    expect({ name, documented: operation !== undefined }).toEqual({ name, documented: true });
    if (await checked(route)) {
      expect({ name, security: operation.security }).toEqual({ name, security: [{ [BEARER_SCHEME]: [] }] });
      expect({ name, responses: Object.keys(operation.responses) }).toEqual({
        name,
        responses: expect.arrayContaining(['401', '503']),
      });
      seen.push(name);
    } else {
      // A public route asks for no token.
      expect({ name, security: operation.security ?? [] }).toEqual({ name, security: [] });
    }
  }
  expect(seen).toEqual(expect.arrayContaining(['GET /me', 'POST /auth/logout']));
  // Nothing documented that the app does not serve.
  const documented = Object.entries(document.paths).flatMap(([path, operations]) => Object.keys(operations).map((m) => `${m} ${path}`));
  expect(documented.sort()).toEqual(routes.map((r) => `${r.method} ${r.path.replace(/:(\w+)/g, '{$1}')}`).sort());
});

it('documents the health check and its 503', async () => {
  const document = (await request(http).get(`/${API_DOCS_PATH}-json`).expect(200)).body as {
    paths: Record<string, Record<string, Operation>>;
  };
  expect(Object.keys(document.paths['/health'].get.responses)).toEqual(expect.arrayContaining(['200', '503']));
});
