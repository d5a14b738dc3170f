/**
 * A minimal SOCKS5 client (RFC 1928, no auth or RFC 1929 username/password), used to open TCP
 * connections through tailscaled's `--socks5-server` listener or tailvoy's egress proxy.
 *
 * @module
 */

const REPLIES: Record<number, string> = {
  1: "general failure",
  2: "connection not allowed by ruleset",
  3: "network unreachable",
  4: "host unreachable",
  5: "connection refused",
  6: "TTL expired",
  7: "command not supported",
  8: "address type not supported",
};

async function readExactly(conn: Deno.Conn, n: number): Promise<Uint8Array> {
  const buf = new Uint8Array(n);
  let off = 0;
  while (off < n) {
    const got = await conn.read(buf.subarray(off));
    if (got === null) throw new Error(`SOCKS5 proxy closed the connection after ${off} of ${n} bytes`);
    off += got;
  }
  return buf;
}

function encodeAddress(host: string, port: number): Uint8Array {
  const v4 = /^(\d+)\.(\d+)\.(\d+)\.(\d+)$/.exec(host);
  let head: number[];
  if (v4) {
    head = [1, ...v4.slice(1).map(Number)];
  } else if (host.includes(":")) {
    head = [4, ...expandIPv6(host)];
  } else {
    const name = new TextEncoder().encode(host);
    head = [3, name.length, ...name];
  }
  return new Uint8Array([...head, port >> 8, port & 0xff]);
}

function expandIPv6(host: string): number[] {
  const [l, r = ""] = host.replace(/^\[|\]$/g, "").split("::");
  const left = l ? l.split(":") : [];
  const right = r ? r.split(":") : [];
  const groups = host.includes("::")
    ? [...left, ...Array(8 - left.length - right.length).fill("0"), ...right]
    : left;
  return groups.flatMap((g) => {
    const v = parseInt(g, 16);
    return [v >> 8, v & 0xff];
  });
}

/**
 * Opens a TCP connection to `host:port` through the SOCKS5 proxy at `proxy` (`127.0.0.1:PORT`).
 * Rejects with the proxy's reason when it cannot connect.
 */
export async function socks5Connect(
  proxy: { hostname: string; port: number },
  target: { host: string; port: number },
  options: { user?: string; password?: string } = {},
): Promise<Deno.TcpConn> {
  const conn = await Deno.connect({ hostname: proxy.hostname, port: proxy.port });
  try {
    const auth = options.user !== undefined;
    await conn.write(new Uint8Array([5, 1, auth ? 2 : 0]));
    const hello = await readExactly(conn, 2);
    if (hello[0] !== 5 || hello[1] !== (auth ? 2 : 0)) {
      throw new Error(`SOCKS5 proxy refused ${auth ? "username/password" : "no-auth"} (reply ${hello})`);
    }
    if (auth) {
      // RFC 1929: VER 1, ULEN, UNAME, PLEN, PASSWD; the answer's status 0 is success.
      const user = new TextEncoder().encode(options.user);
      const password = new TextEncoder().encode(options.password ?? "");
      await conn.write(new Uint8Array([1, user.length, ...user, password.length, ...password]));
      const status = await readExactly(conn, 2);
      if (status[1] !== 0) throw new Error(`SOCKS5 authentication failed (status ${status[1]})`);
    }
    await conn.write(new Uint8Array([5, 1, 0, ...encodeAddress(target.host, target.port)]));
    const head = await readExactly(conn, 4);
    if (head[1] !== 0) {
      throw new Error(
        `SOCKS5 connect to ${target.host}:${target.port} failed: ${REPLIES[head[1]] ?? `reply ${head[1]}`}`,
      );
    }
    const addrLen = head[3] === 1 ? 4 : head[3] === 4 ? 16 : (await readExactly(conn, 1))[0];
    await readExactly(conn, addrLen + 2);
    return conn;
  } catch (err) {
    conn.close();
    throw err;
  }
}

/** A SOCKS5 UDP association: datagrams to and from tailnet peers through the proxy. */
export interface UdpAssociation {
  /** Sends `data` to `host:port` through the proxy. */
  send(host: string, port: number, data: Uint8Array): Promise<void>;
  /** The next datagram from any peer, or `undefined` after `timeoutMs`. */
  receive(timeoutMs: number): Promise<Uint8Array | undefined>;
  /** Ends the association (closes the control connection and the local socket). */
  close(): void;
}

/** Opens a UDP ASSOCIATE session with the SOCKS5 proxy at `proxy`. */
export async function socks5UdpAssociate(proxy: { hostname: string; port: number }): Promise<UdpAssociation> {
  const dgram = await import("node:dgram");
  const sock = dgram.createSocket("udp4");
  await new Promise<void>((resolve) => sock.bind(0, "127.0.0.1", resolve));
  const local = sock.address();
  const control = await Deno.connect({ hostname: proxy.hostname, port: proxy.port });
  const queue: Uint8Array[] = [];
  let waiter: ((d: Uint8Array) => void) | undefined;
  try {
    await control.write(new Uint8Array([5, 1, 0]));
    const hello = await readExactly(control, 2);
    if (hello[1] !== 0) throw new Error(`SOCKS5 proxy refused no-auth (reply ${hello})`);
    await control.write(new Uint8Array([5, 3, 0, ...encodeAddress(local.address, local.port)]));
    const head = await readExactly(control, 4);
    if (head[1] !== 0) {
      throw new Error(`SOCKS5 UDP associate failed: ${REPLIES[head[1]] ?? `reply ${head[1]}`}`);
    }
    const addrLen = head[3] === 1 ? 4 : head[3] === 4 ? 16 : (await readExactly(control, 1))[0];
    const bound = await readExactly(control, addrLen + 2);
    const relayPort = (bound[addrLen] << 8) | bound[addrLen + 1];
    sock.on("message", (msg: Uint8Array) => {
      // Reply datagrams carry the same header as requests: RSV RSV FRAG ATYP ADDR PORT DATA.
      const atyp = msg[3];
      const skip = 4 + (atyp === 1 ? 4 : atyp === 4 ? 16 : 1 + msg[4]) + 2;
      const data = new Uint8Array(msg.subarray(skip));
      if (waiter) {
        const w = waiter;
        waiter = undefined;
        w(data);
      } else queue.push(data);
    });
    return {
      send: (host, port, data) =>
        new Promise((resolve, reject) => {
          const packet = new Uint8Array([0, 0, 0, ...encodeAddress(host, port), ...data]);
          sock.send(packet, relayPort, proxy.hostname, (err) => err ? reject(err) : resolve());
        }),
      receive: (timeoutMs) => {
        const next = queue.shift();
        if (next) return Promise.resolve(next);
        return new Promise((resolve) => {
          const timer = setTimeout(() => {
            waiter = undefined;
            resolve(undefined);
          }, timeoutMs);
          waiter = (d) => {
            clearTimeout(timer);
            resolve(d);
          };
        });
      },
      close: () => {
        control.close();
        sock.close();
      },
    };
  } catch (err) {
    control.close();
    sock.close();
    throw err;
  }
}
