/**
 * Reading Envoy's admin API answers (pure, no I/O): which listeners Envoy runs
 * (`/config_dump?resource=dynamic_listeners`, with `dynamic_route_configs` for RDS), what kind each is,
 * which clusters it sends to, and how healthy those clusters are (`/clusters?format=json`).
 *
 * Only what we read is described by the schemas; everything else Envoy writes is let through, so a
 * newer Envoy adding fields changes nothing. Shapes were checked against Envoy 1.40's real answers
 * (fixtures in `tests/fixtures/discovery/`).
 *
 * @module
 */

import { z } from "zod";

const SocketAddressSchema = z.looseObject({
  address: z.string().default(""),
  port_value: z.number().int().default(0),
  protocol: z.string().default("TCP"),
});

const FilterSchema = z.looseObject({
  name: z.string().default(""),
  typed_config: z.record(z.string(), z.unknown()).optional(),
});

const FilterChainSchema = z.looseObject({ filters: z.array(FilterSchema).default([]) });

const ListenerSchema = z.looseObject({
  name: z.string().default(""),
  address: z.looseObject({ socket_address: SocketAddressSchema.optional() }).optional(),
  listener_filters: z.array(FilterSchema).default([]),
  filter_chains: z.array(FilterChainSchema).default([]),
  default_filter_chain: FilterChainSchema.optional(),
});

/** One entry of `/config_dump?resource=dynamic_listeners` (a `ListenersConfigDump.DynamicListener`). */
const DynamicListenerSchema = z.looseObject({
  name: z.string().default(""),
  // Only a listener in `active_state` accepts connections; warming or draining ones are not exposed.
  active_state: z.looseObject({ listener: ListenerSchema }).optional(),
});

const RouteConfigSchema = z.looseObject({ name: z.string().default("") });

/** One entry of `/config_dump?resource=dynamic_route_configs`. */
const DynamicRouteConfigSchema = z.looseObject({ route_config: RouteConfigSchema.optional() });

/** Envoy's `/config_dump?resource=…` answer: `{"configs": [...]}`. */
const ConfigDumpSchema = z.looseObject({ configs: z.array(z.unknown()).default([]) });

const HostStatusSchema = z.looseObject({
  health_status: z.record(z.string(), z.unknown()).default({}),
});

/** Envoy's `/clusters?format=json` answer. */
const ClustersSchema = z.looseObject({
  cluster_statuses: z.array(
    z.looseObject({ name: z.string(), host_statuses: z.array(HostStatusSchema).default([]) }),
  ).default([]),
});

/** What kind of traffic a discovered listener carries, from its filters. */
export const DiscoveredKindSchema = z.enum(["http", "tcp", "udp"]);

/** A listener found in Envoy, as tailvoy exposes it on the tailnet. */
export const DiscoveredListenerSchema = z.object({
  /** Envoy's listener name (Envoy Gateway: `namespace/gateway/listener`); what grants and mappings name. */
  name: z.string(),
  /** Envoy's port, also the tailnet port (as in the Go tailvoy). */
  port: z.number().int(),
  /** `http` when a filter chain has an HTTP connection manager, `udp` for a UDP listener, else `tcp`. */
  kind: DiscoveredKindSchema,
  /** Whether the listener reads a PROXY protocol header (has the `proxy_protocol` listener filter). */
  proxyProtocol: z.boolean(),
  /** Clusters the listener sends to (routes, RDS, weighted clusters, tcp_proxy, udp_proxy), sorted. */
  clusters: z.array(z.string()),
});

/** A listener found in Envoy. */
export type DiscoveredListener = z.infer<typeof DiscoveredListenerSchema>;

/** Healthy and total hosts of one cluster. */
export interface ClusterHealth {
  healthy: number;
  total: number;
}

/** Options of {@link parseListeners}. */
export interface ParseListenersOptions {
  /** Only listeners whose name matches are returned (`discovery.listenerFilter`). */
  filter?: RegExp;
  /** `/config_dump?resource=dynamic_route_configs`, to find the clusters of RDS routes. */
  routeConfigs?: unknown;
}

const HCM = "envoy.filters.network.http_connection_manager";
const PROXY_PROTOCOL = "envoy.filters.listener.proxy_protocol";
const TCP_PROXY = "envoy.filters.network.tcp_proxy";
const UDP_PROXY = "envoy.filters.udp_listener.udp_proxy";

function isFilter(name: string, wanted: string): boolean {
  // Envoy Gateway and others name filters `<canonical>` or `<canonical>/<suffix>`.
  return name === wanted || name.startsWith(`${wanted}/`);
}

function str(value: unknown): string | undefined {
  return typeof value === "string" && value !== "" ? value : undefined;
}

function obj(value: unknown): Record<string, unknown> | undefined {
  return typeof value === "object" && value !== null && !Array.isArray(value)
    ? value as Record<string, unknown>
    : undefined;
}

function list(value: unknown): unknown[] {
  return Array.isArray(value) ? value : [];
}

/** The clusters traffic goes to from a route action or tcp_proxy: `cluster` and `weighted_clusters`. */
function actionClusters(action: unknown, into: Set<string>): void {
  const a = obj(action);
  const single = str(a?.cluster);
  if (single) into.add(single);
  for (const c of list(obj(a?.weighted_clusters)?.clusters)) {
    const name = str(obj(c)?.name);
    if (name) into.add(name);
  }
}

/**
 * Route backends of a RouteConfiguration. Only route actions count: mirrors, JWKS or OAuth token
 * endpoints also name clusters, but a dead one does not mean the Service cannot serve.
 */
