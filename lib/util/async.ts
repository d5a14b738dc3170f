/**
 * Small async helpers: waiting without leaving a timer behind, and closing what may be closed already.
 *
 * @module
 */

/**
 * Waits `ms`, or less when `options.until` settles first (its rejection is passed on); never leaves a
 * timer behind.
 */
export async function delay(ms: number, options: { until?: Promise<unknown> } = {}): Promise<void> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const elapsed = new Promise<void>((resolve) => timer = setTimeout(resolve, ms));
  try {
    await (options.until ? Promise.race([elapsed, options.until]) : elapsed);
  } finally {
    clearTimeout(timer);
  }
}

/** Closes `resource`, ignoring that it may be closed already. */
export function closeQuietly(resource: { close(): void }): void {
  try {
    resource.close();
  } catch { /* already closed */ }
}
