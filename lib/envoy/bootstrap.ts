/**
 * Renders Envoy's static bootstrap for the L7 listeners (http, https, grpc) of a parsed config.
 *
 * Shape, per L7 listener `NAME` (Envoy listener `NAME` on `127.0.0.1:<port>`), following the contract
 * in `lib/wire.ts`:
 * - listener filters: `proxy_protocol` (header mandatory, v2 only, the secret TLV → connection
 *   metadata), then `tls_inspector` when SNI picks a certificate;
 * - network filters: `rbac`, which closes any connection whose secret TLV is not the per-process secret
 *   before a byte of HTTP is read (so only our relay can name a caller), then the HCM;
 * - filter chains: one per per-route certificate (`server_names`) and a default chain with the
 *   listener's certificate (https/grpc with `tls`), or plaintext (http, grpc without `tls`);
 * - HCM: path hygiene (normalize, merge slashes, escaped slashes and underscores rejected),
 *   `use_remote_address`, WebSocket upgrades; filters `header_mutation` (drop client
 *   `x-tailscale-*`/`tailscale-*`/`x-tailvoy-*`) → `ext_authz` → `router`;
 * - ext_authz: HTTP to our server on its private unix socket, adding the caller
 *   (`%DOWNSTREAM_REMOTE_ADDRESS%`), the PROXY destination (the Service) and the listener name `NAME`;
 *   identity headers (and the identity token) come back through `allowed_upstream_headers`;
 * - routes: a virtual host per route `hostname` (`*` for routes without one), path routes first (exact,
 *   then longest prefix), then the route's `backend`. Every request is judged, also one for a host or
 *   path no route serves: a caller without a grant gets 403, one with a grant 404.
 * - clusters: one per backend and upstream protocol (HTTP/2 for grpc listeners, HTTP/1.1 otherwise),
 *   plus `tailvoy_ext_authz` (HTTP/1.1, keep-alive, on the unix socket).
 *
 * The output is plain JSON data; {@link serializeBootstrap} sorts object keys so that an unchanged
 * config renders byte for byte the same (reload compares the text).
 *
 * @module
 */

import type { Config, ListenerConfig, RouteConfig, TlsConfig } from "../config/mod.ts";
import { L7_PROTOCOLS } from "../config/mod.ts";
import {
  FORWARDING_HEADERS,
  IDENTITY_HEADERS,
  IDENTITY_TOKEN_HEADER,
  RESERVED_HEADER_PREFIXES,
  strippedHeaders,
} from "../extauthz/headers.ts";
import {
  AUTHZ_HEADERS,
  CHECK_PATH_PREFIX,
  SECRET_KEY,
  SECRET_METADATA_NAMESPACE,
  SECRET_TLV_TYPE,
  secretProblem,
  TAILVOY_HEADER_PREFIX,
} from "../wire.ts";
import { splitHostPort } from "../net/address.ts";
import { EnvoyError } from "./errors.ts";

/** A JSON value, as Envoy reads it. */
export type JsonValue = string | number | boolean | null | JsonValue[] | JsonObject;
/** A JSON object. */
export type JsonObject = { [key: string]: JsonValue };

/** A named Envoy resource (listener, cluster) in the bootstrap. */
export type NamedResource = JsonObject & { name: string };

/** The bootstrap {@link renderBootstrap} produces (passed to Envoy as JSON with `-c`). */
export interface EnvoyBootstrap {
  /** Other top-level bootstrap fields (`overload_manager`). */
  [key: string]: JsonValue;
  /** Admin API; the supervisor puts it on a unix socket in its private directory. */
  admin: JsonObject;
  /** Listeners (one per L7 listener, sorted by name) and clusters (sorted by name). */
  static_resources: { listeners: NamedResource[]; clusters: NamedResource[] };
}

/** Options of {@link renderBootstrap}. */
export interface RenderOptions {
  /** Loopback port of each L7 listener's Envoy listener, by listener name (see `allocatePorts`). */
  listenerPorts: ReadonlyMap<string, number>;
  /** Our HTTP ext_authz server's unix socket path (in a private directory). */
  authzSocket: string;
  /** The per-process relay secret the RBAC filter requires (printable ASCII). */
  secret: string;
  /** ext_authz call timeout in ms (default 250, the Go tailvoy's). */
  authzTimeoutMs?: number;
  /** Backend connect timeout in ms (default 5000). */
  connectTimeoutMs?: number;
  /** Cap on downstream connections across all listeners (default 50000; Envoy warns without one). */
  maxConnections?: number;
}