function routeClusters(routeConfig: unknown, into: Set<string>): void {
  for (const vh of list(obj(routeConfig)?.virtual_hosts)) {
    for (const route of list(obj(vh)?.routes)) actionClusters(obj(route)?.route, into);
  }
}

/** udp_proxy backends: the legacy `cluster`, or the route actions of its matcher tree. */
function udpClusters(config: unknown, into: Set<string>): void {
  const c = obj(config);
  const single = str(c?.cluster);
  if (single) into.add(single);
  const walk = (node: unknown): void => {
    if (Array.isArray(node)) return node.forEach(walk);
    const o = obj(node);
    if (!o) return;
    const action = obj(o.action);
    if (action) actionClusters(action.typed_config, into);
    for (const [key, v] of Object.entries(o)) if (key !== "action") walk(v);
  };
  walk(c?.matcher);
}

function parseDump(body: unknown, what: string): unknown[] {
  const dump = ConfigDumpSchema.safeParse(body);
  if (!dump.success) {
    throw new Error(
      `Envoy's ${what} is not a config dump (${
        dump.error.issues[0]?.message
      }): is envoyAdmin Envoy's admin API?`,
    );
  }
  return dump.data.configs;
}

/** Route configurations by name, from `/config_dump?resource=dynamic_route_configs`. */
function routeConfigsByName(body: unknown): Map<string, unknown> {
  const byName = new Map<string, unknown>();
  if (body === undefined) return byName;
  for (const entry of parseDump(body, "route config dump")) {
    const parsed = DynamicRouteConfigSchema.safeParse(entry);
    const rc = parsed.success ? parsed.data.route_config : undefined;
    if (rc?.name) byName.set(rc.name, rc);
  }
  return byName;
}

/**
 * The active listeners of `/config_dump?resource=dynamic_listeners`, sorted by name. Listeners on port 0
 * (internal) and those the filter rejects are left out. Throws on an answer that is not a config dump.
 */
export function parseListeners(body: unknown, options: ParseListenersOptions = {}): DiscoveredListener[] {
  const routes = routeConfigsByName(options.routeConfigs);
  const found: DiscoveredListener[] = [];
  for (const entry of parseDump(body, "listener dump")) {
    const parsed = DynamicListenerSchema.safeParse(entry);
    if (!parsed.success || !parsed.data.active_state) continue;
    const listener = parsed.data.active_state.listener;
    const name = parsed.data.name || listener.name;
    const socket = listener.address?.socket_address;
    if (!name || !socket || socket.port_value <= 0) continue;
    if (options.filter && !options.filter.test(name)) continue;
    const chains = [
      ...listener.filter_chains,
      ...(listener.default_filter_chain ? [listener.default_filter_chain] : []),
    ];
    const filters = chains.flatMap((c) => c.filters);
    const http = filters.some((f) => isFilter(f.name, HCM));
    const clusters = new Set<string>();
    for (const f of filters) {
      if (isFilter(f.name, HCM)) {
        routeClusters(f.typed_config?.route_config, clusters);
        const rds = obj(f.typed_config?.rds)?.route_config_name;
        if (typeof rds === "string") routeClusters(routes.get(rds), clusters);
      } else if (isFilter(f.name, TCP_PROXY)) actionClusters(f.typed_config, clusters);
    }
    for (const f of listener.listener_filters) {
      if (isFilter(f.name, UDP_PROXY)) udpClusters(f.typed_config, clusters);
    }
    found.push({
      name,
      port: socket.port_value,
      kind: socket.protocol.toUpperCase() === "UDP" ? "udp" : http ? "http" : "tcp",
      proxyProtocol: listener.listener_filters.some((f) => isFilter(f.name, PROXY_PROTOCOL)),
      clusters: [...clusters].sort(),
    });
  }
  return found.sort((a, b) => a.name < b.name ? -1 : a.name > b.name ? 1 : 0);
}

// Flags Envoy sets on a host it will not send traffic to (envoy.admin.v3.HostHealthStatus).
const FAILED_FLAGS = [
  "failed_active_health_check",
  "failed_outlier_check",
  "failed_eds_health",
  "active_hc_timeout",
  "excluded_via_immediate_hc_fail",
];

/**
 * Healthy and total hosts per cluster from `/clusters?format=json`. A host is healthy when its EDS status
 * is HEALTHY or DEGRADED (or unset) *and* no active health check or outlier detection has failed it —
 * Envoy reports an actively failed host as `eds_health_status: HEALTHY` plus a failure flag.
 */
export function parseClusterHealth(body: unknown): Map<string, ClusterHealth> {
  const parsed = ClustersSchema.safeParse(body);
  if (!parsed.success) {
    throw new Error(
      `Envoy's /clusters answer is not cluster statuses (${
        parsed.error.issues[0]?.message
      }): is envoyAdmin Envoy's admin API?`,
    );
  }
  const health = new Map<string, ClusterHealth>();
  for (const cluster of parsed.data.cluster_statuses) {
    let healthy = 0;
    for (const host of cluster.host_statuses) {
      const status = host.health_status;
      const eds = status.eds_health_status ?? "HEALTHY";
      if ((eds === "HEALTHY" || eds === "DEGRADED") && !FAILED_FLAGS.some((f) => status[f] === true)) {
        healthy++;
      }
    }
    health.set(cluster.name, { healthy, total: cluster.host_statuses.length });
  }
  return health;
}
