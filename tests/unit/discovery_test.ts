/**
 * Discovery mode, pure parts: reading Envoy's admin answers (fixtures captured from Envoy 1.40 running
 * listeners shaped like Envoy Gateway's: an HCM with inline routes and ext_authz, an HCM on RDS with
 * weighted clusters, a tcp_proxy, a udp_proxy; one cluster failing its active health check), the
 * health table, and the plan the data plane runs. Capture: `scripts/harness/gateway_envoy.ts`-style
 * config, then `curl 127.0.0.1:ADMIN/config_dump?resource=dynamic_listeners` (and
 * `?resource=dynamic_route_configs`, `/clusters?format=json`).
 */

import assert from "node:assert/strict";
import { join } from "node:path";
import { type DiscoveryConfig, parseConfig } from "../../lib/config/mod.ts";
import {
  assessService,
  type ClusterHealth,
  envoyAdminOf,
  parseClusterHealth,
  parseListeners,
  readClusterHealth,
  readListeners,
  ServiceHealthTracker,
} from "../../lib/discovery/mod.ts";
import { mergeEnvoyArgs } from "../../lib/envoy/mod.ts";
import { PROJECT_ROOT } from "../../scripts/harness/peers.ts";

const FIXTURES = join(PROJECT_ROOT, "tests", "fixtures", "discovery");
const fixture = async (name: string) => JSON.parse(await Deno.readTextFile(join(FIXTURES, name)));

Deno.test("parseListeners: Envoy 1.40's dynamic listeners, kinds, PROXY filter and clusters (RDS, weighted, tcp, udp)", async () => {
  const listeners = parseListeners(await fixture("dynamic_listeners.json"), {
    routeConfigs: await fixture("dynamic_route_configs.json"),
  });
  assert.deepEqual(listeners, [
    {
      name: "default/eg/grpc",
      port: 10443,
      kind: "http",
      proxyProtocol: false,
      clusters: ["grpcroute/default/a/rule/0", "grpcroute/default/b/rule/0"],
    },
    {
      name: "default/eg/http",
      port: 10080,
      kind: "http",
      proxyProtocol: true,
      clusters: ["httproute/default/backend/rule/0"],
    },
    {
      name: "default/eg/tcp",
      port: 10090,
      kind: "tcp",
      proxyProtocol: false,
      clusters: ["tcproute/default/echo/rule/-1"],
    },
    {
      name: "default/eg/udp",
      port: 10053,
      kind: "udp",
      proxyProtocol: false,
      clusters: ["udproute/default/dns/rule/-1"],
    },
  ]);
  // ext_authz's own cluster (grpc_service.envoy_grpc.cluster_name) is not a backend of the listener.
  assert.ok(!listeners.some((l) => l.clusters.includes("authz")));
});