/** Name of the ext_authz cluster. */
export const AUTHZ_CLUSTER = "tailvoy_ext_authz";

/** Default ext_authz timeout, in ms (the Go tailvoy's). */
export const DEFAULT_AUTHZ_TIMEOUT_MS = 250;

/** Default backend connect timeout, in ms. */
export const DEFAULT_CONNECT_TIMEOUT_MS = 5000;

/** Default cap on downstream connections. */
export const DEFAULT_MAX_CONNECTIONS = 50_000;

const TYPE = "type.googleapis.com/envoy.";
const HCM_TYPE = `${TYPE}extensions.filters.network.http_connection_manager.v3.HttpConnectionManager`;
const EXT_AUTHZ = "envoy.filters.http.ext_authz";
const HTTP_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions";

type Upstream = "h1" | "h2";
type L7Listener =
  & Pick<ListenerConfig, "protocol" | "routes" | "tls">
  & Partial<Pick<ListenerConfig, "keepHeaders">>;

/** The names of the L7 (Envoy-served) listeners of `config`, sorted. */
export function l7ListenerNames(config: Pick<Config, "listeners">): string[] {
  return Object.entries(config.listeners)
    .filter(([, l]) => L7_PROTOCOLS.includes(l.protocol))
    .map(([name]) => name)
    .sort();
}

/** Milliseconds as an Envoy duration string (`0.25s`). */
function duration(ms: number): string {
  return `${ms / 1000}s`;
}

/** A backend's `host:port` or `[v6]:port`; `ip` tells whether the host is an IP literal. */
function backendEndpoint(addr: string): { host: string; port: number; ip: boolean } {
  const split = splitHostPort(addr);
  if (!split) throw new EnvoyError("render", `Address "${addr}" is not host:port`);
  const { host, port } = split;
  const ip = host.includes(":") || /^\d{1,3}(?:\.\d{1,3}){3}$/.test(host);
  return { host, port, ip };
}

// Stat prefixes and cluster names become dot-separated stat paths: keep them to one segment.
function statName(text: string): string {
  return text.replace(/[^A-Za-z0-9_-]/g, "_");
}

function clusterName(upstream: Upstream, backend: string): string {
  return `${upstream}_${statName(backend.toLowerCase())}`;
}

function socketAddress(host: string, port: number): JsonObject {
  return { socket_address: { address: host, port_value: port } };
}

function httpProtocolOptions(upstream: Upstream): JsonObject {
  return {
    [HTTP_OPTIONS]: {
      "@type": `${TYPE}extensions.upstreams.http.v3.HttpProtocolOptions`,
      explicit_http_config: upstream === "h2"
        ? { http2_protocol_options: {} }
        : { http_protocol_options: {} },
    },
  };
}

function cluster(
  name: string,
  addr: string,
  options: { upstream: Upstream; connectTimeoutMs: number },
): NamedResource {
  const { host, port, ip } = backendEndpoint(addr);
  const dns: JsonObject = ip ? {} : {
    // STRICT_DNS keeps every address of the name; prefer IPv4 so `localhost` does not become ::1 only.
    dns_lookup_family: "V4_PREFERRED",
  };
  return {
    name,
    type: ip ? "STATIC" : "STRICT_DNS",
    ...dns,
    connect_timeout: duration(options.connectTimeoutMs),
    typed_extension_protocol_options: httpProtocolOptions(options.upstream),
    load_assignment: {
      cluster_name: name,
      endpoints: [{ lb_endpoints: [{ endpoint: { address: socketAddress(host, port) } }] }],
    },
  };
}

// ext_authz on a unix socket: no TCP port another local process could reach. HTTP/1.1 keep-alive: one
// pooled connection per concurrent check, on Deno's fastest HTTP path.
function pipeCluster(name: string, path: string): NamedResource {
  return {
    name,
    type: "STATIC",
    connect_timeout: duration(1000),
    typed_extension_protocol_options: httpProtocolOptions("h1"),
    load_assignment: {
      cluster_name: name,
      endpoints: [{ lb_endpoints: [{ endpoint: { address: { pipe: { path } } } }] }],
    },
  };
}

