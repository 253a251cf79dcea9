import { BadRequestException, Injectable, type PipeTransform } from '@nestjs/common';

/** Turns an untrusted request body into a typed value, or throws `BadRequestException`. */
export type BodyParser<T> = (body: Record<string, unknown>) => T;

/**
 * Validates a request body with a {@link BodyParser}: `@Body(new ParseBodyPipe(parseX))`.
 * A missing body counts as `{}`; anything but a JSON object, and any field the parser does
 * not know, is a `400` that names the problem.
 */
@Injectable()
export class ParseBodyPipe<T> implements PipeTransform<unknown, T> {
  constructor(
    private readonly parse: BodyParser<T>,
    private readonly fields: readonly string[],
  ) {}

  transform(value: unknown): T {
    const body = value ?? {};
    if (typeof body !== 'object' || Array.isArray(body)) throw new BadRequestException('the body must be a JSON object');
    const unknown = Object.keys(body).filter((key) => !this.fields.includes(key));
    if (unknown.length > 0) throw new BadRequestException(`unexpected field ${unknown.map((key) => JSON.stringify(key)).join(', ')}`);
    return this.parse(body as Record<string, unknown>);
  }
}

/** A required string field of `min`..`max` characters (not trimmed: passwords keep their spaces). */
export function stringField(body: Record<string, unknown>, name: string, min = 1, max = 1024): string {
  const value = body[name];
  if (value === undefined || value === null) throw new BadRequestException(`${name} is required`);
  if (typeof value !== 'string') throw new BadRequestException(`${name} must be a string`);
  if (value.length < min || value.length > max) {
    throw new BadRequestException(
      min > 1 ? `${name} must be ${min} to ${max} characters long` : `${name} must be 1 to ${max} characters long`,
    );
  }
  return value;
}

/** A required e-mail address, trimmed and lower-cased. */
export function emailField(body: Record<string, unknown>, name = 'email'): string {
  const email = stringField(body, name, 3, 254).trim().toLowerCase();
  if (!/^[^\s@]+@[^\s@]+\.[^\s@]+$/.test(email)) throw new BadRequestException(`${name} must be an e-mail address`);
  return email;
}

/** An optional boolean field (`fallback` when absent). */
export function optionalBooleanField(body: Record<string, unknown>, name: string, fallback: boolean): boolean {
  const value = body[name];
  if (value === undefined) return fallback;
  if (typeof value !== 'boolean') throw new BadRequestException(`${name} must be true or false`);
  return value;
}
