import type { LoggerService } from '@nestjs/common';
import type { QueryRunner } from 'typeorm';
import { HeldUntilCommit } from '../typeorm/held-until-commit.js';

/** A log-out made inside a transaction with `repeatAfterCommit`, to be made again once it commits. */
interface PendingLogOut<Args> {
  subject: string;
  args: Args;
}

/** What {@link PostCommitLogOuts} does once a transaction with log-outs commits. */
export interface PostCommitActions<Args> {
  /**
   * Makes a log-out again on `runner` (the committed transaction's, so that it needs no
   * second connection), waiting at most `lockTimeoutMs` for any one lock. It must leave the
   * connection outside any transaction, whatever happens: its owner releases it next.
   */
  repeat(args: Args, runner: QueryRunner, lockTimeoutMs: number): Promise<unknown>;
}

/**
 * A TypeORM subscriber of transaction events that makes the log-outs made inside a
 * transaction with `repeatAfterCommit` again once it commits, on the same connection,
 * their lock waits bounded by one `lockBudgetMs` per commit. A failed repeat is logged,
 * never thrown: the transaction has committed. Savepoints are followed; a raw `COMMIT` is
 * not seen. (The revocation cache forgets the subject through `PostCommitForgets`.)
 * docs/internals.md ("Log-outs after the commit") says why each step is needed.
 *
 * @typeParam Args what `repeat` needs to make a log-out again.
 */
export class PostCommitLogOuts<Args> extends HeldUntilCommit<PendingLogOut<Args>> {
  /**
   * @param actions what to do after the commit.
   * @param logger where a failed repeat is reported; it is never thrown out of the commit.
   * @param lockBudgetMs how long after one commit its repeats may still wait for a lock.
   */
  constructor(
    private readonly actions: PostCommitActions<Args>,
    private readonly logger: LoggerService,
    private readonly lockBudgetMs: number,
  ) {
    super();
  }

  /**
   * Remembers a log-out of `subject` made in `runner`'s current transaction, to make it again
   * after the commit; repeated log-outs of one transaction with the same arguments, once.
   */
  add(runner: QueryRunner, subject: string, args: Args): void {
    this.hold(runner, { subject, args }, JSON.stringify(args));
  }

  protected committed(runner: QueryRunner, logOuts: Array<PendingLogOut<Args>>): Promise<void> {
    return this.holdingConnection(runner, this.repeatAll(logOuts, runner));
  }

  /**
   * Keeps `runner` from going back to the pool until `work` is done. TypeORM awaits its
   * commit subscribers together: when another one fails, `commitTransaction()` rejects at
   * once and the caller releases the runner while a repeat may be between its `BEGIN` and
   * `COMMIT`; the pool would then hand out a connection inside that transaction, and the
   * next borrower's statements would never commit.
   */
  private async holdingConnection(runner: QueryRunner, work: Promise<void>): Promise<void> {
    // Restored as the very method it was, so that the comparison below recognises it.
    // eslint-disable-next-line @typescript-eslint/unbound-method -- always called with runner as this
    const release = runner.release;
    runner.release = async () => {
      await work;
      return release.call(runner);
    };
    try {
      await work;
    } finally {
      if (runner.release !== release) runner.release = release;
    }
  }

  private async repeatAll(logOuts: Iterable<PendingLogOut<Args>>, runner: QueryRunner): Promise<void> {
    // One budget for the whole commit: several subjects must not wait several times over.
    const deadline = Date.now() + this.lockBudgetMs;
    for (const { subject, args } of logOuts) {
      try {
        // Past the deadline, still try: a repeat that finds no lock held waits for none.
        await this.actions.repeat(args, runner, Math.max(1, deadline - Date.now()));
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
