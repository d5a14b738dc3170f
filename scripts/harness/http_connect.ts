/**
 * A minimal HTTP CONNECT client (RFC 9110 §9.3.6): opens a TCP tunnel to `host:port` through an HTTP
 * proxy such as tailvoy's egress listener or tailscaled's `--outbound-http-proxy-listen`.
 *
 * @module
 */

/** Largest response head read from the proxy. */
const MAX_HEAD = 16 * 1024;

/**
 * Opens a TCP connection to `host:port` through the HTTP proxy at `proxy` (`127.0.0.1:PORT`). Rejects
 * with the proxy's status line when it does not answer 2xx. The caller speaks first on the tunnel: bytes
 * after the proxy's head are an error.
 */
export async function httpConnect(
  proxy: { hostname: string; port: number },
  target: { host: string; port: number },
): Promise<Deno.TcpConn> {
  const authority = target.host.includes(":")
    ? `[${target.host}]:${target.port}`
    : `${target.host}:${target.port}`;
  const conn = await Deno.connect({ hostname: proxy.hostname, port: proxy.port });
  try {
    await conn.write(new TextEncoder().encode(`CONNECT ${authority} HTTP/1.1\r\nHost: ${authority}\r\n\r\n`));
    const buf = new Uint8Array(MAX_HEAD);
    let got = 0;
    let end = -1;
    while (end < 0) {
      if (got === buf.length) {
        throw new Error(`HTTP proxy's CONNECT answer has no end within ${MAX_HEAD} bytes`);
      }
      const n = await conn.read(buf.subarray(got));
      if (n === null) throw new Error(`HTTP proxy closed the connection after ${got} bytes of its answer`);
      got += n;
      end = new TextDecoder().decode(buf.subarray(0, got)).indexOf("\r\n\r\n");
    }
    const head = new TextDecoder().decode(buf.subarray(0, end));
    const status = head.split("\r\n")[0];
    if (!/^HTTP\/1\.[01] 2\d\d/.test(status)) throw new Error(`CONNECT ${authority} failed: ${status}`);
    if (got > end + 4) throw new Error(`HTTP proxy sent ${got - end - 4} bytes after its CONNECT answer`);
    return conn;
  } catch (err) {
    conn.close();
    throw err;
  }
}
