/**
 * Turning whatever was thrown into text for a log line or an error message.
 *
 * @module
 */

/** The message of `err` when it is an `Error`, otherwise `err` as text. */
export function errorMessage(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
