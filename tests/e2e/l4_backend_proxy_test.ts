/**
 * Caller identity to L4 backends end to end: the real proxy with `proxyProtocol` on tcp and tls
 * listeners beside the gateway's real tailscaled, callers on real tailnet nodes, and a real Envoy as the
 * backend — a static bootstrap whose tcp_proxy listeners read the PROXY header (the proxy_protocol
 * listener filter, its TLVs stored as dynamic metadata) and write what they learnt to an access log.
 *
 * Direct ingress here is userspace tailscaled's (the socket peer is 127.0.0.1), so Envoy seeing the
 * caller's tailnet address proves the header names the identity's address, not the socket's.
 */

import assert from "node:assert/strict";
import { join } from "node:path";
import { allocatePorts } from "../../lib/envoy/mod.ts";
import { BACKEND_TLV_TYPES } from "../../lib/l4/mod.ts";
import { LocalApiClient } from "../../lib/localapi/mod.ts";
import { PROJECT_ROOT } from "../../scripts/harness/peers.ts";
import { makeCert } from "../../scripts/harness/certs.ts";
import { readSome, tlsBackend, tlsVia } from "../../scripts/harness/clients.ts";
import { Proxy, tcpEcho } from "../../scripts/harness/proxy.ts";
import { acquireTailnet, CAP, defaultPolicy, type Policy, waitFor } from "../../scripts/harness/tailnet.ts";
import { delay } from "../../lib/util/async.ts";

const enc = new TextEncoder();
const ENVOY = join(PROJECT_ROOT, ".peers", "bin", "envoy");
const T = "type.googleapis.com/envoy.";
/** Dynamic-metadata namespace our Envoy stores the identity TLVs in. */
const NS = "tailvoy.backend";

/** What Envoy logs per connection: the PROXY source and destination and each identity TLV. */
interface LogEntry {
  listener: string;
  peer: string;
  local: string;
  login: string | null;
  node: string | null;
  tags: string | null;
}

/** A tcp_proxy listener on 127.0.0.1:`port` that requires a PROXY v2 header and logs it. */
function envoyListener(name: string, port: number, cluster: string, logPath: string) {
  const tlvs = ["login", "node", "tags"] as const;
  return {
    name,
    address: { socket_address: { address: "127.0.0.1", port_value: port } },
    listener_filters: [{
      name: "envoy.filters.listener.proxy_protocol",
      typed_config: {
        "@type": `${T}extensions.filters.listener.proxy_protocol.v3.ProxyProtocol`,
        allow_requests_without_proxy_protocol: false,
        disallowed_versions: ["V1"],
        rules: tlvs.map((key) => ({
          tlv_type: BACKEND_TLV_TYPES[key],
          on_tlv_present: { metadata_namespace: NS, key },
        })),
      },
    }],
    filter_chains: [{
      filters: [{
        name: "envoy.filters.network.tcp_proxy",
        typed_config: {
          "@type": `${T}extensions.filters.network.tcp_proxy.v3.TcpProxy`,
          stat_prefix: name,
          cluster,
          access_log: [{
            name: "envoy.access_loggers.file",
            typed_config: {
              "@type": `${T}extensions.access_loggers.file.v3.FileAccessLog`,
              path: logPath,
              log_format: {
                json_format: {
                  listener: name,
                  peer: "%DOWNSTREAM_REMOTE_ADDRESS%",
                  local: "%DOWNSTREAM_LOCAL_ADDRESS%",
                  ...Object.fromEntries(tlvs.map((key) => [key, `%DYNAMIC_METADATA(${NS}:${key})%`])),
                },
              },
            },
          }],
        },
      }],
    }],
  };
}

function envoyCluster(name: string, port: number) {
  return {
    name,
    type: "STATIC",
    connect_timeout: "1s",
    load_assignment: {
      cluster_name: name,
      endpoints: [{
        lb_endpoints: [{
          endpoint: { address: { socket_address: { address: "127.0.0.1", port_value: port } } },
        }],
      }],
    },
  };
}

