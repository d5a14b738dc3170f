/**
 * TLS test helpers shared by tests and benches.
 *
 * @module
 */

/**
 * Re-frames a hello sent as one record into records of the given body sizes (then records of the last
 * size until the end), keeping the record version. Legal TLS: one handshake message may span records.
 */
export function reframe(hello: Uint8Array, sizes: number[]): Uint8Array {
  const recordLength = hello[3] << 8 | hello[4];
  if (hello[0] !== 22 || recordLength + 5 !== hello.length) throw new Error("Expected one handshake record");
  const body = hello.subarray(5);
  const out: number[] = [];
  let at = 0;
  for (let i = 0; at < body.length; i++) {
    const size = sizes[Math.min(i, sizes.length - 1)];
    const part = body.subarray(at, at + size);
    out.push(22, hello[1], hello[2], part.length >> 8, part.length & 0xff, ...part);
    at += part.length;
  }
  return new Uint8Array(out);
}
