import type { QueryRunner } from 'typeorm';
import { HeldUntilCommit } from '../typeorm/held-until-commit.js';
import type { Announcement } from './announcement.js';

/**
 * Applies this instance's own writes made inside a transaction to its revocation cache once
 * that transaction commits, before any `await`: a check between the write's statement and
 * the commit read, and may have cached, the state before it, and the announcement that
 * corrects it may take up to `maxStalenessMs` to come back. A write rolled back (with its
 * transaction or savepoint) changed nothing, and needs no forgetting.
 */
export class PostCommitForgets extends HeldUntilCommit<Announcement> {
  /** @param forget drops what the cache knows about one announced token or subject. */
  constructor(private readonly forget: (announcement: Announcement) => void) {
    super();
  }

  /** Applies `announcement` again once `runner`'s current transaction commits. */
  add(runner: QueryRunner, announcement: Announcement): void {
    this.hold(runner, announcement);
  }

  protected committed(_runner: QueryRunner, announcements: Announcement[]): void {
    for (const announcement of announcements) this.forget(announcement);
  }
}
