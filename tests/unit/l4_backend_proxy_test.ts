/**
 * The L4 backend contract (`proxyProtocol` on tcp/tls listeners): the config shape and its errors, and
 * what a backend reads, with our own PROXY parser, from a real listener on loopback. The WhoIs source is a
 * stub (the header is what is under test); tests/e2e/l4_backend_proxy_test.ts runs it against the real
 * tailnet and Envoy.
 */

import assert from "node:assert/strict";
import { ConfigError, parseConfig } from "../../lib/config/mod.ts";
import { IdentityResolver } from "../../lib/identity/mod.ts";
import { BACKEND_TLV_TYPES, FlowTable, identityTlvs, TcpListener } from "../../lib/l4/mod.ts";
import type { TcpListenerSpec } from "../../lib/l4/tcp.ts";
import type { WhoIsResponse } from "../../lib/localapi/mod.ts";
import { encodeProxyV2, type ProxyHeader, readProxyHeader } from "../../lib/proxy_protocol/mod.ts";
import { SECRET_TLV_TYPE } from "../../lib/wire.ts";
import { closeQuietly } from "../../lib/util/async.ts";

const enc = new TextEncoder();
const dec = new TextDecoder();
const CAP = "rajsingh.info/cap/tailvoy";
const SELF = ["100.64.0.1", "fd7a:115c:a1e0::1"];

function config(listeners: string): string {
  return `listeners:\n${listeners}tailvoy:\n  ingress: direct\n`;
}

function errorsOf(text: string): string {
  try {
    parseConfig(text, { env: {} });
  } catch (err) {
    if (err instanceof ConfigError) return err.message;
    throw err;
  }
  throw new Error("the config parsed, but an error was expected");
}

Deno.test("config: proxyProtocol is v2 or {version, tlvs}; a tls route's replaces the listener's", () => {
  const parsed = parseConfig(
    config(
      "  db:\n    port: 5432\n    protocol: tcp\n    backend: 127.0.0.1:5432\n    proxyProtocol: v2\n" +
        "  pg:\n    port: 5433\n    protocol: tcp\n    backend: 127.0.0.1:5433\n" +
        "    proxyProtocol: {version: v2, tlvs: [login, node, tags]}\n" +
        "  tls:\n    port: 443\n    protocol: tls\n    proxyProtocol: {version: v2, tlvs: [node]}\n" +
        "    routes:\n      - {hostname: app.example.com, backend: 127.0.0.1:8443}\n" +
        "      - {hostname: admin.example.com, backend: 127.0.0.1:9443, proxyProtocol: {version: v2, tlvs: [login]}}\n",
    ),
    { env: {} },
  );
  assert.deepEqual(parsed.listeners.db.proxyProtocol, { version: "v2", tlvs: [] });
  assert.deepEqual(parsed.listeners.pg.proxyProtocol, { version: "v2", tlvs: ["login", "node", "tags"] });
  assert.deepEqual(parsed.listeners.tls.proxyProtocol, { version: "v2", tlvs: ["node"] });
  assert.equal(parsed.listeners.tls.routes[0].proxyProtocol, undefined);
  assert.deepEqual(parsed.listeners.tls.routes[1].proxyProtocol, { version: "v2", tlvs: ["login"] });
});

