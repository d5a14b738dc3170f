/**
 * The LocalAPI dial against the real tailscaled of the tailnet in a box: from the gateway's userspace
 * tailscaled to a TCP echo backend behind alice's node (alice's tailscaled forwards her tailnet
 * address's port P to 127.0.0.1:P), both ways, half-close, 20 MB byte-exact; and the answers tailvoy's
 * egress policy must know about: a refused port, non-tailnet targets, the node's own address.
 */

import assert from "node:assert/strict";
import { LocalApiClient, LocalApiError } from "../../lib/localapi/mod.ts";
import { acquireTailnet, waitFor } from "../../scripts/harness/tailnet.ts";

const enc = new TextEncoder();
const dec = new TextDecoder();

/** A loopback TCP server running `handle` for each connection. */
function backend(handle: (conn: Deno.TcpConn) => Promise<void>) {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const accepted: Deno.TcpConn[] = [];
  const running = (async () => {
    for await (const conn of listener) {
      accepted.push(conn);
      handle(conn).catch(() => {}).finally(() => {
        try {
          conn.close();
        } catch { /* closed by the handler */ }
      });
    }
  })();
  return {
    port: (listener.addr as Deno.NetAddr).port,
    accepted,
    async [Symbol.asyncDispose]() {
      listener.close();
      await running.catch(() => {});
    },
  };
}

async function echo(conn: Deno.TcpConn): Promise<void> {
  const buf = new Uint8Array(64 * 1024);
  while (true) {
    const n = await conn.read(buf);
    if (n === null) return;
    for (let off = 0; off < n;) off += await conn.write(buf.subarray(off, n));
  }
}

async function readAll(conn: Deno.Conn): Promise<Uint8Array> {
  const chunks: Uint8Array<ArrayBuffer>[] = [];
  const buf = new Uint8Array(64 * 1024);
  while (true) {
    const n = await conn.read(buf);
    if (n === null) break;
    chunks.push(buf.slice(0, n));
  }
  return new Uint8Array(await new Blob(chunks).arrayBuffer());
}

async function sha256(bytes: Uint8Array<ArrayBuffer>): Promise<string> {
  const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", bytes));
  return [...digest].map((b) => b.toString(16).padStart(2, "0")).join("");
}

function rejectsWith(kind: string, pattern?: RegExp) {
  return (err: unknown) => {
    assert.ok(err instanceof LocalApiError, `expected a LocalApiError, got ${err}`);
    assert.equal(err.kind, kind, err.message);
    if (pattern) assert.match(err.message, pattern);
    return true;
  };
}