interface PathRoute {
  /** Sort key: exact paths first, then longer prefixes, then `/`. */
  rank: [number, number, string];
  match: JsonObject;
  pattern: string;
  backend: string;
}

/** The Envoy match of a config path pattern, with its rank among a virtual host's routes. */
export function pathMatch(pattern: string): { match: JsonObject; rank: [number, number, string] } {
  if (pattern === "/*") return { match: { prefix: "/" }, rank: [2, 0, pattern] };
  if (pattern.endsWith("/*")) {
    // `/api/*` = `/api`, `/api/` and below, not `/apiv2`: exactly path_separated_prefix's semantics.
    const prefix = pattern.slice(0, -2);
    return { match: { path_separated_prefix: prefix }, rank: [1, -prefix.length, prefix] };
  }
  return { match: { path: pattern }, rank: [0, 0, pattern] };
}

function compareRank(a: PathRoute, b: PathRoute): number {
  for (let i = 0; i < 3; i++) {
    if (a.rank[i] < b.rank[i]) return -1;
    if (a.rank[i] > b.rank[i]) return 1;
  }
  return 0;
}

interface VirtualHost {
  paths: Map<string, PathRoute>;
  backend?: string;
}

/** Groups routes by hostname (lowercase; `*` for none), keeping the first definition of each path. */
function groupRoutes(routes: readonly RouteConfig[]): Map<string, VirtualHost> {
  const hosts = new Map<string, VirtualHost>();
  for (const route of routes) {
    const key = route.hostname?.toLowerCase() ?? "*";
    let vhost = hosts.get(key);
    if (!vhost) hosts.set(key, vhost = { paths: new Map() });
    for (const [pattern, backend] of Object.entries(route.paths ?? {})) {
      const { match, rank } = pathMatch(pattern);
      const id = JSON.stringify(match);
      if (!vhost.paths.has(id)) vhost.paths.set(id, { match, rank, pattern, backend });
    }
    if (route.backend !== undefined) vhost.backend ??= route.backend;
  }
  return hosts;
}

function routeAction(cluster: string): JsonObject {
  // No overall route timeout (Envoy's default is 15 s): gRPC streams, downloads and SSE outlive it;
  // HCM's stream idle timeout (5 min) still reaps stuck streams.
  return { cluster, timeout: "0s" };
}

function renderVirtualHosts(
  listener: L7Listener,
  backendCluster: (backend: string) => string,
): JsonObject[] {
  const hosts = groupRoutes(listener.routes);
  const keys = [...hosts.keys()].sort((
    a,
    b,
  ) => (a === "*" ? 1 : b === "*" ? -1 : a < b ? -1 : a > b ? 1 : 0));
  const vhosts: JsonObject[] = keys.map((key) => {
    const vhost = hosts.get(key)!;
    const routes: JsonObject[] = [...vhost.paths.values()].sort(compareRank).map((p) => ({
      name: `${key} ${p.pattern}`,
      match: p.match,
      route: routeAction(backendCluster(p.backend)),
    }));
    routes.push(
      vhost.backend !== undefined
        ? {
          name: `${key} backend`,
          match: { prefix: "/" },
          route: routeAction(backendCluster(vhost.backend)),
        }
        : {
          name: `${key} no route`,
          match: { prefix: "/" },
          direct_response: NO_ROUTE,
        },
    );
    return { name: key === "*" ? "catch_all" : key, domains: [key], routes };
  });
  if (!hosts.has("*")) {
    // Hosts we do not serve: judged like any request (403 without a grant), then 404.
    vhosts.push({
      name: "catch_all",
      domains: ["*"],
      routes: [{ name: "unknown host", match: { prefix: "/" }, direct_response: NO_ROUTE }],
    });
  }
  return vhosts;
}

