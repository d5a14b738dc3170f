/**
 * Tests of the Envoy bootstrap renderer (lib/envoy/bootstrap.ts): every example and fixture config
 * with L7 listeners is rendered, checked structurally, and run through the real Envoy 1.40's
 * `--mode validate`; then the routing, TLS and cluster rules one by one.
 *
 * Envoy's validate mode loads certificate files, so TLS paths are pointed at the test certificate in
 * tests/fixtures/envoy/ (self-signed, test only).
 */

import { OVERRIDE_HEADERS } from "../../lib/config/constants.ts";
import assert from "node:assert/strict";
import { join } from "node:path";
import { type Config, loadConfig, parseConfig } from "../../lib/config/mod.ts";
import {
  AUTHZ_CLUSTER,
  type EnvoyBootstrap,
  EnvoyError,
  EnvoySupervisor,
  type JsonObject,
  type JsonValue,
  l7ListenerNames,
  type NamedResource,
  renderBootstrap,
  type RenderOptions,
  serializeBootstrap,
} from "../../lib/envoy/mod.ts";
import { PEER_BINS, PROJECT_ROOT } from "../../scripts/harness/peers.ts";

const CONFIG_FIXTURES = join(PROJECT_ROOT, "tests", "fixtures", "config");
const EXAMPLE = join(PROJECT_ROOT, "examples", "config.yaml");
const TEST_TLS = {
  cert: join(PROJECT_ROOT, "tests", "fixtures", "envoy", "test.crt"),
  key: join(PROJECT_ROOT, "tests", "fixtures", "envoy", "test.key"),
};
const ENV = { CERT_DIR: "/certs", API_PORT: "50051" };
const AUTHZ = "/run/tailvoy-test/authz.sock";
const SECRET = "tailvoy-test-secret-0123456789abcdef";
const HCM = "envoy.filters.network.http_connection_manager";
const EXT_AUTHZ = "envoy.filters.http.ext_authz";
const H2 = { http2_protocol_options: {} };
const H1 = { http_protocol_options: {} };
const HTTP_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions";

// ---------------------------------------------------------------------------------------------
// helpers

/** Points every certificate of `config` at the test certificate (Envoy's validate mode reads them). */
function withTestCerts(config: Config): Config {
  for (const listener of Object.values(config.listeners)) {
    if (listener.tls) listener.tls = { ...TEST_TLS };
    for (const route of listener.routes) if (route.tls) route.tls = { ...TEST_TLS };
  }
  return config;
}

function portsFor(config: Pick<Config, "listeners">, base = 20000): Map<string, number> {
  return new Map(l7ListenerNames(config).map((name, i) => [name, base + i]));
}

function render(config: Config, options: Partial<RenderOptions> = {}): EnvoyBootstrap {
  return renderBootstrap(config, {
    listenerPorts: portsFor(config),
    authzSocket: AUTHZ,
    secret: SECRET,
    ...options,
  });
}

/** A config from YAML listeners (direct ingress, so no serviceMappings are needed). */
function configOf(listeners: string): Config {
  return withTestCerts(parseConfig(`tailvoy: { ingress: direct }\nlisteners:\n${listeners}`, { env: {} }));
}

/** `value` at a dotted path; array indexes are numbers in the path. */
function at(value: JsonValue | undefined, path: string): JsonValue | undefined {
  let current = value;
  for (const key of path.split(".")) {
    if (current === null || typeof current !== "object") return undefined;
    current = Array.isArray(current) ? current[Number(key)] : current[key];
  }
  return current;
}

const obj = (value: JsonValue | undefined) => value as JsonObject;
const arr = (value: JsonValue | undefined) => (value ?? []) as JsonObject[];

function listenerOf(bootstrap: EnvoyBootstrap, name: string): NamedResource {
  const listener = bootstrap.static_resources.listeners.find((l) => l.name === name);
  assert.ok(listener, `listener ${name} rendered`);
  return listener;
}

