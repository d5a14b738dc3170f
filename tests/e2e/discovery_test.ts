/**
 * Discovery mode (Envoy Gateway data plane) end to end: the real proxy starts a real Envoy with Envoy
 * Gateway-style arguments (after `--`), finds its dynamically delivered listeners through the admin
 * API, serves them on the gateway node's real tailscaled, answers Envoy's ext_authz calls, follows
 * listeners as they come and go, and withholds a Tailscale Service whose cluster fails health checks.
 * Callers are real tailnet nodes. Envoy Gateway's xDS server is replaced by files (see the harness).
 */

import assert from "node:assert/strict";
import { join } from "node:path";
import { allocatePorts } from "../../lib/envoy/mod.ts";
import { LocalApiClient } from "../../lib/localapi/mod.ts";
import { echoBackend, http, readSome } from "../../scripts/harness/clients.ts";
import { closeQuietly } from "../../lib/util/async.ts";
import { fixture, tailnetFixture, tempDir } from "../../scripts/harness/fixture.ts";
import {
  type GatewayCluster,
  GatewayEnvoyConfig,
  type GatewayListener,
} from "../../scripts/harness/gateway_envoy.ts";
import { Proxy, tcpEcho } from "../../scripts/harness/proxy.ts";
import { CAP, defaultPolicy, type Policy, waitFor } from "../../scripts/harness/tailnet.ts";

const enc = new TextEncoder();

function gatewayPolicy(): Policy {
  const p = defaultPolicy();
  p.grants = [
    { src: ["*"], dst: ["*"], ip: ["*"] },
    // alice: tailvoy-style grants — the SecurityPolicy's contextExtensions name ("http"), Envoy's
    // listener names for TCP.
    {
      src: ["group:eng"],
      dst: ["tag:gw"],
      app: {
        [CAP]: [{ listeners: ["http"], routes: ["/api/*"] }, {
          listeners: ["default/eg/tcp", "default/eg/tcp2"],
        }],
      },
    },
    // ci: the discovered name, for routes whose SecurityPolicy sets no listener; GET only.
    {
      src: ["tag:ci"],
      dst: ["tag:gw"],
      app: { [CAP]: [{ listeners: ["default/eg/http"], methods: ["GET"] }] },
    },
  ];
  return p;
}

Deno.test.sanitizer({ ops: false, resources: false });

const tailnetOnce = tailnetFixture();

const PORT_NAMES = ["admin", "authz", "http", "tcp", "tcp2", "flaky", "flakyBackend"] as const;

