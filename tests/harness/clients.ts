/**
 * Test clients: read what a connection answers (or `null` when the proxy refused it), and a TLS client
 * through a tailnet node.
 *
 * @module
 */

import type { Tailnet } from "./tailnet.ts";

const dec = new TextDecoder();

function closeQuietly(conn: Deno.Conn): void {
  try {
    conn.close();
  } catch { /* closed */ }
}

/** The first chunk `conn` answers, or `null` when it is closed or reset first (a refusal). */
export async function readSome(conn: Deno.Conn, timeoutMs = 5000): Promise<string | null> {
  const buf = new Uint8Array(4096);
  const timer = setTimeout(() => closeQuietly(conn), timeoutMs);
  try {
    const n = await conn.read(buf);
    return n === null ? null : dec.decode(buf.subarray(0, n));
  } catch {
    return null; // reset or closed: refused
  } finally {
    clearTimeout(timer);
  }
}

/**
 * Opens TLS with `sni` from node `from` to the gateway's `port` and returns the first chunk the server
 * sends, or `null` when the handshake is cut off (refused).
 */
export async function tlsVia(
  tailnet: Tailnet,
  from: string,
  port: number,
  sni: string,
  caCert: string,
): Promise<string | null> {
  const raw = await tailnet.dial(from, tailnet.node("gw").ipv4, port);
  try {
    const tls = await Deno.startTls(raw, { hostname: sni, caCerts: [caCert] });
    try {
      return await readSome(tls);
    } finally {
      closeQuietly(tls);
    }
  } catch {
    closeQuietly(raw);
    return null; // handshake cut off: refused
  }
}
