/**
 * L4 building blocks: the relay (half-close, abort, idle timeout, byte counts, buffer memory), the UDP
 * session table, SNI routing, and a serve-mode listener fed bad input (garbage, truncated or slow PROXY
 * headers, LOCAL, unknown callers, backends that refuse or hang), resolving identities through the real
 * gateway's LocalAPI of the tailnet in a box.
 */

import assert from "node:assert/strict";
import { IdentityResolver } from "../../lib/identity/mod.ts";
import {
  FlowTable,
  relay,
  type RelayConn,
  routeBySni,
  TcpListener,
  UdpSessionTable,
} from "../../lib/l4/mod.ts";
import { LocalApiClient } from "../../lib/localapi/mod.ts";
import { encodeProxyV2 } from "../../lib/proxy_protocol/mod.ts";
import { fixture } from "../../scripts/harness/fixture.ts";
import { acquireTailnet, waitFor } from "../../scripts/harness/tailnet.ts";
import { delay } from "../../lib/util/async.ts";

const enc = new TextEncoder();
const dec = new TextDecoder();

/** A connected loopback TCP pair. */
async function pair(): Promise<[Deno.TcpConn, Deno.TcpConn]> {
  const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const [a, b] = await Promise.all([
    Deno.connect({ hostname: "127.0.0.1", port: (l.addr as Deno.NetAddr).port }),
    l.accept(),
  ]);
  l.close();
  return [a, b];
}

async function readAll(conn: Deno.Conn): Promise<string> {
  let out = "";
  const buf = new Uint8Array(4096);
  try {
    while (true) {
      const n = await conn.read(buf);
      if (n === null) return out;
      out += dec.decode(buf.subarray(0, n));
    }
  } catch {
    return out;
  }
}

Deno.test("relay: both directions, half-close propagated, byte counts", async () => {
  const [client, callerSide] = await pair();
  const [backendSide, backend] = await pair();
  const r = relay(callerSide as RelayConn, backendSide as RelayConn);
  await client.write(enc.encode("request"));
  await client.closeWrite(); // the caller is done sending...
  assert.equal(await readAll(backend), "request"); // ...so the backend sees EOF,
  await backend.write(enc.encode("response")); // and can still answer.
  backend.close();
  assert.equal(await readAll(client), "response");
  client.close();
  const result = await r.done;
  assert.deepEqual(result, { bytesUp: 7, bytesDown: 8, end: "done", detail: undefined });
});

Deno.test("relay: abort closes both sides at once", async () => {
  const [client, callerSide] = await pair();
  const [backendSide, backend] = await pair();
  const abort = new AbortController();
  const r = relay(callerSide as RelayConn, backendSide as RelayConn, { signal: abort.signal });
  abort.abort("access revoked");
  assert.equal(await readAll(client), "");
  assert.equal(await readAll(backend), "");
  const result = await r.done;
  assert.equal(result.end, "aborted");
  assert.equal(result.detail, "access revoked");
  client.close();
  backend.close();
});

Deno.test("relay: an idle flow is closed after the idle timeout", async () => {
  const [client, callerSide] = await pair();
  const [backendSide, backend] = await pair();
  const r = relay(callerSide as RelayConn, backendSide as RelayConn, { idleTimeoutMs: 200 });
  assert.equal((await r.done).end, "idle");
  assert.equal(await readAll(client), "");
  client.close();
  backend.close();
});

/** Relayed flows for the buffer-memory tests: each a client and a backend with a relay between them. */
async function relayedFlows(count: number) {
  const flows = [];
  for (let i = 0; i < count; i++) {
    const [client, callerSide] = await pair();
    const [backendSide, backend] = await pair();
    const r = relay(callerSide as RelayConn, backendSide as RelayConn);
    flows.push({ client, backend, relay: r, sink: new Uint8Array(64 * 1024) });
  }
  return flows;
}

/** Sends `bytes` from every client and waits until its backend has read them all. */
async function sendThrough(flows: Awaited<ReturnType<typeof relayedFlows>>, bytes: Uint8Array) {
  for (const f of flows) {
    const reading = (async () => {
      for (let got = 0; got < bytes.length;) got += (await f.backend.read(f.sink)) ?? bytes.length;
    })();
    for (let off = 0; off < bytes.length;) off += await f.client.write(bytes.subarray(off));
    await reading;
  }
}

/** ArrayBuffer memory outside the JS heap (the relay's buffers among it), in bytes. */
const external = () => Deno.memoryUsage().external;

/** Polls `ok` for up to a second (the relay resizes after its write has resolved). */
async function eventually(ok: () => boolean): Promise<void> {
  for (let i = 0; i < 100 && !ok(); i++) await delay(10);
}

