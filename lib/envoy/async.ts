/**
 * Waiting, for the supervisor's polls and timeouts. Private to `lib/envoy` until a shared home for such
 * helpers exists.
 *
 * @module
 */

/** Waits `ms`, or less when `until` settles first; never leaves a timer behind. */
export async function delay(ms: number, until?: Promise<unknown>): Promise<void> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  try {
    await Promise.race([new Promise((r) => (timer = setTimeout(r, ms))), until ?? new Promise(() => {})]);
  } finally {
    clearTimeout(timer);
  }
}
