/**
 * Tailscale Services with the real proxy process against a fake LocalAPI (headscale does not implement
 * Services, so no real tailscaled can host one here): the serve config and prefs we write, a concurrent
 * writer (412 and retry), entries of others left alone, service-scoped grants (`svc_name`), and shutdown
 * order — unadvertise, grace, then our entries removed, leaving the config as it was.
 */

import assert from "node:assert/strict";
import { join } from "node:path";
import { encodeProxyV2 } from "../../lib/proxy_protocol/mod.ts";
import { FakeLocalApi } from "../../scripts/harness/fake_localapi.ts";
import { fixture, tempDir } from "../../scripts/harness/fixture.ts";
import { Proxy, tcpEcho } from "../../scripts/harness/proxy.ts";

const CAP = "rajsingh.info/cap/tailvoy";
const enc = new TextEncoder();
const dec = new TextDecoder();

function whoisAlice(svcName?: string) {
  return {
    Node: { ID: 2, StableID: "nAlice", Name: "alice.fake.test.", Addresses: ["100.64.0.2/32"], Tags: [] },
    UserProfile: { ID: 1, LoginName: "alice@example.com", DisplayName: "Alice" },
    // The grant targets svc:web only: caps appear only for a service-scoped WhoIs.
    CapMap: svcName === "svc:web" ? { [CAP]: [{ listeners: ["db", "www"] }] } : null,
  };
}

async function viaProxyHeader(port: number, text: string): Promise<string | null> {
  const c = await Deno.connect({ hostname: "127.0.0.1", port });
  const header = encodeProxyV2({
    command: "PROXY",
    transport: "tcp",
    source: { address: "100.64.0.2", port: 40000 },
    destination: { address: "100.64.0.1", port: 5432 },
  });
  await c.write(new Uint8Array([...header, ...enc.encode(text)]));
  const buf = new Uint8Array(128);
  try {
    const n = await c.read(buf);
    return n === null ? null : dec.decode(buf.subarray(0, n));
  } catch {
    return null;
  } finally {
    try {
      c.close();
    } catch { /* closed */ }
  }
}

Deno.test.sanitizer({ ops: false, resources: false });

/** The serve config the fake tailscaled starts with: entries of others, which must stay. */
const BEFORE = {
  TCP: { "8443": { HTTPS: true } },
  Services: { "svc:other": { TCP: { "22": { TCPForward: "127.0.0.1:2222" } } } },
};

type ServeConfig = {
  TCP: Record<string, unknown>;
  Services: Record<string, { TCP: Record<string, { TCPForward: string; ProxyProtocol: number }> }>;
  Foreground: Record<string, { TCP: Record<string, { TCPForward: string; ProxyProtocol: number }> }>;
};