/** The backends, Envoy Gateway's config files (listeners and clusters), and the proxy running them. */
const gatewayOnce = fixture(async (cleanup) => {
  const tailnet = await discoveryTailnet();
  const gw = tailnet.node("gw");
  const backend = echoBackend();
  cleanup.defer(() => backend.close());
  const echo = tcpEcho();
  cleanup.defer(() => echo.close());
  const ports = allocatePorts([...PORT_NAMES]);
  const port = (name: typeof PORT_NAMES[number]) => ports.get(name)!;
  const egConfig = await GatewayEnvoyConfig.create({ adminPort: port("admin"), authzPort: port("authz") });
  cleanup.defer(() => egConfig.remove());
  const clusters: GatewayCluster[] = [
    { name: "httproute/default/web/rule/0", port: backend.port },
    { name: "tcproute/default/echo/rule/-1", port: echo.port },
    { name: "tcproute/default/flaky/rule/-1", port: port("flakyBackend"), healthChecked: true },
  ];
  const httpListener: GatewayListener = {
    name: "default/eg/http",
    port: port("http"),
    kind: "http",
    routes: [
      { prefix: "/nox", cluster: clusters[0].name, authzListener: null },
      { prefix: "/open", cluster: clusters[0].name }, // no SecurityPolicy on this route
      { prefix: "/", cluster: clusters[0].name, authzListener: "http" },
    ],
  };
  const tcpListener: GatewayListener = {
    name: "default/eg/tcp",
    port: port("tcp"),
    kind: "tcp",
    cluster: clusters[1].name,
  };
  const flakyListener: GatewayListener = {
    name: "default/eg/flaky",
    port: port("flaky"),
    kind: "tcp",
    cluster: clusters[2].name,
  };
  const listeners = [httpListener, tcpListener, flakyListener];
  await egConfig.write(listeners, clusters);
  const dir = await tempDir(cleanup, "tailvoy-discovery-");
  const file = join(dir, "gateway.yaml");
  await Deno.writeTextFile(
    file,
    [
      "tailscale:",
      "  serviceMappings:",
      '    gw: ["^default/eg/(http|tcp)"]',
      '    flaky: ["flaky$"]',
      "discovery:",
      `  envoyAdmin: http://127.0.0.1:${port("admin")}`,
      "  envoyAddress: 127.0.0.1",
      "  pollInterval: 300ms",
      "  proxyProtocol: v2",
      '  listenerFilter: "^default/"',
      "  unhealthyThreshold: 2",
      "tailvoy:",
      `  adminAddress: "127.0.0.1:0"`,
      `  envoyBinary: ${join(Deno.cwd(), ".peers", "bin", "envoy")}`,
      "  timeouts: {drain: 1s, unadvertiseGrace: 0s, recheck: 500ms}",
      "",
    ].join("\n"),
  );
  using api = new LocalApiClient(gw.socket);
  const prefsBefore = await api.getPrefs();
  const proxy = new Proxy(file, gw.socket, {
    args: ["--authz-addr", `127.0.0.1:${port("authz")}`, "--", "-c", egConfig.bootstrapPath],
  });
  cleanup.defer(async () => void await proxy.stop());
  try {
    await proxy.waitLog(/"message":"ready: discovery mode/, "ready");
    await proxy.waitLog(/discovered 3 Envoy listeners/, "first discovery");
  } catch (err) {
    console.error(proxy.lines.slice(-40).join("\n"));
    throw err;
  }
  return { proxy, port, egConfig, clusters, listeners, prefsBefore };
});

/** The tailnet with this file's policy. */
async function discoveryTailnet() {
  const tailnet = await tailnetOnce();
  await tailnet.usePolicy(gatewayPolicy());
  return tailnet;
}

/** The running gateway with this file's policy in place, and ways to call it from a node. */
async function gateway() {
  const g = await gatewayOnce();
  const tailnet = await discoveryTailnet();
  const gw = tailnet.node("gw");
  const get = (who: string, path: string, options: Parameters<typeof http>[2] = {}) =>
    tailnet.dial(who, gw.ipv4, g.port("http")).then((c) => http(c, path, options));
  const tcpSays = async (who: string, listenerPort: number) => {
    // tailscaled refuses a port nothing is served on: a refusal too.
    const c = await tailnet.dial(who, gw.ipv4, listenerPort).catch(() => undefined);
    if (!c) return null;
    await c.write(enc.encode("hi")).catch(() => {});
    const got = await readSome(c);
    closeQuietly(c);
    return got;
  };
  return { ...g, tailnet, gw, get, tcpSays };
}

/** Runs `fn`; on failure prints the proxy's last log lines, as they explain most failures here. */
function withLog(fn: (g: Awaited<ReturnType<typeof gateway>>) => Promise<void>): () => Promise<void> {
  return async () => {
    const g = await gateway();
    try {
      await fn(g);
    } catch (err) {
      console.error(g.proxy.lines.slice(-40).join("\n"));
      throw err;
    }
  };
}

/** The pid of the Envoy that is running now: the last one logged ready. */
function envoyPid(proxy: Proxy): number {
  const line = proxy.lines.findLast((l) => /Envoy (is )?ready (again )?\(pid/.test(l));
  assert.ok(line, "Envoy was logged ready");
  return JSON.parse(line).pid;
}

Deno.test(
  "discovery: the listeners Envoy reports are found (filter applied) and counted in /metrics",
  withLog(async ({ proxy, port }) => {
    const line = JSON.parse(proxy.lines.find((l) => /discovered 3 Envoy listeners/.test(l))!);
    assert.deepEqual(line.listeners, [
      `default/eg/flaky (tcp :${port("flaky")})`,
      `default/eg/http (http :${port("http")})`,
      `default/eg/tcp (tcp :${port("tcp")})`,
    ]);
    const adminLine = await proxy.waitLog(/"logger":"tailvoy.admin"/, "admin server address");
    const metrics = await (await fetch(`http://${JSON.parse(adminLine).addr}/metrics`)).text();
    assert.match(metrics, /tailvoy_discovered_listeners\{kind="http"\} 1/);
    assert.match(metrics, /tailvoy_discovered_listeners\{kind="tcp"\} 2/);
    assert.match(metrics, /tailvoy_discovery_polls_total\{what="listeners",result="ok"\} [1-9]/);
    const ready = await fetch(`http://${JSON.parse(adminLine).addr}/readyz`);
    assert.equal(ready.status, 200, await ready.text());
  }),
);

Deno.test(
  "discovery: tcp_proxy listener: alice reaches the backend through Envoy; bob is refused",
  withLog(async ({ proxy, port, tcpSays }) => {
    assert.equal(await tcpSays("alice", port("tcp")), "echo:hi");
    // bob's first packets to a fresh gw may be lost before WireGuard is up: try until one reaches us.
    await waitFor(async () => {
      assert.equal(await tcpSays("bob", port("tcp")), null, "bob never gets an answer");
      return proxy.lines.find((l) => /refused on .*default\/eg\/tcp/.test(l));
    }, { what: "bob refused on the tcp listener", timeoutMs: 20_000 });
  }),
);

Deno.test(
  "discovery: HTTP listener: ext_authz judges each request with the caller from the PROXY header",
  withLog(async ({ tailnet, get }) => {
    const ok = await get("alice", "/api/users", {
      headers: { "X-Tailscale-User": "mallory@example.com" },
    });
    assert.equal(ok.status, 200, ok.body);
    const seen = JSON.parse(ok.body);
    assert.equal(seen.path, "/api/users");
    assert.equal(
      seen.headers["x-tailscale-user"],
      "alice",
      "identity set by ext_authz, client copy replaced",
    );
    assert.equal(seen.headers["x-tailscale-ip"], tailnet.node("alice").ipv4);
    const denied = await get("alice", "/admin");
    assert.equal(denied.status, 403);
    assert.match(denied.body, /access denied by tailvoy policy/);
    // Route with ext_authz but no contextExtensions: the listener is the one on that port.
    assert.equal((await get("ci", "/nox/x")).status, 200);
    assert.equal((await get("ci", "/nox/x", { method: "POST" })).status, 403, "ci's grant is GET only");
    assert.equal((await get("alice", "/nox/x")).status, 403, "alice's grant names listener http only");
  }),
);

Deno.test(
  "discovery: HTTP listener: a caller without any grant never reaches Envoy, even on a route without a SecurityPolicy",
  withLog(async ({ proxy, get }) => {
    assert.equal((await get("alice", "/open")).status, 200);
    const bob = await get("bob", "/open");
    assert.equal(bob.status, 0, "connection closed without a response");
    await proxy.waitLog(/caller holds no tailvoy grant/, "bob refused before Envoy");
  }),
);

Deno.test(
  "discovery: a listener added to Envoy is served; removed, it is gone",
  withLog(async ({ proxy, port, egConfig, clusters, listeners, tcpSays }) => {
    const tcp2: GatewayListener = {
      name: "default/eg/tcp2",
      port: port("tcp2"),
      kind: "tcp",
      cluster: clusters[1].name,
    };
    await egConfig.write([...listeners, tcp2], clusters);
    try {
      await proxy.waitLog(/"count":4,"added":"default\/eg\/tcp2"/, "tcp2 discovered");
      assert.equal(await tcpSays("alice", port("tcp2")), "echo:hi");
    } finally {
      await egConfig.write(listeners, clusters);
    }
    await proxy.waitLog(/"count":3,"added":"","removed":"default\/eg\/tcp2"/, "tcp2 removed");
    assert.equal(await tcpSays("alice", port("tcp2")), null);
    assert.equal(await tcpSays("alice", port("tcp")), "echo:hi", "the others keep working");
  }),
);

Deno.test(
  "discovery: health: a Service whose cluster fails health checks is withheld, then advertised again",
  withLog(async ({ proxy, port, gw }) => {
    using api = new LocalApiClient(gw.socket);
    const advertised = async () => (await api.getPrefs()).AdvertiseServices;
    await waitFor(async () => (await advertised()).includes("svc:gw") ? true : undefined, {
      what: "svc:gw advertised",
      timeoutMs: 10_000,
    });
    // flaky's backend is down from the start: withheld after two unhealthy polls.
    await proxy.waitLog(
      /no healthy host.*"svc":"svc:flaky","clusters":"tcproute\/default\/flaky\/rule\/-1"/,
      "flaky withheld",
    );
    assert.ok(!(await advertised()).includes("svc:flaky"));
    assert.ok((await advertised()).includes("svc:gw"), "the healthy Service stays advertised");
    const up = Deno.listen({ hostname: "127.0.0.1", port: port("flakyBackend") });
    try {
      await proxy.waitLog(/healthy backends again.*"svc":"svc:flaky"/, "flaky back");
      await waitFor(async () => (await advertised()).includes("svc:flaky") ? true : undefined, {
        what: "svc:flaky advertised again",
        timeoutMs: 10_000,
      });
    } finally {
      up.close();
    }
  }),
);

Deno.test(
  "discovery: a revoked grant closes an open HTTP connection at the next re-check",
  withLog(async ({ proxy, tailnet, gw, port, get }) => {
    const conn = await tailnet.dial("alice", gw.ipv4, port("http"));
    await conn.write(enc.encode("GET /api/x HTTP/1.1\r\nHost: app\r\n\r\n"));
    assert.match((await readSome(conn)) ?? "", /^HTTP\/1\.1 200/);
    const revoked = gatewayPolicy();
    revoked.grants = (revoked.grants as { src: string[] }[]).filter((g) => !g.src.includes("group:eng"));
    await tailnet.usePolicy(revoked);
    try {
      await proxy.waitLog(/closing flow .*caller holds no tailvoy grant any more/, "alice's flow closed");
      let chunks = 0;
      while ((await readSome(conn)) !== null) assert.ok(++chunks < 10, "the connection is closed");
    } finally {
      await tailnet.usePolicy(gatewayPolicy());
    }
    await waitFor(async () => (await get("alice", "/api/x")).status === 200 ? true : undefined, {
      what: "alice allowed again",
      timeoutMs: 15_000,
    });
  }),
);

Deno.test(
  "discovery: Envoy draining (as Envoy Gateway's shutdown manager does): every Service is unadvertised, and back when it is LIVE again",
  withLog(async ({ proxy, port, gw, prefsBefore, tcpSays }) => {
    using api = new LocalApiClient(gw.socket);
    const advertised = async () =>
      (await api.getPrefs()).AdvertiseServices.filter((s) => s.startsWith("svc:"));
    const admin = `http://127.0.0.1:${port("admin")}`;
    await (await fetch(`${admin}/healthcheck/fail`, { method: "POST" })).text();
    try {
      await proxy.waitLog(/Envoy is draining: no longer advertising/, "Services unadvertised while draining");
      assert.deepEqual(
        await advertised(),
        prefsBefore.AdvertiseServices.filter((s) => s.startsWith("svc:")),
      );
    } finally {
      await (await fetch(`${admin}/healthcheck/ok`, { method: "POST" })).text();
    }
    await waitFor(async () => (await advertised()).includes("svc:gw") ? true : undefined, {
      what: "svc:gw advertised again",
      timeoutMs: 10_000,
    });
    assert.equal(await tcpSays("alice", port("tcp")), "echo:hi");
  }),
);

Deno.test(
  "discovery: Envoy killed: tailvoy restarts it, and the tailnet listeners stay while it comes back",
  withLog(async ({ proxy, port, get, tcpSays }) => {
    const first = envoyPid(proxy);
    const before = proxy.lines.length;
    Deno.kill(first, "SIGKILL");
    await waitFor(() => proxy.lines.slice(before).some((l) => /Envoy is ready again/.test(l)) || undefined, {
      what: "proxy log: Envoy restarted",
      timeoutMs: 20_000,
    });
    assert.equal(await tcpSays("alice", port("tcp")), "echo:hi");
    assert.equal((await get("alice", "/api/users")).status, 200);
    const churn = proxy.lines.slice(before).filter((l) => /discovered \d+ Envoy listeners/.test(l));
    assert.deepEqual(churn, [], "no listener was removed or re-added around the restart");
  }),
);

Deno.test(
  "discovery: SIGTERM: exit 0, Envoy stopped, Services unadvertised, serve entries removed",
  withLog(async ({ proxy, port, gw, prefsBefore }) => {
    const pid = envoyPid(proxy);
    assert.equal(await proxy.stop(), 0);
    const alive = await Deno.stat(`/proc/${pid}`).then(() => true, () => false);
    assert.equal(alive, false, "Envoy exited with tailvoy");
    using api = new LocalApiClient(gw.socket);
    const prefs = await api.getPrefs();
    assert.deepEqual(prefs.AdvertiseServices, prefsBefore.AdvertiseServices);
    const serve = await api.getServeConfig();
    assert.equal(
      JSON.stringify(serve.config).includes(String(port("tcp"))),
      false,
      JSON.stringify(serve.config),
    );
  }),
);
