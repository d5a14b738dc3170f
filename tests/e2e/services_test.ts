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

Deno.test({
  name: "Tailscale Services (fake LocalAPI)",
  sanitizeResources: false,
  sanitizeOps: false,
  fn: async (t) => {
    const before = {
      TCP: { "8443": { HTTPS: true } },
      Services: { "svc:other": { TCP: { "22": { TCPForward: "127.0.0.1:2222" } } } },
    };
    const fake = await FakeLocalApi.start({
      serveConfig: structuredClone(before),
      prefs: { AdvertiseServices: ["svc:other"] },
      whois: (addr, svc) => addr.startsWith("100.64.0.2") ? whoisAlice(svc) : undefined,
    });
    // Another writer changes the config between our read and our write: we must retry, not clobber it.
    fake.raceOnce = (config) => {
      (config.TCP as Record<string, unknown>)["9999"] = { TCPForward: "127.0.0.1:9999" };
    };
    const echo = tcpEcho();
    const web = Deno.serve(
      { hostname: "127.0.0.1", port: 0, onListen: () => {} },
      (req) => new Response(req.headers.get("x-tailscale-user") ?? "nobody"),
    );
    const dir = await Deno.makeTempDir({ prefix: "tailvoy-svc-" });
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
    let code: number | undefined;
    try {
      await proxy.waitLog(/"message":"ready:/, "ready");

      await t.step("serve config: node-level and svc:web entries written, others' kept, after a 412", () => {
        assert.equal(fake.conflicts, 1, "the concurrent write was detected");
        const cfg = fake.serveConfig as {
          TCP: Record<string, unknown>;
          Services: Record<string, { TCP: Record<string, { TCPForward: string; ProxyProtocol: number }> }>;
          Foreground: Record<string, { TCP: Record<string, { TCPForward: string; ProxyProtocol: number }> }>;
        };
        assert.deepEqual(cfg.TCP, { "8443": { HTTPS: true }, "9999": { TCPForward: "127.0.0.1:9999" } });
        assert.deepEqual(cfg.Services["svc:other"], before.Services["svc:other"]);
        const svc = cfg.Services["svc:web"].TCP["5432"];
        assert.equal(svc.ProxyProtocol, 2);
        assert.match(svc.TCPForward, /^127\.0\.0\.1:\d+$/);
        const fg = Object.values(cfg.Foreground);
        assert.equal(fg.length, 1);
        assert.equal(fg[0].TCP["5432"].ProxyProtocol, 2);
        assert.notEqual(fg[0].TCP["5432"].TCPForward, svc.TCPForward, "a listener of its own per Service");
        assert.deepEqual(fake.prefs.AdvertiseServices, ["svc:other", "svc:web"]);
      });

      await t.step(
        "a grant for svc:web admits through the Service, not through the node address",
        async () => {
          const cfg = fake.serveConfig as {
            Services: Record<string, { TCP: Record<string, { TCPForward: string }> }>;
            Foreground: Record<string, { TCP: Record<string, { TCPForward: string }> }>;
          };
          const svcPort = Number(cfg.Services["svc:web"].TCP["5432"].TCPForward.split(":")[1]);
          const nodePort = Number(Object.values(cfg.Foreground)[0].TCP["5432"].TCPForward.split(":")[1]);
          assert.equal(await viaProxyHeader(svcPort, "hi"), "echo:hi");
          assert.equal(await viaProxyHeader(nodePort, "hi"), null);
        },
      );

      await t.step(
        "L7 too: ext_authz scopes WhoIs to the Service the relay saw (TLV next to the secret)",
        async () => {
          const cfg = fake.serveConfig as {
            Services: Record<string, { TCP: Record<string, { TCPForward: string }> }>;
            Foreground: Record<string, { TCP: Record<string, { TCPForward: string }> }>;
          };
          const svcPort = Number(cfg.Services["svc:web"].TCP["80"].TCPForward.split(":")[1]);
          const nodePort = Number(Object.values(cfg.Foreground)[0].TCP["80"].TCPForward.split(":")[1]);
          const get = async (port: number) => {
            const reply = await viaProxyHeader(
              port,
              "GET / HTTP/1.1\r\nHost: www\r\nConnection: close\r\n\r\n",
            );
            return reply?.split("\r\n")[0];
          };
          assert.equal(await get(svcPort), "HTTP/1.1 200 OK");
          assert.equal(await get(nodePort), "HTTP/1.1 403 Forbidden");
        },
      );
    } finally {
      const stoppedAt = performance.now();
      code = await proxy.stop();
      await t.step(
        "SIGTERM: unadvertised first, then after the grace our entries go; config as before",
        () => {
          assert.equal(code, 0, proxy.lines.slice(-5).join("\n"));
          const after = fake.events.filter((e) => e.at >= stoppedAt);
          const unadvertised = after.find((e) => e.what === "prefs");
          const removed = after.find((e) => e.what === "serve-config");
          assert.ok(unadvertised && removed, "both happened");
          assert.ok(unadvertised.at < removed.at, "unadvertised before the serve entries were removed");
          assert.ok(removed.at - unadvertised.at >= 900, "the grace period was waited");
          assert.deepEqual(fake.prefs.AdvertiseServices, ["svc:other"]);
          assert.deepEqual(fake.serveConfig, {
            TCP: { ...before.TCP, "9999": { TCPForward: "127.0.0.1:9999" } },
            Services: before.Services,
          });
        },
      );
      echo.close();
      await web.shutdown();
      await fake.close();
      await Deno.remove(dir, { recursive: true });
    }
  },
});
