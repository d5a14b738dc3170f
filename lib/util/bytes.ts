/**
 * Byte helpers: joining chunks, writing a whole buffer to a connection, a byte in hex for messages.
 *
 * @module
 */

/** The chunks one after another in a new array. */
export function concat(...chunks: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(chunks.reduce((n, c) => n + c.length, 0));
  let off = 0;
  for (const c of chunks) {
    out.set(c, off);
    off += c.length;
  }
  return out;
}

/** Writes all of `bytes` to `conn` (one `write` may take only part of them). */
export async function writeAll(
  conn: { write(p: Uint8Array): Promise<number> },
  bytes: Uint8Array,
): Promise<void> {
  let off = 0;
  while (off < bytes.length) off += await conn.write(bytes.subarray(off));
}

/** A byte as two lower-case hex digits (`0a`), for error messages. */
export function hex(n: number): string {
  return n.toString(16).padStart(2, "0");
}