/** The HCM of a listener; every chain checks the relay secret first, then serves that HCM. */
function hcmOf(listener: JsonObject): JsonObject {
  const chains = arr(listener.filter_chains);
  assert.ok(chains.length > 0, "at least one filter chain");
  const hcm = obj(at(chains[0], "filters.1.typed_config"));
  for (const chain of chains) {
    assert.deepEqual(arr(chain.filters).map((f) => f.name), ["envoy.filters.network.rbac", HCM]);
    assert.deepEqual(at(chain, "filters.0.typed_config.rules"), {
      action: "ALLOW",
      policies: {
        "tailvoy-relay": {
          permissions: [{ any: true }],
          principals: [{
            sourced_metadata: {
              metadata_matcher: {
                filter: "envoy.filters.listener.proxy_protocol",
                path: [{ key: "tailvoy_secret" }],
                value: { string_match: { exact: SECRET } },
              },
            },
          }],
        },
      },
    }, "only connections whose PROXY header carries the secret get to HTTP");
    assert.deepEqual(at(chain, "filters.1.typed_config"), hcm, "every chain serves the same HCM");
  }
  return hcm;
}

function clusterOf(bootstrap: EnvoyBootstrap, name: string): NamedResource {
  const cluster = bootstrap.static_resources.clusters.find((c) => c.name === name);
  assert.ok(cluster, `cluster ${name} rendered`);
  return cluster;
}

/** The (match, target) of each route of a vhost, compactly. */
function routeSummary(vhost: JsonObject): string[] {
  return arr(vhost.routes).map((r) => {
    const target = r.route ? at(r, "route.cluster") : `direct ${at(r, "direct_response.status")}`;
    return `${JSON.stringify(r.match)} -> ${target}`;
  });
}

function vhostsOf(bootstrap: EnvoyBootstrap, listener: string): JsonObject[] {
  return arr(at(hcmOf(listenerOf(bootstrap, listener)), "route_config.virtual_hosts"));
}