// 16 flows that each relay 1 MiB: their upstream buffers grow to the 256 KiB maximum (4 MiB in all).
const FLOWS = 16;
const BURST = new Uint8Array(1024 * 1024);

Deno.test("relay: a grown buffer shrinks back once the burst is over, while the flow stays open", async () => {
  const flows = await relayedFlows(FLOWS);
  const before = external();
  await sendThrough(flows, BURST);
  const grown = external() - before;
  assert.ok(grown > FLOWS * 128 * 1024, `buffers grew by ${grown} bytes`);
  await sendThrough(flows, enc.encode("ping"));
  await eventually(() => external() - before < grown / 8);
  const left = external() - before;
  assert.ok(left < grown / 8, `after a small message, ${left} of ${grown} bytes are still held`);
  for (const f of flows) {
    f.client.close();
    f.backend.close();
    await f.relay.done;
  }
});

Deno.test("relay: a finished flow frees its buffers at once, not at some later GC", async () => {
  const flows = await relayedFlows(FLOWS);
  const before = external();
  await sendThrough(flows, BURST);
  const grown = external() - before;
  assert.ok(grown > FLOWS * 128 * 1024, `buffers grew by ${grown} bytes`);
  for (const f of flows) {
    f.client.close();
    f.backend.close();
  }
  await Promise.all(flows.map((f) => f.relay.done));
  const left = external() - before;
  assert.ok(left < grown / 8, `after every flow ended, ${left} of ${grown} bytes are still held`);
});

Deno.test("UDP session table: pending queue, open, deny, cap, expiry", () => {
  let now = 0;
  const t = new UdpSessionTable<string>({
    maxSessions: 2,
    idleMs: 1000,
    denyMs: 500,
    maxQueue: 2,
    now: () => now,
  });
  const p = (s: string) => enc.encode(s);
  assert.equal(t.packet("a", p("1")).action, "created");
  assert.equal(t.packet("a", p("2")).action, "queued");
  assert.equal(t.packet("a", p("3")).action, "drop", "the pending queue is bounded");
  assert.deepEqual(t.open("a", "backend-a").map((x) => dec.decode(x)), ["1", "2"]);
  assert.equal(t.packet("a", p("4")).action, "forward");
  assert.equal(t.packet("b", p("1")).action, "created");
  assert.equal(t.packet("c", p("1")).action, "drop", "over the session cap");
  t.deny("b");
  assert.equal(t.packet("b", p("2")).action, "drop", "a denied peer's packets are dropped");
  now = 600;
  assert.deepEqual(t.expire().map((s) => s.key), ["b"], "a denial is forgotten after denyMs");
  now = 1200;
  assert.equal(t.packet("a", p("5")).action, "forward");
  now = 2300;
  assert.deepEqual(t.expire().map((s) => s.key), ["a"], "an idle session expires");
  assert.equal(t.size, 0);
});

Deno.test("SNI routing: exact names first, then the longest wildcard, case-insensitive", () => {
  const routes = [
    { hostname: "*.example.com", backend: "wild" },
    { hostname: "*.api.example.com", backend: "api-wild" },
    { hostname: "app.example.com", backend: "app" },
  ];
  assert.equal(routeBySni(routes, "APP.example.com"), "app");
  assert.equal(routeBySni(routes, "x.api.example.com"), "api-wild");
  assert.equal(routeBySni(routes, "other.example.com"), "wild");
  assert.equal(routeBySni(routes, "example.com"), undefined, "a wildcard does not match the apex");
  assert.equal(routeBySni(routes, "example.org"), undefined);
});

// The tests below share one set-up, open from the first of them to the end of the file.
Deno.test.sanitizer({ ops: false, resources: false });