/** The fake LocalAPI (with a concurrent writer), the backends and the proxy. */
const proxyOnce = fixture(async (cleanup) => {
  const fake = await FakeLocalApi.start({
    serveConfig: structuredClone(BEFORE),
    prefs: { AdvertiseServices: ["svc:other"] },
    whois: (addr, svc) => addr.startsWith("100.64.0.2") ? whoisAlice(svc) : undefined,
  });
  cleanup.defer(() => fake.close());
  // Another writer changes the config between our read and our write: we must retry, not clobber it.
  fake.raceOnce = (config) => {
    (config.TCP as Record<string, unknown>)["9999"] = { TCPForward: "127.0.0.1:9999" };
  };
  const echo = tcpEcho();
  cleanup.defer(() => echo.close());
  const web = Deno.serve(
    { hostname: "127.0.0.1", port: 0, onListen: () => {} },
    (req) => new Response(req.headers.get("x-tailscale-user") ?? "nobody"),
  );
  cleanup.defer(() => web.shutdown());
  const dir = await tempDir(cleanup, "tailvoy-svc-");
  const file = join(dir, "svc.yaml");
  await Deno.writeTextFile(
    file,
    [
      "tailscale:",
      "  serviceMappings: {web: [db, www]}",
      `  tags: ["tag:gw"]`,
      "listeners:",
      `  db: {port: 5432, protocol: tcp, backend: "127.0.0.1:${echo.port}"}`,
      `  www: {port: 80, protocol: http, backend: "127.0.0.1:${web.addr.port}"}`,
      "tailvoy:",
      `  adminAddress: "127.0.0.1:0"`,
      "  timeouts: {unadvertiseGrace: 1s, drain: 1s}",
      `  envoyBinary: ${join(Deno.cwd(), ".peers", "bin", "envoy")}`,
      "",
    ].join("\n"),
  );
  const proxy = new Proxy(file, fake.socket);
  cleanup.defer(async () => void await proxy.stop());
  await proxy.waitLog(/"message":"ready:/, "ready");
  /** The loopback ports of our listener for `port`: the Service's and the node's. */
  const relayPorts = (port: number) => {
    const cfg = fake.serveConfig as ServeConfig;
    return {
      svc: Number(cfg.Services["svc:web"].TCP[String(port)].TCPForward.split(":")[1]),
      node: Number(Object.values(cfg.Foreground)[0].TCP[String(port)].TCPForward.split(":")[1]),
    };
  };
  return { fake, proxy, relayPorts };
});

Deno.test(
  "Tailscale Services: serve config: node-level and svc:web entries written, others' kept, after a 412",
  async () => {
    const { fake } = await proxyOnce();
    assert.equal(fake.conflicts, 1, "the concurrent write was detected");
    const cfg = fake.serveConfig as ServeConfig;
    assert.deepEqual(cfg.TCP, { "8443": { HTTPS: true }, "9999": { TCPForward: "127.0.0.1:9999" } });
    assert.deepEqual(cfg.Services["svc:other"], BEFORE.Services["svc:other"]);
    const svc = cfg.Services["svc:web"].TCP["5432"];
    assert.equal(svc.ProxyProtocol, 2);
    assert.match(svc.TCPForward, /^127\.0\.0\.1:\d+$/);
    const fg = Object.values(cfg.Foreground);
    assert.equal(fg.length, 1);
    assert.equal(fg[0].TCP["5432"].ProxyProtocol, 2);
    assert.notEqual(fg[0].TCP["5432"].TCPForward, svc.TCPForward, "a listener of its own per Service");
    assert.deepEqual(fake.prefs.AdvertiseServices, ["svc:other", "svc:web"]);
  },
);

Deno.test(
  "Tailscale Services: a grant for svc:web admits through the Service, not through the node address",
  async () => {
    const { relayPorts } = await proxyOnce();
    const { svc, node } = relayPorts(5432);
    assert.equal(await viaProxyHeader(svc, "hi"), "echo:hi");
    assert.equal(await viaProxyHeader(node, "hi"), null);
  },
);

Deno.test(
  "Tailscale Services: L7 too: ext_authz scopes WhoIs to the Service the relay saw (TLV next to the secret)",
  async () => {
    const { relayPorts } = await proxyOnce();
    const { svc, node } = relayPorts(80);
    const get = async (port: number) => {
      const reply = await viaProxyHeader(port, "GET / HTTP/1.1\r\nHost: www\r\nConnection: close\r\n\r\n");
      return reply?.split("\r\n")[0];
    };
    assert.equal(await get(svc), "HTTP/1.1 200 OK");
    assert.equal(await get(node), "HTTP/1.1 403 Forbidden");
  },
);

Deno.test(
  "Tailscale Services: SIGTERM: unadvertised first, then after the grace our entries go; config as before",
  async () => {
    const { fake, proxy } = await proxyOnce();
    const stoppedAt = performance.now();
    const code = await proxy.stop();
    assert.equal(code, 0, proxy.lines.slice(-5).join("\n"));
    const after = fake.events.filter((e) => e.at >= stoppedAt);
    const unadvertised = after.find((e) => e.what === "prefs");
    const removed = after.find((e) => e.what === "serve-config");
    assert.ok(unadvertised && removed, "both happened");
    assert.ok(unadvertised.at < removed.at, "unadvertised before the serve entries were removed");
    assert.ok(removed.at - unadvertised.at >= 900, "the grace period was waited");
    assert.deepEqual(fake.prefs.AdvertiseServices, ["svc:other"]);
    assert.deepEqual(fake.serveConfig, {
      TCP: { ...BEFORE.TCP, "9999": { TCPForward: "127.0.0.1:9999" } },
      Services: BEFORE.Services,
    });
  },
);