/** The structural invariants every rendered bootstrap must hold. */
function assertInvariants(
  config: Config,
  bootstrap: EnvoyBootstrap,
  ports: Map<string, number>,
  what: string,
) {
  const names = l7ListenerNames(config);
  assert.deepEqual(
    bootstrap.static_resources.listeners.map((l) => l.name),
    names,
    `${what}: one per L7 listener`,
  );
  // The supervisor moves the admin API to a private unix socket when it writes the file.
  assert.deepEqual(at(bootstrap.admin, "address.socket_address"), { address: "127.0.0.1", port_value: 0 });
  const clusterNames = new Set(bootstrap.static_resources.clusters.map((c) => c.name));
  assert.equal(
    clusterNames.size,
    bootstrap.static_resources.clusters.length,
    `${what}: unique cluster names`,
  );

  for (const name of names) {
    const spec = config.listeners[name];
    const listener = listenerOf(bootstrap, name);
    const where = `${what}/${name}`;
    assert.deepEqual(at(listener, "address.socket_address"), {
      address: "127.0.0.1",
      port_value: ports.get(name),
    });

    // PROXY v2 mandatory, the secret TLV into metadata (the RBAC filter of each chain checks it).
    const pp = obj(at(listener, "listener_filters.0"));
    assert.equal(pp.name, "envoy.filters.listener.proxy_protocol", where);
    assert.equal(at(pp, "typed_config.allow_requests_without_proxy_protocol"), false);
    assert.deepEqual(at(pp, "typed_config.rules"), [{
      tlv_type: 0xe0,
      on_tlv_present: { key: "tailvoy_secret", metadata_namespace: "envoy.filters.listener.proxy_protocol" },
    }]);

    // HCM hygiene.
    const hcm = hcmOf(listener);
    for (
      const [key, value] of Object.entries({
        codec_type: "AUTO",
        use_remote_address: true,
        normalize_path: true,
        merge_slashes: true,
        path_with_escaped_slashes_action: "REJECT_REQUEST",
      })
    ) assert.equal(hcm[key], value, `${where}: ${key}`);
    assert.equal(at(hcm, "common_http_protocol_options.headers_with_underscores_action"), "REJECT_REQUEST");
    assert.deepEqual(hcm.upgrade_configs, [{ upgrade_type: "websocket" }]);
    // Envoy's own replies: JSON with the request id; ext_authz's denies keep their body.
    assert.deepEqual(at(hcm, "local_reply_config.body_format.json_format"), {
      error: "%RESPONSE_CODE_DETAILS%",
      status: "%RESPONSE_CODE%",
      message: "%LOCAL_REPLY_BODY%",
      requestId: "%REQ(X-REQUEST-ID)%",
    });
    assert.deepEqual(at(hcm, "local_reply_config.mappers.0.filter"), {
      response_flag_filter: { flags: ["UAEX"] },
    });
    assert.equal(typeof hcm.stat_prefix, "string");
    assert.doesNotMatch(String(hcm.stat_prefix), /\./, "stat prefix is one segment");

    // Filters: strip client identity and x-tailvoy-* headers, then ext_authz, then the router.
    const filters = arr(hcm.http_filters);
    assert.deepEqual(filters.map((f) => f.name), [
      "envoy.filters.http.header_mutation",
      EXT_AUTHZ,
      "envoy.filters.http.router",
    ]);
    assert.deepEqual(at(filters[0], "typed_config.mutations.request_mutations"), [
      { remove_on_match: { key_matcher: { prefix: "x-tailscale-" } } },
      { remove_on_match: { key_matcher: { prefix: "tailscale-" } } },
      { remove_on_match: { key_matcher: { prefix: "x-tailvoy-" } } },
      ...["forwarded", ...OVERRIDE_HEADERS.filter((h) => !spec.keepHeaders.includes(h))].map((exact) => ({
        remove_on_match: { key_matcher: { exact } },
      })),
    ]);
    const authz = obj(filters[1].typed_config);
    assert.equal(authz.failure_mode_allow, false);
    assert.equal(authz.transport_api_version, "V3");
    assert.deepEqual(authz.status_on_error, { code: "Forbidden" });
    assert.equal(authz.grpc_service, undefined);
    assert.deepEqual(at(authz, "http_service.server_uri"), {
      uri: "http://tailvoy-authz",
      cluster: AUTHZ_CLUSTER,
      timeout: "0.25s",
    });
    assert.equal(at(authz, "http_service.path_prefix"), "/check");
    // The caller and the Service from the connection, the listener as a constant of this listener.
    assert.deepEqual(at(authz, "http_service.authorization_request.headers_to_add"), [
      { key: "x-tailvoy-peer", value: "%DOWNSTREAM_REMOTE_ADDRESS%" },
      { key: "x-tailvoy-local", value: "%DOWNSTREAM_LOCAL_ADDRESS%" },
      // Listener names are letters, digits, dots, dashes and underscores: no format operators.
      { key: "x-tailvoy-listener", value: name },
      // Renamed: an authz request saying application/grpc made Envoy's timeout an allow (#32476).
      { key: "x-tailvoy-content-type", value: "%REQ(content-type)%" },
    ]);
    assert.deepEqual(at(authz, "allowed_headers.patterns"), [{ exact: "x-request-id" }]);
    assert.deepEqual(
      arr(at(authz, "http_service.authorization_response.allowed_upstream_headers.patterns")).map((p) =>
        p.exact
      ),
      [
        "x-tailscale-user",
        "x-tailscale-node",
        "x-tailscale-ip",
        "x-tailscale-tags",
        "tailscale-user-login",
        "tailscale-user-name",
        "tailscale-app-capabilities",
        "x-forwarded-for",
        "x-real-ip",
        "x-forwarded-host",
        "x-tailvoy-jwt-assertion",
      ],
    );

    // Every route reaches a cluster of the listener's upstream protocol, or is a 404 (judged first).
    const vhosts = arr(at(hcm, "route_config.virtual_hosts"));
    const domains = vhosts.flatMap((v) => v.domains as string[]);
    assert.equal(new Set(domains).size, domains.length, `${where}: unique domains`);
    assert.ok(domains.includes("*"), `${where}: a catch-all vhost`);
    let routed = 0;
    for (const vhost of vhosts) {
      for (const route of arr(vhost.routes)) {
        assert.equal(route.typed_per_filter_config, undefined, "ext_authz runs on every route");
        if (route.route) {
          routed++;
          assert.ok(clusterNames.has(String(at(route, "route.cluster"))), `${where}: cluster exists`);
          // Upstream protocol by listener protocol.
          const cluster = clusterOf(bootstrap, String(at(route, "route.cluster")));
          const options = obj(
            obj(
              cluster.typed_extension_protocol_options,
            )["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"],
          );
          assert.deepEqual(
            options.explicit_http_config,
            spec.protocol === "grpc" ? H2 : H1,
            `${where}: upstream`,
          );
        } else {
          assert.deepEqual(
            route.direct_response,
            { status: 404, body: { inline_string: "no route for this host and path" } },
            `${where}: the only other action is a 404`,
          );
        }
      }
    }
    assert.ok(routed > 0, `${where}: some route reaches a backend`);

    // TLS: https always, grpc with tls; never on http.
    const chains = arr(listener.filter_chains);
    const tlsChains = chains.filter((c) => c.transport_socket);
    if (spec.protocol === "http") assert.equal(tlsChains.length, 0, `${where}: no TLS on http`);
    if (spec.protocol === "https") {
      assert.equal(tlsChains.length, chains.length, `${where}: TLS on every chain`);
    }
    if (spec.protocol === "grpc" && spec.tls) assert.equal(tlsChains.length, chains.length);
    for (const chain of tlsChains) {
      const tls = obj(at(chain, "transport_socket.typed_config"));
      assert.equal(
        tls["@type"],
        "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
      );
      assert.deepEqual(at(tls, "common_tls_context.alpn_protocols"), ["h2", "http/1.1"]);
      assert.deepEqual(at(tls, "common_tls_context.tls_certificates.0"), {
        certificate_chain: { filename: TEST_TLS.cert },
        private_key: { filename: TEST_TLS.key },
      });
    }
    const sni = chains.some((c) => c.filter_chain_match);
    assert.equal(
      arr(listener.listener_filters).some((f) => f.name === "envoy.filters.listener.tls_inspector"),
      sni,
      `${where}: tls_inspector exactly when SNI selects a chain`,
    );
  }

  // The authz cluster: HTTP/1.1 to our server's unix socket.
  const authz = clusterOf(bootstrap, AUTHZ_CLUSTER);
  assert.equal(authz.type, "STATIC");
  assert.deepEqual(at(authz, "load_assignment.endpoints.0.lb_endpoints.0.endpoint.address"), {
    pipe: { path: AUTHZ },
  });
  assert.deepEqual(
    at(obj(obj(authz.typed_extension_protocol_options)[HTTP_OPTIONS]), "explicit_http_config"),
    H1,
  );
  for (const cluster of bootstrap.static_resources.clusters) {
    if (cluster.name === AUTHZ_CLUSTER) continue;
    const address = String(
      at(cluster, "load_assignment.endpoints.0.lb_endpoints.0.endpoint.address.socket_address.address"),
    );
    const ip = /^[\d.]+$/.test(address) || address.includes(":");
    assert.equal(cluster.type, ip ? "STATIC" : "STRICT_DNS", `${what}: ${cluster.name} type`);
    if (cluster.name !== AUTHZ_CLUSTER) assert.equal(cluster.connect_timeout, "5s");
  }
}