/** A serve-mode listener set-up fed bad input: a backend that never answers and three listeners. */
const serveListenersOnce = fixture(async (cleanup) => {
  const tailnet = await acquireTailnet();
  cleanup.defer(() => tailnet.release());
  const api = new LocalApiClient(tailnet.node("gw").socket);
  cleanup.defer(() => api.close());
  const resolver = new IdentityResolver(api);
  const flows = new FlowTable(resolver);
  const backend = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const hanging: Deno.Conn[] = [];
  cleanup.defer(() => {
    backend.close();
    for (const c of hanging) {
      try {
        c.close();
      } catch { /* closed */ }
    }
  });
  (async () => {
    for await (const c of backend) {
      hanging.push(c); // accepts and never answers
    }
  })();
  const closedPort = (() => {
    const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
    const port = (l.addr as Deno.NetAddr).port;
    l.close();
    return port;
  })();
  cleanup.defer(() => flows.drain(0));
  const make = async (name: string, protocol: "tcp" | "tls", backendPort: number) => {
    const l = await TcpListener.start({
      name,
      protocol,
      ingress: "serve",
      bind: [{ hostname: "127.0.0.1", port: 0 }],
      backend: `127.0.0.1:${backendPort}`,
      routes: [{ hostname: "app.example.com", backend: `127.0.0.1:${backendPort}` }],
    }, { resolver, flows, timeouts: { proxyHeader: 300, tlsHello: 300, dial: 1000, idle: 400 } });
    cleanup.defer(() => l.close());
    return l;
  };
  const header = (ip: string) =>
    encodeProxyV2({
      command: "PROXY",
      transport: "tcp",
      source: { address: ip, port: 4242 },
      destination: { address: tailnet.node("gw").ipv4, port: 5432 },
    });
  return {
    db: await make("db", "tcp", (backend.addr as Deno.NetAddr).port),
    refusing: await make("db", "tcp", closedPort),
    tls: await make("db", "tls", (backend.addr as Deno.NetAddr).port),
    flows,
    hanging,
    header,
    alice: tailnet.node("alice").ipv4,
  };
});

/** Connects to `l`, sends `bytes`, and returns what came back before the proxy closed the connection. */
async function exchange(l: TcpListener, bytes: Uint8Array, options: { hold?: boolean } = {}) {
  const c = await Deno.connect({ hostname: "127.0.0.1", port: l.addrs[0].port });
  if (bytes.length) await c.write(bytes);
  if (!options.hold) await c.closeWrite();
  const got = await readAll(c);
  c.close();
  return got;
}

const BAD_INPUT = "serve listener: bad input is refused without crashing or leaking:";

Deno.test(`${BAD_INPUT} HTTP garbage instead of a PROXY header`, async () => {
  const { db } = await serveListenersOnce();
  const before = db.refused;
  assert.equal(await exchange(db, enc.encode("GET / HTTP/1.1\r\nHost: x\r\n\r\n")), "");
  assert.equal(db.refused, before + 1);
});

Deno.test(`${BAD_INPUT} a truncated header, then EOF`, async () => {
  const { db, header, alice } = await serveListenersOnce();
  assert.equal(await exchange(db, header(alice).subarray(0, 10)), "");
});

Deno.test(`${BAD_INPUT} slowloris: part of a header, then silence, is cut at the deadline`, async () => {
  const { db, header, alice } = await serveListenersOnce();
  assert.equal(await exchange(db, header(alice).subarray(0, 14), { hold: true }), "");
});

Deno.test(`${BAD_INPUT} a LOCAL command carries no caller: refused`, async () => {
  const { db } = await serveListenersOnce();
  const local = encodeProxyV2({ command: "LOCAL", transport: "unspec" });
  assert.equal(await exchange(db, local, { hold: true }), "");
});

Deno.test(`${BAD_INPUT} a caller tailscaled does not know: refused`, async () => {
  const { db, header } = await serveListenersOnce();
  assert.equal(await exchange(db, header("100.100.9.9"), { hold: true }), "");
});

Deno.test(`${BAD_INPUT} a backend that refuses: the caller is closed`, async () => {
  const { refusing, header, alice } = await serveListenersOnce();
  assert.equal(await exchange(refusing, header(alice), { hold: true }), "");
});

Deno.test(`${BAD_INPUT} a backend that hangs: the flow ends at the idle timeout`, async () => {
  const { db, flows, header, alice } = await serveListenersOnce();
  assert.equal(await exchange(db, header(alice), { hold: true }), "");
  await waitFor(() => flows.size === 0 ? true : undefined, { what: "no flow left", timeoutMs: 3000 });
});

Deno.test(`${BAD_INPUT} tls: garbage or a hello without SNI is refused`, async () => {
  const { tls, header, alice } = await serveListenersOnce();
  const garbage = new Uint8Array([...header(alice), ...enc.encode("\x16\x03\x01\xff\xffjunk")]);
  assert.equal(await exchange(tls, garbage), "");
  assert.equal(await exchange(tls, new Uint8Array([...header(alice), 0x16, 0x03]), { hold: true }), "");
});

Deno.test(`${BAD_INPUT} after all that, a good caller is still served`, async () => {
  const { db, hanging, header, alice } = await serveListenersOnce();
  const seen = hanging.length;
  const c = await Deno.connect({ hostname: "127.0.0.1", port: db.addrs[0].port });
  await c.write(new Uint8Array([...header(alice), ...enc.encode("hello")]));
  const conn = await waitFor(() => hanging[seen], { what: "the backend to get the connection" });
  const buf = new Uint8Array(16);
  const n = await conn.read(buf);
  assert.equal(dec.decode(buf.subarray(0, n!)), "hello");
  c.close();
});