function downstreamTls(tls: TlsConfig): JsonObject {
  return {
    name: "envoy.transport_sockets.tls",
    typed_config: {
      "@type": `${TYPE}extensions.transport_sockets.tls.v3.DownstreamTlsContext`,
      common_tls_context: {
        // No default ALPN in Envoy: without it, gRPC-over-TLS clients (h2 required) fail.
        alpn_protocols: ["h2", "http/1.1"],
        tls_certificates: [{ certificate_chain: { filename: tls.cert }, private_key: { filename: tls.key } }],
      },
    },
  };
}

/**
 * Filter chains like the Go tailvoy's: a chain per per-route certificate, matched by SNI, then the default
 * chain with the listener's certificate. Without a listener certificate, an https listener has no
 * default chain (a ClientHello for another name is refused) and a grpc one stays plaintext (h2c).
 */
function filterChains(listener: L7Listener, filters: JsonObject[]): { chains: JsonObject[]; sni: boolean } {
  const byName = new Map<string, TlsConfig>();
  if (listener.protocol !== "http") {
    for (const route of listener.routes) {
      const host = route.hostname?.toLowerCase();
      if (route.tls && host !== undefined && !byName.has(host)) byName.set(host, route.tls);
    }
  }
  const chains: JsonObject[] = [...byName.keys()].sort().map((host) => ({
    filter_chain_match: { server_names: [host] },
    filters,
    transport_socket: downstreamTls(byName.get(host)!),
  }));
  if (listener.tls && listener.protocol !== "http") {
    chains.push({ filters, transport_socket: downstreamTls(listener.tls) });
  } else if (listener.protocol !== "https") {
    chains.push({ filters });
  }
  return { chains, sni: byName.size > 0 };
}

const PROXY_PROTOCOL_FILTER: JsonObject = {
  name: "envoy.filters.listener.proxy_protocol",
  typed_config: {
    "@type": `${TYPE}extensions.filters.listener.proxy_protocol.v3.ProxyProtocol`,
    // Only our relay connects, always with a v2 header; anything else is refused.
    allow_requests_without_proxy_protocol: false,
    disallowed_versions: ["V1"],
    rules: [{
      tlv_type: SECRET_TLV_TYPE,
      on_tlv_present: { key: SECRET_KEY, metadata_namespace: SECRET_METADATA_NAMESPACE },
    }],
  },
};

/**
 * Every reply Envoy makes itself (a bad request, an unknown method, no route, a failed upstream) carries
 * a JSON body like our denies and the request id, with its own, truthful status (gRPC callers get the
 * status Envoy maps it to). ext_authz's denies already carry ours, and keep it as it is.
 */
const LOCAL_REPLIES: JsonObject = {
  mappers: [
    {
      filter: { response_flag_filter: { flags: ["UAEX"] } },
      body_format_override: {
        text_format_source: { inline_string: "%LOCAL_REPLY_BODY%" },
        content_type: "application/json",
      },
    },
    {
      // Matches every request (we configure no health checks): the request id, as our denies have it.
      filter: { not_health_check_filter: {} },
      headers_to_add: [{
        header: { key: "x-tailvoy-request-id", value: "%REQ(X-REQUEST-ID)%" },
        append_action: "OVERWRITE_IF_EXISTS_OR_ADD",
      }],
    },
  ],
  body_format: {
    json_format: {
      error: "%RESPONSE_CODE_DETAILS%",
      status: "%RESPONSE_CODE%",
      message: "%LOCAL_REPLY_BODY%",
      requestId: "%REQ(X-REQUEST-ID)%",
    },
  },
};

/** What a request no route of ours serves gets, once ext_authz has let it through. */
const NO_ROUTE: JsonObject = { status: 404, body: { inline_string: "no route for this host and path" } };

/** Closes, before any HTTP, every connection whose PROXY header did not carry the relay secret. */
function secretFilter(secret: string): JsonObject {
  return {
    name: "envoy.filters.network.rbac",
    typed_config: {
      "@type": `${TYPE}extensions.filters.network.rbac.v3.RBAC`,
      stat_prefix: "tailvoy_relay_secret",
      rules: {
        action: "ALLOW",
        policies: {
          "tailvoy-relay": {
            permissions: [{ any: true }],
            principals: [{
              sourced_metadata: {
                metadata_matcher: {
                  filter: SECRET_METADATA_NAMESPACE,
                  path: [{ key: SECRET_KEY }],
                  value: { string_match: { exact: secret } },
                },
              },
            }],
          },
        },
      },
    },
  };
}