let envoyChecked = false;
async function requireEnvoy(): Promise<void> {
  if (envoyChecked) return;
  try {
    await Deno.stat(PEER_BINS.envoy);
    envoyChecked = true;
  } catch {
    assert.fail(`Envoy is not installed at ${PEER_BINS.envoy}: run \`deno task peers\``);
  }
}

// ---------------------------------------------------------------------------------------------
// Every config with L7 listeners: structure + envoy --mode validate

Deno.test("examples and fixtures: rendered, structurally sound, deterministic, accepted by envoy --mode validate", async () => {
  await requireEnvoy();
  const files = [EXAMPLE];
  for await (const entry of Deno.readDir(CONFIG_FIXTURES)) {
    if (entry.name.endsWith(".yaml")) files.push(join(CONFIG_FIXTURES, entry.name));
  }
  files.sort();
  const rendered: { file: string; bootstrap: EnvoyBootstrap }[] = [];
  for (const file of files) {
    let config: Config;
    try {
      config = withTestCerts(await loadConfig(file, { env: ENV }));
    } catch {
      continue; // configs that do not parse are config_test's (tailvoy's removed `service` key)
    }
    if (l7ListenerNames(config).length === 0) continue;
    const ports = portsFor(config);
    const bootstrap = render(config);
    const name = file.slice(PROJECT_ROOT.length);
    assertInvariants(config, bootstrap, ports, name);
    // Determinism: a fresh load and render gives the same bytes.
    const again = render(withTestCerts(await loadConfig(file, { env: ENV })));
    assert.equal(
      serializeBootstrap(again),
      serializeBootstrap(bootstrap),
      `${name}: byte-identical re-render`,
    );
    rendered.push({ file: name, bootstrap });
  }
  assert.ok(rendered.length >= 10, `rendered ${rendered.map((r) => r.file).join(", ")}`);
  const envoy = new EnvoySupervisor({ binary: PEER_BINS.envoy });
  const results = await Promise.allSettled(rendered.map((r) => envoy.validate(r.bootstrap)));
  const failures = results.flatMap((r, i) =>
    r.status === "rejected" ? [`${rendered[i].file}: ${r.reason}`] : []
  );
  assert.deepEqual(failures, [], failures.join("\n"));
});