Deno.test("config: proxyProtocol errors name the path, the line and the fix", () => {
  const tcp = (value: string) =>
    errorsOf(
      config(
        `  db:\n    port: 5432\n    protocol: tcp\n    backend: 127.0.0.1:5432\n    proxyProtocol: ${value}\n`,
      ),
    );
  assert.match(tcp("v1"), /listeners\.db\.proxyProtocol: expected v2 or a mapping, got "v1" \(line 6:20\)/);
  assert.match(
    tcp("true"),
    /listeners\.db\.proxyProtocol: expected v2 or a mapping, got true .*write proxyProtocol: v2/,
  );
  assert.match(
    tcp("{version: v2, tlvs: [user]}"),
    /listeners\.db\.proxyProtocol\.tlvs\[0\]: must be one of login, node, tags; got "user"/,
  );
  assert.match(tcp("{version: v2, tlvs: [node, node]}"), /proxyProtocol\.tlvs: lists a TLV more than once/);
  assert.match(tcp("{tlvs: [node]}"), /listeners\.db\.proxyProtocol\.version: required/);
  assert.match(tcp("{version: v1}"), /listeners\.db\.proxyProtocol\.version: must be one of v2; got "v1"/);

  const web = errorsOf(
    config("  web:\n    port: 80\n    protocol: http\n    backend: 127.0.0.1:8080\n    proxyProtocol: v2\n"),
  );
  assert.match(
    web,
    /listeners\.web\.proxyProtocol: only applies to tcp and tls listeners, not http \(line 6:/,
  );
  assert.match(web, /X-Tailscale-\* headers/);
  const dns = errorsOf(
    config("  dns:\n    port: 53\n    protocol: udp\n    backend: 127.0.0.1:53\n    proxyProtocol: v2\n"),
  );
  assert.match(
    dns,
    /listeners\.dns\.proxyProtocol: only applies to tcp and tls listeners, not udp \(line 6:/,
  );
  const route = errorsOf(
    config(
      "  web:\n    port: 80\n    protocol: http\n    routes:\n" +
        "      - {hostname: a.example.com, backend: 127.0.0.1:8080, proxyProtocol: v2}\n",
    ),
  );
  assert.match(route, /listeners\.web\.routes\[0\]\.proxyProtocol: not allowed for protocol http \(line 6:/);
});

Deno.test("identity TLVs: 0xE8-0xEA, UTF-8, tags comma-joined, empty when absent; never the relay secret's type", () => {
  const identity = {
    login: "zoë@example.com",
    node: "alice.box.test",
    nodeId: "n1",
    tags: [],
    ips: ["100.64.0.9"],
    capMap: {},
    rules: [],
    malformed: [],
  };
  assert.deepEqual(identityTlvs(identity, ["tags", "login", "node"]), [
    { type: 0xea, value: new Uint8Array(0) },
    { type: 0xe8, value: enc.encode("zoë@example.com") },
    { type: 0xe9, value: enc.encode("alice.box.test") },
  ]);
  const tagged = { ...identity, login: undefined, tags: ["tag:ci", "tag:db"] };
  assert.deepEqual(identityTlvs(tagged, ["login", "tags"]).map((t) => dec.decode(t.value)), [
    "",
    "tag:ci,tag:db",
  ]);
  const types = Object.values(BACKEND_TLV_TYPES);
  assert.ok(types.every((t) => t >= 0xe8 && t <= 0xef), "the backend range");
  assert.ok(!types.includes(SECRET_TLV_TYPE));
  assert.equal(new Set(types).size, types.length);
});

// ---------------------------------------------------------------------------------------------
// A real listener on loopback, a stub WhoIs, and a backend that reads the header with our parser.

function whoisAnswer(name: string, tags: string[] = []): WhoIsResponse {
  return {
    Node: {
      StableID: `n-${name}`,
      Name: `${name}.box.test.`,
      Addresses: ["100.64.0.9/32", "fd7a:115c:a1e0::9/128"],
      Tags: tags,
    },
    UserProfile: tags.length ? { LoginName: "tagged-devices", DisplayName: "tagged" } : {
      LoginName: `${name}@example.com`,
      DisplayName: name,
    },
    CapMap: { [CAP]: [{}] },
  };
}

/** What the backend read: the header, then the caller's bytes that followed it. */
interface Received {
  header: ProxyHeader;
  payload: string;
}

/** A backend that reads one PROXY header and then `payloadBytes` bytes per connection. */
function headerBackend(payloadBytes: number): { port: number; received: Received[]; close: () => void } {
  const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const received: Received[] = [];
  (async () => {
    for await (const c of l) {
      (async () => {
        try {
          const { header, rest } = await readProxyHeader(c, { versions: [2], timeoutMs: 2000 });
          let payload = rest;
          const buf = new Uint8Array(4096);
          while (payload.length < payloadBytes) {
            const n = await c.read(buf);
            if (n === null) break;
            payload = new Uint8Array([...payload, ...buf.subarray(0, n)]);
          }
          received.push({ header, payload: dec.decode(payload) });
          await c.write(enc.encode("ok"));
        } catch { /* the test fails on what is missing */ }
        closeQuietly(c);
      })();
    }
  })();
  return { port: (l.addr as Deno.NetAddr).port, received, close: () => l.close() };
}

async function exchange(port: number, bytes: Uint8Array): Promise<string> {
  const c = await Deno.connect({ hostname: "127.0.0.1", port });
  try {
    await c.write(bytes);
    const buf = new Uint8Array(64);
    const n = await c.read(buf);
    return n === null ? "" : dec.decode(buf.subarray(0, n));
  } finally {
    c.close();
  }
}

const tlvText = (header: ProxyHeader) =>
  Object.fromEntries(header.tlvs.map((t) => [t.type.toString(16), dec.decode(t.value)]));

Deno.test({
  name: "listener: the backend reads the caller's tailnet address and identity TLVs before its bytes",
  sanitizeResources: false,
  sanitizeOps: false,
  fn: async (t) => {
    let answer = whoisAnswer("alice");
    const resolver = new IdentityResolver({ whois: () => Promise.resolve(answer) }, { ttlMs: 0 });
    const flows = new FlowTable(resolver);
    const deps = {
      resolver,
      flows,
      selfIps: SELF,
      timeouts: { proxyHeader: 1000, tlsHello: 1000, dial: 1000 },
    };
    const hello = await Deno.readFile(new URL("../fixtures/client_hello/openssl.bin", import.meta.url));
    const backend = headerBackend(hello.length);
    const tcpBackend = headerBackend(5);
    const listeners: TcpListener[] = [];
    const listen = async (spec: Omit<TcpListenerSpec, "bind">) => {
      const l = await TcpListener.start({ ...spec, bind: [{ hostname: "127.0.0.1", port: 0 }] }, deps);
      listeners.push(l);
      return l.addrs[0].port;
    };
    const all = { version: "v2" as const, tlvs: ["login" as const, "node" as const, "tags" as const] };
    try {
      await t.step("direct (userspace): 127.0.0.1 becomes the caller's tailnet IP; dst is ours", async () => {
        const port = await listen({
          name: "db",
          protocol: "tcp",
          ingress: "direct",
          port: 5432,
          backend: `127.0.0.1:${tcpBackend.port}`,
          proxyProtocol: all,
        });
        assert.equal(await exchange(port, enc.encode("hello")), "ok");
        const got = tcpBackend.received.at(-1)!;
        assert.equal(got.payload, "hello", "the caller's bytes follow the header unchanged");
        assert.equal(got.header.command, "PROXY");
        assert.equal(got.header.source?.address, "100.64.0.9");
        assert.deepEqual(got.header.destination, { address: "100.64.0.1", port: 5432 });
        assert.deepEqual(tlvText(got.header), {
          e8: "alice@example.com",
          e9: "alice.box.test",
          ea: "",
        });
      });

      await t.step(
        "serve: the source is tailscaled's; TLVs a client put in that header are not passed on",
        async () => {
          answer = whoisAnswer("ci", ["tag:ci", "tag:db"]);
          const port = await listen({
            name: "db",
            protocol: "tcp",
            ingress: "serve",
            port: 5433,
            backend: `127.0.0.1:${tcpBackend.port}`,
            proxyProtocol: { version: "v2", tlvs: ["tags", "login"] },
          });
          const fromTailscaled = encodeProxyV2({
            command: "PROXY",
            transport: "tcp",
            source: { address: "fd7a:115c:a1e0::9", port: 40000 },
            destination: { address: "fd7a:115c:a1e0::1", port: 5433 },
            tlvs: [{ type: 0xe8, value: enc.encode("mallory@example.com") }],
          });
          assert.equal(
            await exchange(port, new Uint8Array([...fromTailscaled, ...enc.encode("hello")])),
            "ok",
          );
          const got = tcpBackend.received.at(-1)!;
          assert.equal(got.payload, "hello");
          assert.deepEqual(got.header.source, { address: "fd7a:115c:a1e0::9", port: 40000 });
          assert.deepEqual(
            got.header.destination,
            { address: "fd7a:115c:a1e0::1", port: 5433 },
            "IPv6 to IPv6",
          );
          assert.deepEqual(got.header.tlvs.map((t) => t.type), [0xea, 0xe8], "ours, in the order asked for");
          assert.deepEqual(tlvText(got.header), { ea: "tag:ci,tag:db", e8: "" });
          answer = whoisAnswer("alice");
        },
      );

      await t.step(
        "tls: the route's header comes before the ClientHello, which is passed on byte for byte",
        async () => {
          const port = await listen({
            name: "tls",
            protocol: "tls",
            ingress: "direct",
            port: 443,
            routes: [
              { hostname: "app.example.com", backend: `127.0.0.1:${backend.port}`, proxyProtocol: all },
            ],
          });
          assert.equal(await exchange(port, hello), "ok");
          const got = backend.received.at(-1)!;
          assert.equal(got.payload, dec.decode(hello), "the ClientHello, byte for byte");
          assert.equal(got.header.source?.address, "100.64.0.9");
          assert.deepEqual(got.header.destination, { address: "100.64.0.1", port: 443 });
          assert.equal(tlvText(got.header).e9, "alice.box.test");
        },
      );

      await t.step("no proxyProtocol: the backend gets the caller's bytes only", async () => {
        const plain = Deno.listen({ hostname: "127.0.0.1", port: 0 });
        const port = await listen({
          name: "db",
          protocol: "tcp",
          ingress: "direct",
          backend: `127.0.0.1:${plain.addr.port}`,
        });
        const c = await Deno.connect({ hostname: "127.0.0.1", port });
        await c.write(enc.encode("plain"));
        const s = await plain.accept();
        const buf = new Uint8Array(64);
        const n = await s.read(buf);
        assert.equal(dec.decode(buf.subarray(0, n!)), "plain");
        s.close();
        c.close();
        plain.close();
      });
    } finally {
      for (const l of listeners) l.close();
      await flows.drain(0);
      backend.close();
      tcpBackend.close();
    }
  },
});