function httpFilters(
  listener: string,
  options: { timeoutMs: number; keepHeaders?: readonly string[] },
): JsonObject[] {
  // The token header is allowed on every listener (ext_authz sets it only where configured), so turning
  // identityToken on or off leaves the bootstrap, and Envoy, as they are.
  const upstream = [
    ...Object.values(IDENTITY_HEADERS),
    ...Object.values(FORWARDING_HEADERS),
    IDENTITY_TOKEN_HEADER,
  ].map((exact) => ({ exact }));
  return [
    {
      // Before ext_authz: the identity headers a backend sees (x-tailscale-*, and tailscale serve's
      // tailscale-*) can only be the ones we add, no client copy of our own x-tailvoy-* goes on, and
      // neither does Forwarded or a header that would make the backend serve another path or method.
      name: "envoy.filters.http.header_mutation",
      typed_config: {
        "@type": `${TYPE}extensions.filters.http.header_mutation.v3.HeaderMutation`,
        mutations: {
          request_mutations: [
            ...[...RESERVED_HEADER_PREFIXES, TAILVOY_HEADER_PREFIX].map((prefix) => ({
              remove_on_match: { key_matcher: { prefix } },
            })),
            ...strippedHeaders(options.keepHeaders).map((exact) => ({
              remove_on_match: { key_matcher: { exact } },
            })),
          ],
        },
      },
    },
    {
      name: EXT_AUTHZ,
      typed_config: {
        "@type": `${TYPE}extensions.filters.http.ext_authz.v3.ExtAuthz`,
        transport_api_version: "V3",
        // Slow, down, 5xx or timing out: deny (403, which Envoy sends to gRPC callers as status 7).
        failure_mode_allow: false,
        status_on_error: { code: "Forbidden" },
        // Besides Host, method and path (always sent): what the check reads. Not content-type: see
        // AUTHZ_HEADERS.contentType.
        allowed_headers: { patterns: [{ exact: "x-request-id" }] },
        http_service: {
          server_uri: {
            uri: "http://tailvoy-authz",
            cluster: AUTHZ_CLUSTER,
            timeout: duration(options.timeoutMs),
          },
          path_prefix: CHECK_PATH_PREFIX,
          authorization_request: {
            // From the connection, overwriting any client copy.
            headers_to_add: [
              { key: AUTHZ_HEADERS.peer, value: "%DOWNSTREAM_REMOTE_ADDRESS%" },
              { key: AUTHZ_HEADERS.local, value: "%DOWNSTREAM_LOCAL_ADDRESS%" },
              // A constant: listener names (letters, digits, . - _) hold no `%` format operators.
              { key: AUTHZ_HEADERS.listener, value: listener },
              { key: AUTHZ_HEADERS.contentType, value: "%REQ(content-type)%" },
            ],
          },
          authorization_response: {
            allowed_upstream_headers: { patterns: upstream },
            allowed_client_headers: {
              patterns: [{ exact: "content-type" }, { exact: "x-request-id" }, {
                exact: "x-tailvoy-request-id",
              }],
            },
          },
        },
      },
    },
    {
      name: "envoy.filters.http.router",
      typed_config: { "@type": `${TYPE}extensions.filters.http.router.v3.Router` },
    },
  ];
}

/**
 * Renders the Envoy bootstrap for the L7 listeners of `config`. Throws an {@link EnvoyError} of kind
 * `render` when a listener has no port in `options.listenerPorts` or an address is malformed.
 */
