import { inspect } from 'node:util';
import { TokenResourceConfigError } from '../token-resource.exceptions.js';
import { isPurpose, MAX_PURPOSE_BYTES } from '../validation/token-values.js';

/** Throws the configuration error every option check ends in; its message names the package. */
export function fail(message: string, cause?: unknown): never {
  throw new TokenResourceConfigError(`nestjs-token-resource: ${message}`, cause === undefined ? undefined : { cause });
}

/** An option's value as a message shows it: `[object Object]` would say nothing. */
export function shown(value: unknown): string {
  return typeof value === 'object' || typeof value === 'function' ? inspect(value, { depth: 1 }) : `${value as string}`;
}

function isNumber(value: unknown): value is number {
  return typeof value === 'number' && Number.isFinite(value);
}

/** A number above zero (a whole one with `integer`), or `undefined` when not given. */
export function positive(value: unknown, name: string, integer = false): number | undefined {
  if (value === undefined) return undefined;
  if (!isNumber(value) || value <= 0 || (integer && !Number.isInteger(value))) {
    fail(`${name} must be a positive ${integer ? 'integer' : 'number'}, got ${shown(value)}.`);
  }
  return value;
}

/** A whole number of at least zero, or `undefined` when not given. */
export function wholeNumber(value: unknown, name: string): number | undefined {
  if (value === undefined) return undefined;
  if (!isNumber(value) || value < 0 || !Number.isInteger(value)) fail(`${name} must be a whole number >= 0, got ${shown(value)}.`);
  return value;
}

/** A boolean, or `undefined` when not given. */
export function flag(value: unknown, name: string): boolean | undefined {
  if (value === undefined) return undefined;
  if (typeof value !== 'boolean') fail(`${name} must be true or false, got ${shown(value)}.`);
  return value;
}

/** A number of at least `minimum`, or `undefined` when not given. */
export function atLeast(value: unknown, minimum: number, name: string): number | undefined {
  if (value === undefined) return undefined;
  if (!isNumber(value) || value < minimum) fail(`${name} must be a number >= ${minimum}, got ${shown(value)}.`);
  return value;
}

/** A number from `minimum` to `maximum`, or `undefined` when not given. */
export function between(value: unknown, minimum: number, maximum: number, name: string): number | undefined {
  if (value === undefined) return undefined;
  if (!isNumber(value) || value < minimum || value > maximum) {
    fail(`${name} must be a number from ${minimum} to ${maximum}, got ${shown(value)}.`);
  }
  return value;
}

/** A list of purposes, or `undefined` when not given. */
export function purposeList(value: unknown, name: string): string[] | undefined {
  if (value === undefined) return undefined;
  if (!Array.isArray(value) || value.some((purpose) => !isPurpose(purpose))) {
    fail(`${name} must be an array of purposes: non-empty, well-formed strings without NUL of at most ${MAX_PURPOSE_BYTES} bytes.`);
  }
  return value as string[];
}
