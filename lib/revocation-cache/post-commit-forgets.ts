import type { EntitySubscriberInterface, QueryRunner, TransactionCommitEvent, TransactionRollbackEvent } from 'typeorm';
import type { Announcement } from './announcement.js';

/**
 * A TypeORM subscriber of transaction events that applies this instance's own writes made
 * inside a transaction to its revocation cache once that transaction commits, before any
 * `await`: a check between the write's statement and the commit read, and may have cached,
 * the state before it, and the announcement that corrects it may take up to
 * `maxStalenessMs` to come back. Forgetting more than needed is harmless, so savepoints are
 * not followed and a rollback simply drops what was pending.
 */
export class PostCommitForgets implements EntitySubscriberInterface {
  private readonly pending = new WeakMap<QueryRunner, Announcement[]>();

  /** @param forget drops what the cache knows about one announced token or subject. */
  constructor(private readonly forget: (announcement: Announcement) => void) {}

  /** Applies `announcement` again once `runner`'s current transaction commits. */
  add(runner: QueryRunner, announcement: Announcement): void {
    const pending = this.pending.get(runner);
    if (pending) pending.push(announcement);
    else this.pending.set(runner, [announcement]);
  }

  /** TypeORM: the transaction committed (or a savepoint was released, which changes nothing yet). */
  afterTransactionCommit({ queryRunner }: TransactionCommitEvent): void {
    if (queryRunner.isTransactionActive) return;
    const pending = this.pending.get(queryRunner);
    if (!pending) return;
    this.pending.delete(queryRunner);
    for (const announcement of pending) this.forget(announcement);
  }

  /** TypeORM: the transaction rolled back; its writes need no forgetting. */
  afterTransactionRollback({ queryRunner }: TransactionRollbackEvent): void {
    if (!queryRunner.isTransactionActive) this.pending.delete(queryRunner);
  }
}
