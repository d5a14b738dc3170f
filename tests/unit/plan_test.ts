/**
 * Planning (`lib/modes/plan.ts`): what listeners the data plane runs, from the config's listeners and
 * from Envoy's discovered ones (fixtures captured from Envoy 1.40 under Envoy Gateway).
 */

import assert from "node:assert/strict";
import { join } from "node:path";
import { parseConfig } from "../../lib/config/mod.ts";
import { parseListeners } from "../../lib/discovery/mod.ts";
import type { L7Target } from "../../lib/l4/mod.ts";
import { planDiscovered, planListeners } from "../../lib/modes/plan.ts";
import { PROJECT_ROOT } from "../../scripts/harness/peers.ts";

const FIXTURES = join(PROJECT_ROOT, "tests", "fixtures", "discovery");
const fixture = async (name: string) => JSON.parse(await Deno.readTextFile(join(FIXTURES, name)));

function discoveryConfig(extra = "") {
  return parseConfig(
    [
      "tailscale: {tags: ['tag:gw'], serviceMappings: {web: ['^default/eg/']}}",
      "discovery:",
      "  envoyAdmin: http://127.0.0.1:19000",
      "  envoyAddress: 127.0.0.1",
      extra,
    ].join("\n"),
    { env: {} },
  );
}

Deno.test("planDiscovered: tcp relayed with PROXY where Envoy reads it, HTTP to Envoy with a grant pre-check, UDP left out", async () => {
  const listeners = parseListeners(await fixture("dynamic_listeners.json"), {
    routeConfigs: await fixture("dynamic_route_configs.json"),
  });
  const plan = planDiscovered(await discoveryConfig("  proxyProtocol: v2"), listeners);
  const byName = new Map(plan.specs.map((s) => [s.name, s]));
  assert.deepEqual([...byName.keys()].sort(), ["default/eg/grpc", "default/eg/http", "default/eg/tcp"]);
  assert.deepEqual(byName.get("default/eg/tcp"), {
    name: "default/eg/tcp",
    ingress: "serve",
    port: 10090,
    services: ["svc:web"],
    protocol: "tcp",
    backend: "127.0.0.1:10090",
    proxyProtocol: undefined,
  });
  assert.deepEqual(byName.get("default/eg/http")?.l7, {
    hostname: "127.0.0.1",
    port: 10080,
    proxyProtocol: true,
    requireGrant: true,
  });
  assert.equal(byName.get("default/eg/http")?.protocol, "http");
  assert.equal(byName.get("default/eg/grpc")?.l7?.proxyProtocol, false, "its Envoy listener reads no PROXY");
  assert.deepEqual(plan.warnings.map((w) => [w.listener, w.message.slice(0, 40)]), [
    ["default/eg/grpc", "Envoy's listener has no proxy_protocol l"],
    ["default/eg/grpc", "HTTP listener without PROXY protocol: En"],
    ["default/eg/tcp", "Envoy's listener has no proxy_protocol l"],
    ["default/eg/udp", "UDP listeners are not exposed in discove"],
  ]);

  const withProxy = listeners.map((l) => ({ ...l, proxyProtocol: true }));
  const on = planDiscovered(await discoveryConfig("  proxyProtocol: v2"), withProxy);
  assert.deepEqual(
    on.specs.filter((s) => s.proxyProtocol).map((s) => [s.name, s.proxyProtocol]),
    [["default/eg/tcp", { version: "v2", tlvs: [] }]],
    "a PROXY header without identity TLVs, only where Envoy reads one",
  );
  const off = planDiscovered(await discoveryConfig(), withProxy);
  assert.deepEqual(
    off.specs.filter((s) => s.proxyProtocol).map((s) => s.name),
    [],
    "no proxyProtocol: v2, no header",
  );
  assert.equal(off.specs.find((s) => s.name === "default/eg/http")?.l7?.proxyProtocol, false);
  assert.ok(
    off.warnings.some((w) => w.listener === "default/eg/tcp" && /expects a PROXY header/.test(w.message)),
    "a listener waiting for a PROXY header that will not come is reported",
  );
});

Deno.test("planListeners: the config's listeners, Services for serve ingress, L7 only with an Envoy target", async () => {
  const config = await parseConfig(
    [
      "tailscale: {tags: ['tag:gw'], serviceMappings: {db: ['^db$'], web: ['^web$'], tls: ['^tls$']}}",
      "listeners:",
      "  db: {protocol: tcp, port: 5432, backend: '127.0.0.1:5432', proxyProtocol: {version: v2, tlvs: [login]}}",
      "  dns: {protocol: udp, port: 53, backend: '127.0.0.1:5353'}",
      "  web: {protocol: http, port: 80, backend: '127.0.0.1:8080', shadow: true}",
      "  tls: {protocol: tls, port: 443, routes: [{hostname: a.example.com, backend: '127.0.0.1:8443'}]}",
    ].join("\n"),
    { env: {} },
  );
  const bare = planListeners(config, {});
  assert.deepEqual(bare.specs.map((s) => s.name), ["db", "dns", "tls"]);
  assert.deepEqual(bare.warnings, [{
    listener: "web",
    message: "http needs Envoy, which is not running: not started",
  }]);
  const db = bare.specs.find((s) => s.name === "db")!;
  assert.deepEqual(db.services, ["svc:db"]);
  assert.deepEqual(db.proxyProtocol, { version: "v2", tlvs: ["login"] });
  assert.deepEqual(bare.specs.find((s) => s.name === "dns")?.services, [], "udp is never a Service");
  assert.deepEqual(bare.specs.find((s) => s.name === "tls")?.routes, [
    { hostname: "a.example.com", backend: "127.0.0.1:8443", proxyProtocol: undefined },
  ]);

  const target: L7Target = { hostname: "127.0.0.1", port: 10001 };
  const withEnvoy = planListeners(config, { l7Targets: new Map([["web", target]]) });
  const web = withEnvoy.specs.find((s) => s.name === "web")!;
  assert.equal(web.l7, target);
  assert.equal(web.shadow, true);
  assert.deepEqual(web.services, ["svc:web"]);
  assert.deepEqual(withEnvoy.warnings, []);
});

Deno.test("planListeners and planDiscovered: the egress block's listeners and compiled rules, in both modes", async () => {
  const egress = [
    "egress:",
    "  aliases: {db.corp: pg}",
    "  rules: [{name: db, hosts: [pg], ports: [5432]}, {}]",
    "  listeners:",
    '    proxy: {address: "127.0.0.1:1055", protocols: [http, socks5]}',
    '    pg: {address: "127.0.0.1:5432", target: "pg:5432"}',
  ].join("\n");
  const standalone = planListeners(await parseConfig(egress, { env: {} }), {});
  assert.deepEqual(standalone.specs, []);
  assert.deepEqual(standalone.egress?.listeners.map((l) => [l.name, l.protocols, l.target]), [
    ["proxy", ["http", "socks5"], undefined],
    ["pg", undefined, { host: "pg", port: 5432 }],
  ]);
  assert.deepEqual(standalone.egress?.policy.rules.map((r) => r.name), ["db", "rules[1]"]);
  assert.deepEqual(standalone.egress?.policy.aliases, { "db.corp": { host: "pg" } });
  const gateway = planDiscovered(await discoveryConfig(egress), []);
  assert.deepEqual(gateway.egress?.listeners.map((l) => l.name), ["proxy", "pg"]);
  assert.equal(planListeners(await discoveryConfig(), {}).egress, undefined, "no block, no egress");
});
