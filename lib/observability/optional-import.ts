import { createRequire } from 'node:module';

const resolver = createRequire(import.meta.url);

/**
 * Whether an optional peer dependency can be loaded from this package, answered without
 * loading it: module wiring is synchronous, and an application without the peer must not
 * pay for it (or fail) at import time.
 */
export function peerInstalled(name: string): boolean {
  try {
    resolver.resolve(`${name}/package.json`);
    return true;
  } catch {
    return false;
  }
}

/**
 * Imports an optional peer dependency, or `undefined` when it is not installed. Any
 * other failure (a broken install, an error in the package itself) is thrown: a peer
 * that is there but cannot load must not be silently ignored.
 */
export async function importOptional<Module>(name: string): Promise<Module | undefined> {
  try {
    return (await import(name)) as Module;
  } catch (error) {
    const { code, message } = error as { code?: string; message?: string };
    if ((code === 'ERR_MODULE_NOT_FOUND' || code === 'MODULE_NOT_FOUND') && message?.includes(`'${name}'`)) return undefined;
    throw error;
  }
}
