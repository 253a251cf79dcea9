import type { LoggerService } from '@nestjs/common';
import type {
  EntityManager,
  EntitySubscriberInterface,
  QueryRunner,
  TransactionCommitEvent,
  TransactionRollbackEvent,
  TransactionStartEvent,
} from 'typeorm';

/** A log-out made inside a transaction, to be made again once that transaction commits. */
interface PendingLogOut<Args> {
  subject: string;
  args: Args;
  /**
   * The savepoint level it was made at, counted from the level the first pending log-out
   * of its query runner was made at (`0`). Rolling back to a savepoint below it undoes it.
   */
  depth: number;
}

/** What is pending on one query runner. */
interface RunnerState<Args> {
  /** The current savepoint level, on the same scale as {@link PendingLogOut.depth}. */
  depth: number;
  /** By the log-out's arguments, so that repeated log-outs of one transaction are made again once. */
  logOuts: Map<string, PendingLogOut<Args>>;
}

/**
 * Repeats log-outs made inside a transaction once it commits, in autocommit on the same
 * connection. A log-out inside a transaction records its moment when its statement runs,
 * but takes effect only at the commit: a token issued in between, for example by a login
 * on another connection that still read the old password hash, is newer than the moment
 * and would survive. Made again after the commit, the log-out records a moment after it.
 *
 * A TypeORM subscriber of transaction events only, on the token table's data source. It
 * follows savepoints (`manager.transaction()` inside a transaction): a log-out whose
 * savepoint is rolled back is forgotten, one whose savepoint is released waits for the
 * enclosing transaction. Transactions committed or rolled back without TypeORM (raw
 * `COMMIT`) are not seen.
 *
 * @typeParam Args what `repeat` needs to make a log-out again.
 */
export class PostCommitLogOuts<Args> implements EntitySubscriberInterface {
  private readonly pending = new WeakMap<QueryRunner, RunnerState<Args>>();

  /**
   * @param repeat makes a log-out again through `manager` (the committed transaction's,
   *   now in autocommit), so that it needs no second connection from the pool.
   * @param logger where a failed repeat is reported; it is never thrown out of the commit.
   */
  constructor(
    private readonly repeat: (args: Args, manager: EntityManager) => Promise<unknown>,
    private readonly logger: LoggerService,
  ) {}

  /** Remembers a log-out of `subject` made in `runner`'s current transaction. */
  add(runner: QueryRunner, subject: string, args: Args): void {
    let state = this.pending.get(runner);
    if (!state) this.pending.set(runner, state = { depth: 0, logOuts: new Map() });
    const key = JSON.stringify(args);
    // One made earlier is at the same savepoint level or an enclosing one: it covers this one.
    if (!state.logOuts.has(key)) state.logOuts.set(key, { subject, args, depth: state.depth });
  }

  /** TypeORM: a transaction or a savepoint started. */
  afterTransactionStart({ queryRunner }: TransactionStartEvent): void {
    const state = this.pending.get(queryRunner);
    if (state) state.depth += 1;
  }

  /** TypeORM: the transaction committed (or a savepoint was released). */
  afterTransactionCommit({ queryRunner, manager }: TransactionCommitEvent): Promise<void> | void {
    const state = this.pending.get(queryRunner);
    if (!state) return;
    if (queryRunner.isTransactionActive) {
      // A savepoint was released: its log-outs now stand or fall with the enclosing level.
      state.depth -= 1;
      for (const logOut of state.logOuts.values()) logOut.depth = Math.min(logOut.depth, state.depth);
      return;
    }
    this.pending.delete(queryRunner);
    return this.repeatAll(state.logOuts.values(), manager);
  }

  /** TypeORM: the transaction rolled back (or rolled back to a savepoint). */
  afterTransactionRollback({ queryRunner }: TransactionRollbackEvent): void {
    const state = this.pending.get(queryRunner);
    if (!state) return;
    if (!queryRunner.isTransactionActive) {
      this.pending.delete(queryRunner);
      return;
    }
    state.depth -= 1;
    for (const [key, logOut] of state.logOuts) {
      if (logOut.depth > state.depth) state.logOuts.delete(key);
    }
  }

  private async repeatAll(logOuts: Iterable<PendingLogOut<Args>>, manager: EntityManager): Promise<void> {
    for (const { subject, args } of logOuts) {
      try {
        await this.repeat(args, manager);
      } catch (error) {
        // The transaction has committed: throwing would only make its caller believe it
        // failed. The log-out it made stands; only the window up to the commit is open.
        this.logger.error(
          `Could not log subject '${subject}' out again after the transaction that logged it out committed: tokens issued while that transaction was pending (for example by a login that read the old password) may still be valid. Log the subject out everywhere again. ${(error as Error)?.message ?? error}`,
          (error as Error)?.stack,
        );
      }
    }
  }
}
