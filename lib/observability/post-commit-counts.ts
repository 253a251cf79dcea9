import type {
  EntitySubscriberInterface,
  QueryRunner,
  TransactionCommitEvent,
  TransactionRollbackEvent,
  TransactionStartEvent,
} from 'typeorm';

/** A count made inside a transaction, and the savepoint level it was made at (`0`: the level of the first one). */
interface PendingCount {
  record: () => void;
  depth: number;
}

/** What is pending on one query runner. */
interface RunnerState {
  depth: number;
  counts: PendingCount[];
}

/**
 * A TypeORM subscriber of transaction events that records counts made inside a transaction
 * once it commits, and drops them when it (or the savepoint they were made in) rolls back:
 * a revocation that rolled back revoked nothing and must not show in the metrics. A raw
 * `COMMIT` sent as SQL is not seen, and its counts are lost with the runner.
 */
export class PostCommitCounts implements EntitySubscriberInterface {
  private readonly pending = new WeakMap<QueryRunner, RunnerState>();

  /** Records `record()` once `runner`'s current transaction commits. */
  add(runner: QueryRunner, record: () => void): void {
    let state = this.pending.get(runner);
    if (!state) this.pending.set(runner, (state = { depth: 0, counts: [] }));
    state.counts.push({ record, depth: state.depth });
  }

  /** TypeORM: a transaction or a savepoint started. */
  afterTransactionStart({ queryRunner }: TransactionStartEvent): void {
    const state = this.pending.get(queryRunner);
    if (state) state.depth += 1;
  }

  /** TypeORM: the transaction committed, or a savepoint was released (its counts now stand with the enclosing level). */
  afterTransactionCommit({ queryRunner }: TransactionCommitEvent): void {
    const state = this.pending.get(queryRunner);
    if (!state) return;
    if (queryRunner.isTransactionActive) {
      state.depth -= 1;
      for (const count of state.counts) count.depth = Math.min(count.depth, state.depth);
      return;
    }
    this.pending.delete(queryRunner);
    for (const { record } of state.counts) record();
  }

  /** TypeORM: the transaction rolled back, or rolled back to a savepoint. */
  afterTransactionRollback({ queryRunner }: TransactionRollbackEvent): void {
    const state = this.pending.get(queryRunner);
    if (!state) return;
    if (!queryRunner.isTransactionActive) {
      this.pending.delete(queryRunner);
      return;
    }
    state.depth -= 1;
    state.counts = state.counts.filter((count) => count.depth <= state.depth);
  }
}