/** Policy: alice may use the direct listeners, ci the serve one. */
function policy(): Policy {
  const p = defaultPolicy();
  p.grants = [
    { src: ["*"], dst: ["*"], ip: ["*"] },
    { src: ["group:eng"], dst: ["tag:gw"], app: { [CAP]: [{ listeners: ["pp-db", "pp-tls"] }] } },
    { src: ["tag:ci"], dst: ["tag:gw"], app: { [CAP]: [{ listeners: ["pp-serve"] }] } },
  ];
  return p;
}

Deno.test({
  name: "L4 backends get the caller in a PROXY v2 header: Envoy as the backend on the real tailnet",
  sanitizeResources: false,
  sanitizeOps: false,
  fn: async (t) => {
    const tailnet = await acquireTailnet();
    const gw = tailnet.node("gw");
    const alice = tailnet.node("alice");
    const ci = tailnet.node("ci");
    const dir = await Deno.makeTempDir({ prefix: "tailvoy-l4pp-" });
    const echo = tcpEcho();
    const tls = await makeCert(dir);
    const app = tlsBackend(tls, "app");
    // Direct ingress: userspace tailscaled delivers gw:PORT to 127.0.0.1:PORT, so those must be free here.
    const port = allocatePorts(["db", "tls", "serve", "envoyTcp", "envoyTls", "envoyAdmin"]);
    const p = (name: string) => port.get(name)!;
    const accessLog = join(dir, "access.log");
    await Deno.writeTextFile(
      join(dir, "envoy.json"),
      JSON.stringify({
        admin: { address: { socket_address: { address: "127.0.0.1", port_value: p("envoyAdmin") } } },
        static_resources: {
          listeners: [
            envoyListener("tcp", p("envoyTcp"), "echo", accessLog),
            envoyListener("tls", p("envoyTls"), "app", accessLog),
          ],
          clusters: [envoyCluster("echo", echo.port), envoyCluster("app", app.port)],
        },
      }),
    );
    const envoy = new Deno.Command(ENVOY, {
      // Access logs reach the file within 100 ms of a connection's close.
      args: [
        "-c",
        join(dir, "envoy.json"),
        "--disable-hot-restart",
        "--file-flush-interval-msec",
        "100",
        "-l",
        "warning",
        "--log-path",
        join(dir, "envoy.err"),
      ],
      stdin: "null",
      stdout: "null",
      stderr: "null",
    }).spawn();
    const envoyTail = async () => await Deno.readTextFile(join(dir, "envoy.err")).catch(() => "");
    const entries = async (): Promise<LogEntry[]> =>
      (await Deno.readTextFile(accessLog).catch(() => "")).split("\n").filter(Boolean).map((l) =>
        JSON.parse(l)
      );
    /** The next access-log entry of `listener` beyond the first `seen`. */
    const nextEntry = (listener: string, seen: number) =>
      waitFor(async () => (await entries()).filter((e) => e.listener === listener)[seen], {
        what: `Envoy's access log entry for ${listener}`,
        timeoutMs: 10_000,
      });

    const config = join(dir, "tailvoy.yaml");
    await Deno.writeTextFile(
      config,
      [
        "tailscale:",
        "  serviceMappings: {gw: [pp-serve]}",
        "listeners:",
        "  pp-db:",
        `    port: ${p("db")}`,
        "    protocol: tcp",
        `    backend: 127.0.0.1:${p("envoyTcp")}`,
        "    proxyProtocol: {version: v2, tlvs: [login, node, tags]}",
        "  pp-serve:",
        `    port: ${p("serve")}`,
        "    protocol: tcp",
        "    ingress: serve",
        `    backend: 127.0.0.1:${p("envoyTcp")}`,
        "    proxyProtocol: {version: v2, tlvs: [node, tags]}",
        "  pp-tls:",
        `    port: ${p("tls")}`,
        "    protocol: tls",
        "    proxyProtocol: {version: v2, tlvs: [node]}",
        "    routes:",
        "      - hostname: app.example.com",
        `        backend: 127.0.0.1:${p("envoyTls")}`,
        // The route's own proxyProtocol replaces the listener's: login, and no node.
        "        proxyProtocol: {version: v2, tlvs: [login]}",
        "tailvoy:",
        "  ingress: direct",
        `  adminAddress: "127.0.0.1:0"`,
        "",
      ].join("\n"),
    );

    using api = new LocalApiClient(gw.socket);
    let proxy: Proxy | undefined;
    try {
      await tailnet.setPolicy(policy());
      // A bootstrap Envoy rejects ends the process: say why at once rather than at the deadline.
      const exited = envoy.status.then(async (s) => {
        throw new Error(`Envoy exited with code ${s.code}: ${await envoyTail()}`);
      });
      exited.catch(() => {});
      await Promise.race([
        exited,
        waitFor(async () => {
          const res = await fetch(`http://127.0.0.1:${p("envoyAdmin")}/ready`).catch(() => undefined);
          return (await res?.text())?.trim() === "LIVE" ? true : undefined;
        }, { what: "Envoy to be ready", timeoutMs: 20_000 }),
      ]);
      const aliceLogin = (await api.whois(alice.ipv4)).UserProfile?.LoginName;
      await waitFor(async () => {
        const caps = JSON.stringify((await api.whois(ci.ipv4)).CapMap[CAP]);
        return caps === JSON.stringify([{ listeners: ["pp-serve"] }]) ? true : undefined;
      }, { what: "this test's policy to reach the gateway", timeoutMs: 15_000 });

      proxy = new Proxy(config, gw.socket);
      await proxy.waitLog(/"message":"ready:/, "ready");

      await t.step("tcp, direct ingress: Envoy sees alice's tailnet address and her TLVs", async () => {
        const a = await tailnet.dial("alice", gw.ipv4, p("db"));
        await a.write(enc.encode("hi"));
        assert.equal(await readSome(a), "echo:hi");
        a.close();
        const got = await nextEntry("tcp", 0);
        assert.match(
          got.peer,
          new RegExp(`^${alice.ipv4.replaceAll(".", "\\.")}:\\d+$`),
          "the tailnet address",
        );
        assert.equal(got.local, `${gw.ipv4}:${p("db")}`, "this node and the listener's tailnet port");
        assert.equal(got.login, aliceLogin);
        assert.equal(got.node, alice.fqdn);
        assert.equal(got.tags, "", "present and empty: a user's node has no tags");
      });

      await t.step(
        "tcp, serve ingress: Envoy sees ci's address and tags, and no login it was not sent",
        async () => {
          const c = await tailnet.dial("ci", gw.ipv4, p("serve"));
          await c.write(enc.encode("hi"));
          assert.equal(await readSome(c), "echo:hi");
          c.close();
          const got = await nextEntry("tcp", 1);
          assert.match(got.peer, new RegExp(`^${ci.ipv4.replaceAll(".", "\\.")}:\\d+$`));
          assert.equal(got.local, `${gw.ipv4}:${p("serve")}`);
          assert.equal(got.tags, "tag:ci");
          assert.equal(got.node, ci.fqdn);
          assert.equal(got.login, null);
        },
      );

      await t.step(
        "tls passthrough: the route's header before the ClientHello; the TLS session works",
        async () => {
          assert.equal(await tlsVia(tailnet, "alice", p("tls"), "app.example.com", tls.ca), "backend app");
          const got = await nextEntry("tls", 0);
          assert.match(got.peer, new RegExp(`^${alice.ipv4.replaceAll(".", "\\.")}:\\d+$`));
          assert.equal(got.local, `${gw.ipv4}:${p("tls")}`);
          assert.equal(got.login, aliceLogin);
          assert.equal(got.node, null, "the route's TLVs replace the listener's");
        },
      );

      await t.step("a denied caller never reaches the backend", async () => {
        const before = (await entries()).length;
        const b = await tailnet.dial("bob", gw.ipv4, p("db"));
        await b.write(enc.encode("hi")).catch(() => {});
        assert.equal(await readSome(b), null);
        try {
          b.close();
        } catch { /* closed */ }
        await proxy!.waitLog(/refused on .*pp-db/, "bob refused");
        await delay(300);
        assert.equal((await entries()).length, before, "Envoy logged no connection for bob");
      });
    } finally {
      if (proxy) assert.equal(await proxy.stop(), 0);
      try {
        envoy.kill("SIGTERM");
      } catch { /* exited */ }
      await envoy.status;
      await tailnet.setPolicy(defaultPolicy());
      echo.close();
      app.close();
      await Deno.remove(dir, { recursive: true });
      await tailnet.release();
    }
  },
});
