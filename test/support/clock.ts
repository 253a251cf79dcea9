/**
 * Spins until the application clock has moved past `ms`, so that the next token is issued
 * strictly later than a log-out recorded at `ms` (its moment has millisecond precision).
 */
export async function clockPast(ms: number): Promise<void> {
  while (Date.now() <= ms) await new Promise((resolve) => setImmediate(resolve));
}