Deno.test("parseListeners: filter, warming and port-0 listeners left out, RDS not yet known, bad answers", () => {
  const dump = {
    configs: [
      {
        name: "a",
        active_state: { listener: { name: "a", address: { socket_address: { port_value: 1 } } } },
      },
      { name: "warming", warming_state: { listener: { address: { socket_address: { port_value: 2 } } } } },
      { name: "internal", active_state: { listener: { address: { socket_address: { port_value: 0 } } } } },
      { name: "skip", active_state: { listener: { address: { socket_address: { port_value: 3 } } } } },
      {
        name: "rds",
        active_state: {
          listener: {
            address: { socket_address: { port_value: 4 } },
            filter_chains: [{
              filters: [{
                name: "envoy.filters.network.http_connection_manager",
                typed_config: { rds: { route_config_name: "missing" } },
              }],
            }],
          },
        },
      },
    ],
  };
  const names = (l: { name: string }[]) => l.map((x) => x.name);
  assert.deepEqual(names(parseListeners(dump)), ["a", "rds", "skip"]);
  assert.deepEqual(names(parseListeners(dump, { filter: /^(a|rds)$/ })), ["a", "rds"]);
  assert.deepEqual(parseListeners(dump).find((l) => l.name === "rds")?.clusters, []);
  assert.deepEqual(parseListeners({}), []);
  // Only route actions count: a mirror or a JWKS fetch names a cluster that is not a backend.
  const extras = parseListeners({
    configs: [{
      name: "h",
      active_state: {
        listener: {
          address: { socket_address: { port_value: 5 } },
          filter_chains: [{
            filters: [{
              name: "envoy.filters.network.http_connection_manager",
              typed_config: {
                http_filters: [{
                  name: "envoy.filters.http.jwt_authn",
                  typed_config: { providers: { p: { remote_jwks: { http_uri: { cluster: "jwks" } } } } },
                }],
                route_config: {
                  virtual_hosts: [{
                    routes: [{
                      route: { cluster: "app", request_mirror_policies: [{ cluster: "mirror" }] },
                    }],
                  }],
                },
              },
            }],
          }],
        },
      },
    }],
  });
  assert.deepEqual(extras[0].clusters, ["app"]);
  assert.throws(() => parseListeners({ configs: "nope" }), /not a config dump.*envoyAdmin/);
});

Deno.test("parseClusterHealth: an actively failed host counts as unhealthy although its EDS status says HEALTHY", async () => {
  const health = parseClusterHealth(await fixture("clusters.json"));
  assert.deepEqual(health.get("httproute/default/backend/rule/0"), { healthy: 0, total: 1 });
  assert.deepEqual(health.get("tcproute/default/echo/rule/-1"), { healthy: 1, total: 1 });
  const flags = parseClusterHealth({
    cluster_statuses: [{
      name: "c",
      host_statuses: [
        { health_status: { eds_health_status: "DEGRADED" } },
        { health_status: {} },
        { health_status: { eds_health_status: "UNHEALTHY" } },
        { health_status: { failed_outlier_check: true, eds_health_status: "HEALTHY" } },
        { health_status: { eds_health_status: "DRAINING" } },
      ],
    }],
  });
  assert.deepEqual(flags.get("c"), { healthy: 2, total: 5 });
  assert.throws(() => parseClusterHealth({ cluster_statuses: [{}] }), /not cluster statuses/);
});

Deno.test("health table: any/all, unknown clusters, thresholds, recovery", () => {
  const h = (entries: Record<string, number>) =>
    new Map<string, ClusterHealth>(Object.entries(entries).map(([k, v]) => [k, { healthy: v, total: 1 }]));
  const table: [string, string[], Record<string, number>, "any" | "all", boolean][] = [
    ["all healthy", ["a", "b"], { a: 1, b: 2 }, "any", true],
    ["one dead, any", ["a", "b"], { a: 0, b: 1 }, "any", false],
    ["one dead, all", ["a", "b"], { a: 0, b: 1 }, "all", true],
    ["all dead, all", ["a", "b"], { a: 0, b: 0 }, "all", false],
    ["unknown cluster counts as healthy", ["x"], { a: 0 }, "any", true],
    ["no clusters", [], {}, "all", true],
  ];
  for (const [what, clusters, health, policy, healthy] of table) {
    assert.equal(assessService(clusters, h(health), { policy }).healthy, healthy, what);
  }

  const tracker = new ServiceHealthTracker({ policy: "any", threshold: 2 });
  const svcs = new Map([["svc:web", ["a"]], ["svc:db", ["b"]]]);
  assert.deepEqual(tracker.update(svcs, h({ a: 0, b: 1 })), [], "first unhealthy poll: below the threshold");
  assert.deepEqual(tracker.update(svcs, h({ a: 1, b: 1 })), [], "a healthy poll resets the count");
  assert.deepEqual(tracker.update(svcs, h({ a: 0, b: 1 })), []);
  assert.deepEqual(tracker.update(svcs, h({ a: 0, b: 1 })), [{
    svc: "svc:web",
    advertise: false,
    dead: ["a"],
  }]);
  assert.deepEqual([...tracker.withheld], ["svc:web"]);
  assert.deepEqual(tracker.update(svcs, h({ a: 0, b: 1 })), [], "reported once");
  assert.deepEqual(tracker.update(svcs, h({ a: 1, b: 1 })), [{ svc: "svc:web", advertise: true, dead: [] }]);
  tracker.update(svcs, h({ a: 0 }));
  tracker.update(svcs, h({ a: 0 }));
  assert.deepEqual([...tracker.withheld], ["svc:web"]);
  // New settings (reload) keep what is withheld and the counts so far.
  tracker.settings = { policy: "all", threshold: 5 };
  assert.deepEqual([...tracker.withheld], ["svc:web"]);
  assert.deepEqual(tracker.update(svcs, h({ a: 1 })), [{ svc: "svc:web", advertise: true, dead: [] }]);
  tracker.update(svcs, h({ a: 0 }));
  tracker.update(svcs, h({ a: 0 }));
  assert.deepEqual(tracker.update(new Map([["svc:db", ["b"]]]), h({})), [], "a Service gone is forgotten");
  assert.deepEqual([...tracker.withheld], []);
});

