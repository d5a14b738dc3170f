/**
 * Test clients: read what a connection answers (or `null` when the proxy refused it), and a TLS client
 * through a tailnet node.
 *
 * @module
 */

import { closeQuietly } from "../../lib/util/async.ts";
import { writeAll } from "../../lib/util/bytes.ts";
import type { Tailnet } from "./tailnet.ts";

const enc = new TextEncoder();
const dec = new TextDecoder();

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

/** A connected loopback TCP pair for `fn`; both ends are closed afterwards, whatever happened. */
export async function withPair(
  fn: (client: Deno.TcpConn, server: Deno.TcpConn) => Promise<void>,
): Promise<void> {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const accepted = listener.accept();
  const client = await Deno.connect({ hostname: "127.0.0.1", port: listener.addr.port });
  const server = await accepted;
  listener.close();
  try {
    await fn(client, server);
  } finally {
    closeQuietly(client);
    closeQuietly(server);
  }
}

/** A TLS backend (for passthrough) that says `backend NAME` after the handshake and closes. */
export function tlsBackend(
  tls: { cert: string; key: string },
  name: string,
): { port: number; close: () => void } {
  const l = Deno.listenTls({ hostname: "127.0.0.1", port: 0, cert: tls.cert, key: tls.key });
  (async () => {
    for await (const c of l) {
      (async () => {
        try {
          await c.handshake();
          await c.write(new TextEncoder().encode(`backend ${name}`));
        } catch { /* client went away */ }
        closeQuietly(c);
      })();
    }
  })();
  return { port: (l.addr as Deno.NetAddr).port, close: () => l.close() };
}

/** An HTTP response as read off the wire. */
export interface HttpResult {
  status: number;
  headers: Record<string, string>;
  body: string;
}

/** One HTTP/1.1 request on `conn` (closed afterwards). */
export async function http(
  conn: Deno.Conn,
  path: string,
  options: { method?: string; headers?: Record<string, string>; prefix?: Uint8Array } = {},
): Promise<HttpResult> {
  const head = [`${options.method ?? "GET"} ${path} HTTP/1.1`, "Host: app.box.test", "Connection: close"];
  for (const [k, v] of Object.entries(options.headers ?? {})) head.push(`${k}: ${v}`);
  const req = enc.encode(head.join("\r\n") + "\r\n\r\n");
  await conn.write(options.prefix ? new Uint8Array([...options.prefix, ...req]) : req);
  let raw = "";
  const buf = new Uint8Array(16 * 1024);
  try {
    while (true) {
      const n = await conn.read(buf);
      if (n === null) break;
      raw += dec.decode(buf.subarray(0, n));
    }
  } catch { /* reset after the response */ }
  closeQuietly(conn);
  const [headText, ...rest] = raw.split("\r\n\r\n");
  const [statusLine, ...lines] = headText.split("\r\n");
  const headers = Object.fromEntries(lines.map((l) => {
    const i = l.indexOf(":");
    return [l.slice(0, i).toLowerCase(), l.slice(i + 1).trim()];
  }));
  let body = rest.join("\r\n\r\n");
  if (headers["transfer-encoding"] === "chunked") {
    let out = "";
    let text = body;
    while (true) {
      const nl = text.indexOf("\r\n");
      const size = parseInt(text.slice(0, nl), 16);
      if (!size) break;
      out += text.slice(nl + 2, nl + 2 + size);
      text = text.slice(nl + 2 + size + 2);
    }
    body = out;
  }
  return { status: Number(statusLine?.split(" ")[1] ?? 0), headers, body };
}

/** A backend that answers with the request it got: path and headers, as JSON. */
export function echoBackend(): { port: number; close: () => Promise<void> } {
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen: () => {} }, (req) =>
    Response.json({
      path: new URL(req.url).pathname,
      headers: Object.fromEntries(req.headers),
    }));
  return { port: server.addr.port, close: () => server.shutdown() };
}

/** Copies `from` to `to` until EOF, then half-closes `to`. */
export async function pump(from: Deno.Conn, to: Deno.Conn): Promise<void> {
  const buf = new Uint8Array(32 * 1024);
  try {
    while (true) {
      const n = await from.read(buf);
      if (n === null) break;
      await writeAll(to, buf.subarray(0, n));
    }
    await to.closeWrite();
  } catch { /* reset or closed */ }
}

/**
 * A local listener on 127.0.0.1 whose connections are piped to `host:port` as seen from tailnet node
 * `from`: for clients (grpc-js, WebSocket) that cannot dial through SOCKS5 themselves.
 */
export function bridge(
  tailnet: Tailnet,
  from: string,
  host: string,
  port: number,
): { port: number; close: () => void } {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const open = new Set<Deno.Conn>();
  (async () => {
    for await (const local of listener) {
      (async () => {
        open.add(local);
        let remote: Deno.Conn | undefined;
        try {
          remote = await tailnet.dial(from, host, port);
          open.add(remote);
          await Promise.all([pump(local, remote), pump(remote, local)]);
        } catch { /* dial failed */ }
        for (const c of [local, remote]) {
          if (!c) continue;
          closeQuietly(c);
          open.delete(c);
        }
      })();
    }
  })().catch(() => {});
  return {
    port: listener.addr.port,
    close: () => {
      closeQuietly(listener);
      for (const c of open) closeQuietly(c);
    },
  };
}
