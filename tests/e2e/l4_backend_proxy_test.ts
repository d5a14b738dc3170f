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
import { fixture, tailnetFixture, tempDir } from "../../scripts/harness/fixture.ts";
import { Proxy, tcpEcho } from "../../scripts/harness/proxy.ts";
import { CAP, defaultPolicy, type Policy, waitFor } from "../../scripts/harness/tailnet.ts";

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

Deno.test.sanitizer({ ops: false, resources: false });

const tailnetOnce = tailnetFixture();

/** The tailnet with this file's policy, seen by the gateway. */
async function ppTailnet() {
  const tailnet = await tailnetOnce();
  await tailnet.usePolicy(policy());
  using api = new LocalApiClient(tailnet.node("gw").socket);
  await waitFor(async () => {
    const caps = JSON.stringify((await api.whois(tailnet.node("ci").ipv4)).CapMap[CAP]);
    return caps === JSON.stringify([{ listeners: ["pp-serve"] }]) ? true : undefined;
  }, { what: "this test's policy to reach the gateway", timeoutMs: 15_000 });
  return tailnet;
}

/** The backends, a real Envoy in front of them that logs each PROXY header, and the proxy. */
const gatewayOnce = fixture(async (cleanup) => {
  const tailnet = await ppTailnet();
  const gw = tailnet.node("gw");
  const dir = await tempDir(cleanup, "tailvoy-l4pp-");
  const echo = tcpEcho();
  cleanup.defer(() => echo.close());
  const tls = await makeCert(dir);
  const app = tlsBackend(tls, "app");
  cleanup.defer(() => app.close());
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
  cleanup.defer(async () => {
    try {
      envoy.kill("SIGTERM");
    } catch { /* exited */ }
    await envoy.status;
  });
  const envoyTail = async () => await Deno.readTextFile(join(dir, "envoy.err")).catch(() => "");
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
  const proxy = new Proxy(config, gw.socket);
  cleanup.defer(async () => void await proxy.stop());
  await proxy.waitLog(/"message":"ready:/, "ready");

  const entries = async (): Promise<LogEntry[]> =>
    (await Deno.readTextFile(accessLog).catch(() => "")).split("\n").filter(Boolean).map((l) =>
      JSON.parse(l)
    );
  return { proxy, p, tls, entries };
});

/** The running gateway with this file's policy in place. */
async function gateway() {
  const g = await gatewayOnce();
  const tailnet = await ppTailnet();
  const ofCaller = (listener: string, ip: string) => async () =>
    (await g.entries()).filter((e) => e.listener === listener && e.peer.startsWith(`${ip}:`));
  /**
   * Runs `connect` (a connection from node `who`) and returns the access-log entry of `listener` it
   * caused: the first one from `who`'s address beyond those logged before.
   */
  const entryOf = async (listener: string, who: string, connect: () => Promise<void>) => {
    const mine = ofCaller(listener, tailnet.node(who).ipv4);
    const seen = (await mine()).length;
    await connect();
    return await waitFor(async () => (await mine())[seen], {
      what: `Envoy's access log entry for ${listener}`,
      timeoutMs: 10_000,
    });
  };
  return { ...g, tailnet, gw: tailnet.node("gw"), entryOf };
}

Deno.test("L4 PROXY to backends: tcp, direct ingress: Envoy sees alice's tailnet address and her TLVs", async () => {
  const { tailnet, gw, p, entryOf } = await gateway();
  const alice = tailnet.node("alice");
  using api = new LocalApiClient(gw.socket);
  const aliceLogin = (await api.whois(alice.ipv4)).UserProfile?.LoginName;
  const got = await entryOf("tcp", "alice", async () => {
    const a = await tailnet.dial("alice", gw.ipv4, p("db"));
    await a.write(enc.encode("hi"));
    assert.equal(await readSome(a), "echo:hi");
    a.close();
  });
  assert.match(got.peer, new RegExp(`^${alice.ipv4.replaceAll(".", "\\.")}:\\d+$`), "the tailnet address");
  assert.equal(got.local, `${gw.ipv4}:${p("db")}`, "this node and the listener's tailnet port");
  assert.equal(got.login, aliceLogin);
  assert.equal(got.node, alice.fqdn);
  assert.equal(got.tags, "", "present and empty: a user's node has no tags");
});

Deno.test(
  "L4 PROXY to backends: tcp, serve ingress: Envoy sees ci's address and tags, and no login it was not sent",
  async () => {
    const { tailnet, gw, p, entryOf } = await gateway();
    const ci = tailnet.node("ci");
    const got = await entryOf("tcp", "ci", async () => {
      const c = await tailnet.dial("ci", gw.ipv4, p("serve"));
      await c.write(enc.encode("hi"));
      assert.equal(await readSome(c), "echo:hi");
      c.close();
    });
    assert.match(got.peer, new RegExp(`^${ci.ipv4.replaceAll(".", "\\.")}:\\d+$`));
    assert.equal(got.local, `${gw.ipv4}:${p("serve")}`);
    assert.equal(got.tags, "tag:ci");
    assert.equal(got.node, ci.fqdn);
    assert.equal(got.login, null);
  },
);

Deno.test(
  "L4 PROXY to backends: tls passthrough: the route's header before the ClientHello; the TLS session works",
  async () => {
    const { tailnet, gw, p, tls, entryOf } = await gateway();
    const alice = tailnet.node("alice");
    using api = new LocalApiClient(gw.socket);
    const aliceLogin = (await api.whois(alice.ipv4)).UserProfile?.LoginName;
    const got = await entryOf("tls", "alice", async () => {
      assert.equal(await tlsVia(tailnet, "alice", p("tls"), "app.example.com", tls.ca), "backend app");
    });
    assert.match(got.peer, new RegExp(`^${alice.ipv4.replaceAll(".", "\\.")}:\\d+$`));
    assert.equal(got.local, `${gw.ipv4}:${p("tls")}`);
    assert.equal(got.login, aliceLogin);
    assert.equal(got.node, null, "the route's TLVs replace the listener's");
  },
);

Deno.test("L4 PROXY to backends: a denied caller never reaches the backend", async () => {
  const { proxy, tailnet, gw, p, entries } = await gateway();
  const before = (await entries()).length;
  const b = await tailnet.dial("bob", gw.ipv4, p("db"));
  await b.write(enc.encode("hi")).catch(() => {});
  assert.equal(await readSome(b), null);
  try {
    b.close();
  } catch { /* closed */ }
  await proxy.waitLog(/refused on .*pp-db/, "bob refused");
  await new Promise((r) => setTimeout(r, 300));
  assert.equal((await entries()).length, before, "Envoy logged no connection for bob");
});

Deno.test("L4 PROXY to backends: the proxy exits 0 on SIGTERM", async () => {
  const { proxy } = await gateway();
  assert.equal(await proxy.stop(), 0, proxy.lines.slice(-5).join("\n"));
});