Deno.test({
  name: "LocalAPI dial through the gateway's userspace tailscaled",
  sanitizeResources: false,
  sanitizeOps: false,
  fn: async (t) => {
    const tailnet = await acquireTailnet();
    const gw = tailnet.node("gw");
    const alice = tailnet.node("alice");
    const api = new LocalApiClient(gw.socket, { timeoutMs: 5000 });
    const aliceApi = new LocalApiClient(alice.socket, { timeoutMs: 5000 });
    try {
      await t.step("echo both ways over IPv4 and IPv6; alice's tailscaled forwarded it from gw", async () => {
        await using server = backend(echo);
        for (const ip of [alice.ipv4, alice.ipv6]) {
          const conn = await api.dial(ip, server.port);
          await conn.write(enc.encode(`hello over ${ip}`));
          const buf = new Uint8Array(100);
          const n = await conn.read(buf);
          assert.equal(dec.decode(buf.subarray(0, n ?? 0)), `hello over ${ip}`);
          // The backend's caller is the 127.0.0.1 end of alice's forward; her WhoIs maps it to gw.
          const remote = server.accepted.at(-1)!.remoteAddr as Deno.NetAddr;
          const who = await waitFor(() => aliceApi.whois(`127.0.0.1:${remote.port}`, { proto: "tcp" }), {
            what: "alice's WhoIs of the forwarded connection",
            timeoutMs: 3000,
          });
          assert.equal(who.Node.Name, `${gw.fqdn}.`);
          conn.close();
        }
      });

      await t.step("20 MB up and back byte-exact", async () => {
        await using server = backend(echo);
        const size = 20 * 1024 * 1024;
        const data = new Uint8Array(size);
        // Not all zeros: a non-repeating pattern catches reordered or dropped chunks.
        for (let i = 0; i < size; i += 65536) crypto.getRandomValues(data.subarray(i, i + 65536));
        const conn = await api.dial(alice.ipv4, server.port);
        const received = (async () => {
          const out = new Uint8Array(size);
          let got = 0;
          while (got < size) {
            const n = await conn.read(out.subarray(got));
            if (n === null) break;
            got += n;
          }
          return out.subarray(0, got);
        })();
        for (let off = 0; off < size;) {
          off += await conn.write(data.subarray(off, Math.min(size, off + 256 * 1024)));
        }
        const back = await received;
        conn.close();
        assert.equal(back.length, size);
        assert.equal(await sha256(back), await sha256(data));
      });

      await t.step("the node's end of stream reaches the caller after its last bytes", async () => {
        await using server = backend(async (conn) => {
          await conn.write(enc.encode("last words"));
          await conn.closeWrite();
          await readAll(conn);
        });
        const conn = await api.dial(alice.ipv4, server.port);
        assert.equal(dec.decode(await readAll(conn)), "last words");
        conn.close();
      });

      await t.step(
        "half-close by the caller: the node gets every byte and then EOF, but tailscaled 1.102.3 then closes the way back too",
        async () => {
          const seen = Promise.withResolvers<{ got: string }>();
          await using server = backend(async (conn) => {
            const got = dec.decode(await readAll(conn));
            seen.resolve({ got });
            // An answer after the caller's EOF: tailscaled's serveDial has already torn down both directions.
            await conn.write(enc.encode("answer after EOF")).catch(() => {});
          });
          const conn = await api.dial(alice.ipv4, server.port);
          await conn.write(enc.encode("request"));
          await conn.closeWrite();
          assert.deepEqual(await seen.promise, { got: "request" });
          // If this starts to receive "answer after EOF", tailscaled propagates half-close now: update
          // docs/tailscaled_dial.md and DialedConn's comment.
          assert.equal(dec.decode(await readAll(conn)), "");
          conn.close();
        },
      );

      await t.step("a closed port on the node is dial-refused", async () => {
        const probe = Deno.listen({ hostname: "127.0.0.1", port: 0 });
        const closedPort = (probe.addr as Deno.NetAddr).port;
        probe.close();
        await assert.rejects(
          api.dial(alice.ipv4, closedPort),
          rejectsWith(
            "dial-refused",
            new RegExp(`${alice.ipv4.replaceAll(".", "\\.")}:${closedPort}.*refused`),
          ),
        );
      });

      await t.step(
        "loopback, link-local and an unassigned tailnet address are not dialed: dial-not-tailnet",
        async () => {
          for (const ip of ["127.0.0.1", "::1", "169.254.169.254", "100.64.0.250", "10.1.2.3"]) {
            await assert.rejects(
              api.dial(ip, 80),
              rejectsWith("dial-not-tailnet", /not a tailnet destination/),
            );
          }
        },
      );

      await t.step("quad-100 (a route with no listener in userspace mode) is dial-unreachable", async () => {
        await assert.rejects(api.dial("100.100.100.100", 53), rejectsWith("dial-unreachable", /unreachable/));
      });

      await t.step(
        "the node's OWN tailnet address is dialed, and reaches its host's loopback: egress policy must refuse it",
        async () => {
          await using server = backend(async (conn) => {
            await conn.write(enc.encode("a loopback-only service of the gateway's host"));
          });
          const conn = await api.dial(gw.ipv4, server.port);
          assert.equal(dec.decode(await readAll(conn)), "a loopback-only service of the gateway's host");
          conn.close();
        },
      );
    } finally {
      api.close();
      aliceApi.close();
      await tailnet.release();
    }
  },
});