// ---------------------------------------------------------------------------------------------
// Routing

Deno.test("routes: exact paths first, then longest /x/* prefix (path-separated), /*, then the backend", () => {
  const bootstrap = render(configOf(`
  web:
    port: 80
    protocol: http
    backend: 127.0.0.1:8080
    routes:
      - paths:
          /api/*: 127.0.0.1:8081
          /health: 127.0.0.1:8082
          /api/v1/*: 127.0.0.1:8083
          /: 127.0.0.1:8084
          /*: 127.0.0.1:8085
`));
  const [vhost, ...others] = vhostsOf(bootstrap, "web");
  assert.equal(others.length, 0, "no extra catch-all: routes without a hostname are the catch-all");
  assert.deepEqual(vhost.domains, ["*"]);
  assert.deepEqual(routeSummary(vhost), [
    '{"path":"/"} -> h1_127_0_0_1_8084',
    '{"path":"/health"} -> h1_127_0_0_1_8082',
    '{"path_separated_prefix":"/api/v1"} -> h1_127_0_0_1_8083',
    '{"path_separated_prefix":"/api"} -> h1_127_0_0_1_8081',
    '{"prefix":"/"} -> h1_127_0_0_1_8085',
    '{"prefix":"/"} -> h1_127_0_0_1_8080',
  ]);
  assert.ok(arr(vhost.routes).every((r) => at(r, "route.timeout") === "0s"), "no 15 s route timeout");
});

