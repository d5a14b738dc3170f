/**
 * The L4 bench's backend, in its own process: listens on 127.0.0.1 (an ephemeral port, printed as
 * `{"port":N}` on stdout) and serves the requests of {@link REQ} — a sink that discards a announced
 * number of bytes and acknowledges them, a one-byte ping, a hold for the open-connections row, and an
 * echo for round trips on an open connection.
 * Runs until killed.
 *
 * @module
 */

import { closeQuietly } from "../../lib/util/async.ts";
import { writeAll } from "../../lib/util/bytes.ts";
import { REQ } from "./l4_protocol.ts";

const SINK_BUFFER = 256 * 1024;
const HEADER = 9; // request byte + u64 length

async function serve(conn: Deno.TcpConn): Promise<void> {
  conn.setNoDelay(true);
  // Small first read: held connections (10k of them) must not each pin a large buffer.
  const first = new Uint8Array(HEADER);
  let n = await conn.read(first);
  if (n === null) return;
  if (first[0] === REQ.ping) {
    await writeAll(conn, new Uint8Array([0x70]));
    return;
  }
  if (first[0] === REQ.hold) {
    await writeAll(conn, new Uint8Array([0x68]));
    while ((n = await conn.read(first)) !== null) { /* discard until the caller closes */ }
    return;
  }
  if (first[0] === REQ.echo) {
    // Bytes after the request byte in the same read are echoed too.
    if (n > 1) await writeAll(conn, first.subarray(1, n));
    const buf = new Uint8Array(4096);
    while ((n = await conn.read(buf)) !== null) await writeAll(conn, buf.subarray(0, n));
    return;
  }
  if (first[0] !== REQ.sink) throw new Error(`unknown request byte ${first[0]}`);
  let got = n;
  while (got < HEADER) {
    const m = await conn.read(first.subarray(got));
    if (m === null) return;
    got += m;
  }
  const length = Number(new DataView(first.buffer).getBigUint64(1));
  const buf = new Uint8Array(SINK_BUFFER);
  let left = length;
  while (left > 0) {
    const m = await conn.read(buf.subarray(0, Math.min(buf.length, left)));
    if (m === null) throw new Error(`EOF with ${left} bytes still announced`);
    left -= m;
  }
  await writeAll(conn, new Uint8Array([0x6b]));
  // The caller closes first (see ConnectSpec.callerCloses: TIME_WAIT stays on the dialing side).
  while (await conn.read(buf) !== null) { /* nothing more expected */ }
}

if (import.meta.main) {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  console.log(JSON.stringify({ port: listener.addr.port }));
  for await (const conn of listener) {
    serve(conn).catch(() => {}).finally(() => closeQuietly(conn));
  }
}
