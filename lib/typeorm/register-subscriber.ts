import type { DataSource, EntitySubscriberInterface } from 'typeorm';

/** The subscribers this library registered on each data source. */
const registered = new WeakMap<DataSource, Set<EntitySubscriberInterface>>();

/**
 * Registers a TypeORM subscriber instance on `dataSource` for as long as the caller keeps
 * it, re-initialisations included, and returns the function that removes it.
 *
 * `DataSource.initialize()` rebuilds its metadata and, with it, assigns a new `subscribers`
 * array made from `options.subscribers` only: after `destroy()` and `initialize()` a
 * subscriber pushed by hand would be gone, and with it, silently, the log-out on password
 * change. So `subscribers` becomes an accessor on that data source whose setter adds the
 * registered subscribers to every array TypeORM assigns; once the last one is removed it is
 * a plain property again.
 */
export function registerSubscriber(dataSource: DataSource, subscriber: EntitySubscriberInterface): () => void {
  let mine = registered.get(dataSource);
  if (!mine) {
    const kept = (mine = new Set());
    registered.set(dataSource, kept);
    let current: EntitySubscriberInterface[] = dataSource.subscribers;
    Object.defineProperty(dataSource, 'subscribers', {
      configurable: true,
      enumerable: true,
      get: () => current,
      set: (next: EntitySubscriberInterface[]) => {
        current = next;
        for (const one of kept) if (!next.includes(one)) next.push(one);
      },
    });
  }
  mine.add(subscriber);
  dataSource.subscribers.push(subscriber);
  return () => unregister(dataSource, subscriber);
}

function unregister(dataSource: DataSource, subscriber: EntitySubscriberInterface): void {
  const mine = registered.get(dataSource);
  if (!mine?.delete(subscriber)) return;
  const subscribers = dataSource.subscribers;
  const index = subscribers.indexOf(subscriber);
  if (index >= 0) subscribers.splice(index, 1);
  if (mine.size > 0) return;
  registered.delete(dataSource);
  Object.defineProperty(dataSource, 'subscribers', { configurable: true, enumerable: true, writable: true, value: subscribers });
}
