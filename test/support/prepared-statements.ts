import type { ClientBase } from 'pg';

/**
 * How many times the prepared statements whose names start with `name` have run on the
 * connection of `client`: PostgreSQL counts the executions of each one of a session
 * (`pg_prepared_statements`), so a pool of one connection shows every statement it sent.
 */
export async function preparedStatementRuns(client: ClientBase, name: string): Promise<number> {
  const { rows } = await client.query<{ n: number }>(
    'SELECT coalesce(sum(generic_plans + custom_plans), 0)::int AS n FROM pg_prepared_statements WHERE starts_with(name, $1)',
    [name],
  );
  return rows[0].n;
}
