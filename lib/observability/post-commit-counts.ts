import type { QueryRunner } from 'typeorm';
import { HeldUntilCommit } from '../typeorm/held-until-commit.js';

/**
 * Records counts made inside a transaction once it commits, and drops them when it (or the
 * savepoint they were made in) rolls back: a revocation that rolled back revoked nothing
 * and must not show in the metrics.
 */
export class PostCommitCounts extends HeldUntilCommit<() => void> {
  /** Records `record()` once `runner`'s current transaction commits. */
  add(runner: QueryRunner, record: () => void): void {
    this.hold(runner, record);
  }

  protected committed(_runner: QueryRunner, records: Array<() => void>): void {
    for (const record of records) record();
  }
}