Deno.test("routes: a vhost per hostname (lower-cased, merged), and a 403/404 catch-all for other hosts", () => {
  const bootstrap = render(configOf(`
  web:
    port: 80
    protocol: http
    routes:
      - hostname: App.Example.com
        paths:
          /api/*: app:8081
      - hostname: app.example.com
        backend: app:8080
      - hostname: "*.example.com"
        paths:
          /*: wild:8080
      - hostname: docs.example.com
        paths:
          /guide: docs:8080
`));
  const vhosts = vhostsOf(bootstrap, "web");
  assert.deepEqual(vhosts.map((v) => v.domains), [["*.example.com"], ["app.example.com"], [
    "docs.example.com",
  ], [
    "*",
  ]]);
  const [wild, app, docs, unknown] = vhosts;
  assert.deepEqual(routeSummary(app), [
    '{"path_separated_prefix":"/api"} -> h1_app_8081',
    '{"prefix":"/"} -> h1_app_8080',
  ]);
  assert.deepEqual(routeSummary(wild), ['{"prefix":"/"} -> h1_wild_8080', '{"prefix":"/"} -> direct 404']);
  // A vhost without a backend ends in a 404 (ext_authz judges first, as on every route).
  assert.deepEqual(routeSummary(docs), ['{"path":"/guide"} -> h1_docs_8080', '{"prefix":"/"} -> direct 404']);
  // Hosts we do not serve: judged too (403 without a grant), then 404.
  assert.deepEqual(routeSummary(unknown), ['{"prefix":"/"} -> direct 404']);
  assert.equal(at(hcmOf(listenerOf(bootstrap, "web")), "route_config.ignore_port_in_host_matching"), true);
  // Names resolve by DNS: STRICT_DNS, IPv4 preferred (so `localhost` is not ::1 only).
  assert.equal(clusterOf(bootstrap, "h1_app_8080").type, "STRICT_DNS");
  assert.equal(clusterOf(bootstrap, "h1_app_8080").dns_lookup_family, "V4_PREFERRED");
});

// ---------------------------------------------------------------------------------------------
// TLS

Deno.test("tls: per-route certificates get SNI filter chains (tailvoy's), with tls_inspector after PROXY", async () => {
  const config = configOf(`
  web:
    port: 443
    protocol: https
    tls: { cert: /a.crt, key: /a.key }
    routes:
      - hostname: admin.example.com
        backend: admin:8080
        tls: { cert: /b.crt, key: /b.key }
      - hostname: "*.Internal.example.com"
        backend: internal:8080
        tls: { cert: /c.crt, key: /c.key }
      - backend: app:8080
`);
  // Wildcard server names are valid in Envoy's filter chain match (checked with the test certificates).
  await requireEnvoy();
  await new EnvoySupervisor({ binary: PEER_BINS.envoy }).validate(render(config));
  config.listeners.web.routes[0].tls = { cert: "/admin.crt", key: "/admin.key" };
  const listener = listenerOf(render(config), "web");
  assert.deepEqual(arr(listener.listener_filters).map((f) => f.name), [
    "envoy.filters.listener.proxy_protocol",
    "envoy.filters.listener.tls_inspector",
  ]);
  const chains = arr(listener.filter_chains);
  assert.deepEqual(chains.map((c) => c.filter_chain_match), [
    { server_names: ["*.internal.example.com"] },
    { server_names: ["admin.example.com"] },
    undefined,
  ]);
  assert.equal(
    at(
      chains[1],
      "transport_socket.typed_config.common_tls_context.tls_certificates.0.certificate_chain.filename",
    ),
    "/admin.crt",
  );
  assert.equal(
    at(
      chains[2],
      "transport_socket.typed_config.common_tls_context.tls_certificates.0.certificate_chain.filename",
    ),
    TEST_TLS.cert,
  );
});

Deno.test("tls: https with only per-route certificates has no default chain; grpc without tls stays h2c", () => {
  const config = configOf(`
  web:
    port: 443
    protocol: https
    routes:
      - hostname: a.example.com
        backend: a:8080
        tls: { cert: /a.crt, key: /a.key }
      - hostname: b.example.com
        backend: b:8080
        tls: { cert: /b.crt, key: /b.key }
  rpc:
    port: 50051
    protocol: grpc
    backend: "[::1]:50052"
`);
  const bootstrap = render(config);
  const web = arr(listenerOf(bootstrap, "web").filter_chains);
  assert.deepEqual(web.map((c) => at(c, "filter_chain_match.server_names.0")), [
    "a.example.com",
    "b.example.com",
  ]);
  const rpc = arr(listenerOf(bootstrap, "rpc").filter_chains);
  assert.equal(rpc.length, 1);
  assert.equal(rpc[0].transport_socket, undefined);
  // IPv6 literal backend: STATIC, unbracketed, HTTP/2.
  const cluster = clusterOf(bootstrap, "h2____1__50052");
  assert.equal(cluster.type, "STATIC");
  assert.equal(
    at(cluster, "load_assignment.endpoints.0.lb_endpoints.0.endpoint.address.socket_address.address"),
    "::1",
  );
});