async function discoveryConfig(extra = "") {
  return await parseConfig(
    [
      "tailscale: {serviceMappings: {web: ['^default/eg/']}}",
      "discovery:",
      "  envoyAdmin: http://127.0.0.1:19000",
      "  envoyAddress: 127.0.0.1",
      extra,
    ].join("\n"),
    { env: {} },
  );
}

Deno.test("discovery config: direct ingress is refused with the reason", async () => {
  await assert.rejects(
    () => discoveryConfig("tailvoy: {ingress: direct}"),
    /tailvoy\.ingress.*direct ingress cannot be used in discovery mode/s,
  );
});

Deno.test("discovery's admin reads: unreachable, error status, non-JSON and Envoy's state name the URL and discovery.envoyAdmin", async () => {
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen: () => {} }, (req) => {
    const path = new URL(req.url).pathname;
    if (path === "/clusters") return new Response("boom", { status: 500 });
    // An Envoy still waiting for its first xDS answer (as after a restart): no listeners yet.
    if (path === "/ready") return new Response("PRE_INITIALIZING\n", { status: 503 });
    return new Response("<html>not envoy</html>");
  });
  const adminAt = (envoyAdmin: string) => envoyAdminOf({ envoyAdmin } as DiscoveryConfig);
  try {
    const admin = adminAt(`http://127.0.0.1:${server.addr.port}`);
    await assert.rejects(() => readClusterHealth(admin), /\/clusters\?format=json answered 500: boom/);
    await assert.rejects(
      () => readListeners(admin),
      /did not answer JSON: is discovery.envoyAdmin Envoy's admin API/,
    );
    assert.equal(await admin.readyState(), "PRE_INITIALIZING");
  } finally {
    await server.shutdown();
  }
  const closed = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = closed.addr.port;
  closed.close();
  await assert.rejects(
    () => readListeners(adminAt(`http://127.0.0.1:${port}/`)),
    /Envoy admin http:\/\/127\.0\.0\.1:\d+\/config_dump\?resource=dynamic_\w+ is unreachable .*check discovery\.envoyAdmin/,
  );
});

Deno.test("mergeEnvoyArgs: -c is the user's only when their arguments configure Envoy alone", () => {
  assert.throws(
    () => mergeEnvoyArgs(["-c", "ours.json"], ["-c", "theirs.yaml"]),
    /would replace tailvoy's bootstrap/,
  );
  assert.deepEqual(
    mergeEnvoyArgs(["--log-level", "warn"], ["-c", "eg.yaml", "--log-level", "info"], { external: true }),
    ["-c", "eg.yaml", "--log-level", "info"],
  );
});