export function renderBootstrap(config: Pick<Config, "listeners">, options: RenderOptions): EnvoyBootstrap {
  const connectTimeoutMs = options.connectTimeoutMs ?? DEFAULT_CONNECT_TIMEOUT_MS;
  const proxyProtocol = PROXY_PROTOCOL_FILTER;
  const problem = secretProblem(options.secret);
  if (problem) throw new EnvoyError("render", problem);
  const secret = secretFilter(options.secret);
  const authzTimeoutMs = options.authzTimeoutMs ?? DEFAULT_AUTHZ_TIMEOUT_MS;
  const clusters = new Map<string, NamedResource>();
  const listeners: NamedResource[] = [];
  const statPrefixes = new Set<string>();

  for (const name of l7ListenerNames(config)) {
    const listener = config.listeners[name];
    const port = options.listenerPorts.get(name);
    if (port === undefined || !Number.isInteger(port) || port < 1 || port > 65535) {
      throw new EnvoyError(
        "render",
        `Listener "${name}" has no usable Envoy port (got ${port}): pass it in listenerPorts`,
      );
    }
    const upstream: Upstream = listener.protocol === "grpc" ? "h2" : "h1";
    const backendCluster = (backend: string) => {
      const clusterId = clusterName(upstream, backend);
      if (!clusters.has(clusterId)) {
        clusters.set(clusterId, cluster(clusterId, backend, { upstream, connectTimeoutMs }));
      }
      return clusterId;
    };
    // Listener names may hold dots; keep stat prefixes to one distinct segment each.
    // ("admin" is the admin listener's, which the drain count must tell apart.)
    let statPrefix = statName(name);
    while (statPrefixes.has(statPrefix) || statPrefix === "admin") statPrefix += "_";
    statPrefixes.add(statPrefix);
    const hcm: JsonObject = {
      "@type": HCM_TYPE,
      stat_prefix: statPrefix,
      codec_type: "AUTO",
      // The PROXY source (the caller's tailnet address) is the client address; XFF is appended to.
      use_remote_address: true,
      normalize_path: true,
      merge_slashes: true,
      path_with_escaped_slashes_action: "REJECT_REQUEST",
      // `app.example.com.` must pick the same virtual host that ext_authz (which drops the dot) judges.
      strip_trailing_host_dot: true,
      common_http_protocol_options: { headers_with_underscores_action: "REJECT_REQUEST" },
      upgrade_configs: [{ upgrade_type: "websocket" }],
      local_reply_config: LOCAL_REPLIES,
      route_config: {
        name,
        // Host `app.example.com:80` selects the virtual host of `app.example.com`.
        ignore_port_in_host_matching: true,
        virtual_hosts: renderVirtualHosts(listener, backendCluster),
      },
      http_filters: httpFilters(name, { timeoutMs: authzTimeoutMs, keepHeaders: listener.keepHeaders }),
    };
    const { chains, sni } = filterChains(listener, [secret, {
      name: "envoy.filters.network.http_connection_manager",
      typed_config: hcm,
    }]);
    listeners.push({
      name,
      stat_prefix: statPrefix,
      address: socketAddress("127.0.0.1", port),
      per_connection_buffer_limit_bytes: 32768,
      listener_filters: sni
        ? [proxyProtocol, {
          name: "envoy.filters.listener.tls_inspector",
          typed_config: { "@type": `${TYPE}extensions.filters.listener.tls_inspector.v3.TlsInspector` },
        }]
        : [proxyProtocol],
      filter_chains: chains,
    });
  }

  const authzCluster = pipeCluster(AUTHZ_CLUSTER, options.authzSocket);

  return {
    // The supervisor moves it to a unix socket in its private directory (the secret is in our config).
    admin: { address: socketAddress("127.0.0.1", 0) },
    static_resources: {
      listeners,
      clusters: [...[...clusters.values()].sort((a, b) => (a.name < b.name ? -1 : 1)), authzCluster],
    },
    overload_manager: {
      resource_monitors: [{
        name: "envoy.resource_monitors.global_downstream_max_connections",
        typed_config: {
          "@type":
            `${TYPE}extensions.resource_monitors.downstream_connections.v3.DownstreamConnectionsConfig`,
          max_active_downstream_connections: options.maxConnections ?? DEFAULT_MAX_CONNECTIONS,
        },
      }],
    },
  };
}

function sortKeys(value: JsonValue): JsonValue {
  if (Array.isArray(value)) return value.map(sortKeys);
  if (value === null || typeof value !== "object") return value;
  return Object.fromEntries(Object.keys(value).sort().map((key) => [key, sortKeys(value[key])]));
}

/** The bootstrap as JSON text with sorted object keys: equal bootstraps give equal text. */
export function serializeBootstrap(bootstrap: EnvoyBootstrap, options: { indent?: number } = {}): string {
  return JSON.stringify(sortKeys(bootstrap), null, options.indent);
}