// ---------------------------------------------------------------------------------------------
// Clusters and options

Deno.test("clusters: one per backend and upstream protocol; grpc on HTTP/2, http on HTTP/1.1", () => {
  const bootstrap = render(configOf(`
  web:
    port: 80
    protocol: http
    backend: 127.0.0.1:9000
    routes:
      - paths: { /a/*: 127.0.0.1:9000 }
  rpc:
    port: 50051
    protocol: grpc
    backend: 127.0.0.1:9000
  tcp:
    port: 5432
    protocol: tcp
    backend: 127.0.0.1:5432
`));
  assert.deepEqual(bootstrap.static_resources.clusters.map((c) => c.name), [
    "h1_127_0_0_1_9000",
    "h2_127_0_0_1_9000",
    AUTHZ_CLUSTER,
  ]);
  assert.deepEqual(
    bootstrap.static_resources.listeners.map((l) => l.name),
    ["rpc", "web"],
    "L7 only, sorted",
  );
  const h2 = obj(clusterOf(bootstrap, "h2_127_0_0_1_9000").typed_extension_protocol_options);
  assert.deepEqual(at(obj(h2[HTTP_OPTIONS]), "explicit_http_config"), H2);
});

Deno.test("options: authz socket and timeout, secret, ports; a missing port or bad secret is an EnvoyError", () => {
  const config = configOf(`
  web.v2:
    port: 80
    protocol: http
    backend: 127.0.0.1:9000
`);
  const bootstrap = renderBootstrap(config, {
    listenerPorts: new Map([["web.v2", 18080]]),
    authzSocket: "/tmp/x/authz.sock",
    secret: SECRET,
    authzTimeoutMs: 500,
  });
  const listener = listenerOf(bootstrap, "web.v2");
  assert.equal(listener.stat_prefix, "web_v2");
  assert.equal(at(listener, "address.socket_address.port_value"), 18080);
  const hcm = hcmOf(listener);
  assert.equal(at(hcm, "http_filters.1.typed_config.http_service.server_uri.timeout"), "0.5s");
  assert.equal(
    at(
      clusterOf(bootstrap, AUTHZ_CLUSTER),
      "load_assignment.endpoints.0.lb_endpoints.0.endpoint.address.pipe.path",
    ),
    "/tmp/x/authz.sock",
  );
  assert.throws(
    () => renderBootstrap(config, { listenerPorts: new Map(), authzSocket: AUTHZ, secret: SECRET }),
    (error: unknown) =>
      error instanceof EnvoyError && error.kind === "render" &&
      /Listener "web\.v2" has no usable Envoy port/.test(error.message),
  );
  for (
    const [secret, problem] of [["abc", /too short/], ["a secret with spaces in it", /not printable ASCII/]]
  ) {
    assert.throws(
      () =>
        renderBootstrap(config, {
          listenerPorts: new Map([["web.v2", 1]]),
          authzSocket: AUTHZ,
          secret: secret as string,
        }),
      (error: unknown) =>
        error instanceof EnvoyError && error.kind === "render" && (problem as RegExp).test(error.message) &&
        !error.message.includes(secret as string),
    );
  }
});

Deno.test("serializeBootstrap: sorted keys, so construction order does not matter", () => {
  const config = configOf(`
  web:
    port: 80
    protocol: http
    backend: 127.0.0.1:9000
`);
  const a = render(config);
  const reversed = (value: JsonValue): JsonValue =>
    Array.isArray(value)
      ? value.map(reversed)
      : value && typeof value === "object"
      ? Object.fromEntries(Object.keys(value).reverse().map((k) => [k, reversed(value[k])]))
      : value;
  const b = reversed(a) as EnvoyBootstrap;
  assert.notEqual(JSON.stringify(b), JSON.stringify(a));
  assert.equal(serializeBootstrap(b), serializeBootstrap(a));
  assert.ok(serializeBootstrap(a).startsWith('{"admin":'));
});
