import type {
  EntitySubscriberInterface,
  QueryRunner,
  TransactionCommitEvent,
  TransactionRollbackEvent,
  TransactionStartEvent,
} from 'typeorm';

/** An item held on a query runner, and the savepoint level it was added at. */
interface HeldItem<Item> {
  item: Item;
  key?: string;
  /**
   * Counted from the level the runner's first held item was added at (`0`). Rolling back to
   * a savepoint below it drops the item.
   */
  depth: number;
}

/** What is held on one query runner. */
interface RunnerState<Item> {
  /** The current savepoint level, on the same scale as {@link HeldItem.depth}. */
  depth: number;
  items: Array<HeldItem<Item>>;
}

/**
 * A TypeORM subscriber of transaction events that holds what the library did inside a
 * caller's transaction (a revocation to count, a cached answer to forget, a log-out to make
 * again) until that transaction commits, and hands it to {@link committed} then. What was
 * added inside a savepoint that rolls back, or a transaction that rolls back, is dropped:
 * it never happened. A released savepoint's items stay, with the enclosing level. A raw
 * `COMMIT` sent as SQL is not seen, and what was held is lost with the runner.
 *
 * @typeParam Item what a subclass holds.
 */
export abstract class HeldUntilCommit<Item> implements EntitySubscriberInterface {
  private readonly held = new WeakMap<QueryRunner, RunnerState<Item>>();

  /**
   * Holds `item` until `runner`'s current transaction commits.
   *
   * @param key when given, an item is held only if none of the same key is: the one held is
   *   at the same savepoint level or an enclosing one, so it covers the new one.
   */
  protected hold(runner: QueryRunner, item: Item, key?: string): void {
    let state = this.held.get(runner);
    if (!state) this.held.set(runner, (state = { depth: 0, items: [] }));
    if (key !== undefined && state.items.some((held) => held.key === key)) return;
    state.items.push({ item, key, depth: state.depth });
  }

  /** What to do with the items of a transaction that committed, in the order they were held. */
  protected abstract committed(runner: QueryRunner, items: Item[]): Promise<void> | void;

  /** TypeORM: a transaction or a savepoint started. */
  afterTransactionStart({ queryRunner }: TransactionStartEvent): void {
    const state = this.held.get(queryRunner);
    if (state) state.depth += 1;
  }

  /** TypeORM: the transaction committed, or a savepoint was released. */
  afterTransactionCommit({ queryRunner }: TransactionCommitEvent): Promise<void> | void {
    const state = this.held.get(queryRunner);
    if (!state) return;
    if (queryRunner.isTransactionActive) {
      state.depth -= 1;
      for (const held of state.items) held.depth = Math.min(held.depth, state.depth);
      return;
    }
    this.held.delete(queryRunner);
    if (state.items.length > 0)
      return this.committed(
        queryRunner,
        state.items.map((held) => held.item),
      );
  }

  /** TypeORM: the transaction rolled back, or rolled back to a savepoint. */
  afterTransactionRollback({ queryRunner }: TransactionRollbackEvent): void {
    const state = this.held.get(queryRunner);
    if (!state) return;
    if (!queryRunner.isTransactionActive) {
      this.held.delete(queryRunner);
      return;
    }
    state.depth -= 1;
    state.items = state.items.filter((held) => held.depth <= state.depth);
  }
}
