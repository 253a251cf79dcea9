import type { INestApplication } from '@nestjs/common';
import request from 'supertest';

/** The guard's answer to a bearer token on `GET /guarded`: its status and, for a refusal, its reason. */
export async function guardAnswer(app: INestApplication, token: string): Promise<{ status: number; message?: string }> {
  const res = await request(app.getHttpServer()).get('/guarded').set('Authorization', `Bearer ${token}`);
  return res.status === 200 ? { status: 200 } : { status: res.status, message: res.body.message };
}
