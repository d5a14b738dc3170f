/**
 * Envoy configured the way Envoy Gateway configures its data plane, for discovery-mode tests: listeners
 * and clusters arrive dynamically (LDS/CDS/RDS), named like Envoy Gateway's (`default/eg/http`), with the
 * proxy_protocol listener filter a ClientTrafficPolicy adds and the ext_authz filter a SecurityPolicy
 * adds (disabled by default, enabled per route with `context_extensions`).
 *
 * The Envoy is real; only the control plane is replaced: Envoy Gateway's xDS server by files Envoy
 * watches (`path_config_source`), since Envoy Gateway itself needs Kubernetes. Files are replaced by
 * rename, which is how Envoy expects them to change.
 *
 * @module
 */

import { join } from "node:path";

const T = "type.googleapis.com/";
const AUTHZ = "envoy.filters.http.ext_authz/securitypolicy/default/tailvoy";

/** An HTTP route: a path prefix to a cluster, with ext_authz on (with or without a listener name) or off. */
export interface GatewayRoute {
  prefix: string;
  cluster: string;
  /** `context_extensions.listener`; `null`: ext_authz on without it; `undefined`: ext_authz off. */
  authzListener?: string | null;
}

/** A listener as Envoy Gateway would program it. */
export type GatewayListener =
  | { name: string; port: number; kind: "http"; routes: GatewayRoute[]; proxyProtocol?: boolean }
  | { name: string; port: number; kind: "tcp"; cluster: string; proxyProtocol?: boolean };

/** A cluster of one loopback endpoint, optionally TCP health-checked every 300 ms. */
export interface GatewayCluster {
  name: string;
  port: number;
  healthChecked?: boolean;
}

function clusterResource(c: GatewayCluster) {
  return {
    "@type": `${T}envoy.config.cluster.v3.Cluster`,
    name: c.name,
    type: "STATIC",
    connect_timeout: "1s",
    load_assignment: {
      cluster_name: c.name,
      endpoints: [{
        lb_endpoints: [{
          endpoint: { address: { socket_address: { address: "127.0.0.1", port_value: c.port } } },
        }],
      }],
    },
    ...(c.healthChecked
      ? {
        health_checks: [{
          timeout: "0.25s",
          interval: "0.3s",
          // Else a cluster that never had traffic is checked once a minute.
          no_traffic_interval: "0.3s",
          unhealthy_threshold: 1,
          healthy_threshold: 1,
          tcp_health_check: {},
        }],
      }
      : {}),
  };
}

function listenerResource(l: GatewayListener) {
  const listenerFilters = (l.proxyProtocol ?? true)
    ? [{
      name: "envoy.filters.listener.proxy_protocol",
      typed_config: { "@type": `${T}envoy.extensions.filters.listener.proxy_protocol.v3.ProxyProtocol` },
    }]
    : [];
  const base = {
    "@type": `${T}envoy.config.listener.v3.Listener`,
    name: l.name,
    address: { socket_address: { address: "127.0.0.1", port_value: l.port } },
    listener_filters: listenerFilters,
  };
  if (l.kind === "tcp") {
    return {
      ...base,
      filter_chains: [{
        filters: [{
          name: "envoy.filters.network.tcp_proxy",
          typed_config: {
            "@type": `${T}envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy`,
            stat_prefix: l.name,
            cluster: l.cluster,
          },
        }],
      }],
    };
  }
  const routes = l.routes.map((r) => ({
    match: { prefix: r.prefix },
    route: { cluster: r.cluster },
    ...(r.authzListener === undefined ? {} : {
      typed_per_filter_config: {
        [AUTHZ]: {
          "@type": `${T}envoy.config.route.v3.FilterConfig`,
          config: {
            "@type": `${T}envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute`,
            check_settings: r.authzListener === null
              ? {}
              : { context_extensions: { listener: r.authzListener } },
          },
        },
      },
    }),
  }));
  return {
    ...base,
    default_filter_chain: {
      filters: [{
        name: "envoy.filters.network.http_connection_manager",
        typed_config: {
          "@type": `${T}envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager`,
          stat_prefix: l.name,
          // Envoy Gateway's default: trust the PROXY header's source as the client.
          use_remote_address: true,
          route_config: { name: l.name, virtual_hosts: [{ name: l.name, domains: ["*"], routes }] },
          http_filters: [
            {
              name: AUTHZ,
              disabled: true,
              typed_config: {
                "@type": `${T}envoy.extensions.filters.http.ext_authz.v3.ExtAuthz`,
                transport_api_version: "V3",
                grpc_service: { envoy_grpc: { cluster_name: "tailvoy_authz" }, timeout: "2s" },
              },
            },
            {
              name: "envoy.filters.http.router",
              typed_config: { "@type": `${T}envoy.extensions.filters.http.router.v3.Router` },
            },
          ],
        },
      }],
    },
  };
}

/** The files of an Envoy-Gateway-like Envoy: its bootstrap (for `envoy -c`) and its xDS resources. */
export class GatewayEnvoyConfig {
  readonly dir: string;
  readonly adminPort: number;
  readonly bootstrapPath: string;

  private constructor(dir: string, adminPort: number) {
    this.dir = dir;
    this.adminPort = adminPort;
    this.bootstrapPath = join(dir, "bootstrap.json");
  }

  /** Writes a bootstrap with admin on `adminPort` and the ext_authz cluster at 127.0.0.1:`authzPort`. */
  static async create(options: { adminPort: number; authzPort: number }): Promise<GatewayEnvoyConfig> {
    const dir = await Deno.makeTempDir({ prefix: "tailvoy-eg-" });
    const cfg = new GatewayEnvoyConfig(dir, options.adminPort);
    await cfg.write([], []);
    const source = (file: string) => ({
      path_config_source: { path: join(dir, file) },
      resource_api_version: "V3",
    });
    await Deno.writeTextFile(
      cfg.bootstrapPath,
      JSON.stringify({
        node: { id: "envoy-default-eg", cluster: "envoy-default-eg" },
        admin: { address: { socket_address: { address: "127.0.0.1", port_value: options.adminPort } } },
        dynamic_resources: { lds_config: source("lds.json"), cds_config: source("cds.json") },
        static_resources: {
          clusters: [clusterResource({ name: "tailvoy_authz", port: options.authzPort })].map((
            { "@type": _, ...c },
          ) => ({
            ...c,
            typed_extension_protocol_options: {
              "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": `${T}envoy.extensions.upstreams.http.v3.HttpProtocolOptions`,
                explicit_http_config: { http2_protocol_options: {} },
              },
            },
          })),
        },
      }),
    );
    return cfg;
  }

  /** Replaces the listeners and clusters (CDS first, so listeners never point at missing clusters). */
  async write(listeners: GatewayListener[], clusters: GatewayCluster[]): Promise<void> {
    await this.#replace("cds.json", { resources: clusters.map(clusterResource) });
    await this.#replace("lds.json", { resources: listeners.map(listenerResource) });
  }

  async #replace(file: string, body: unknown): Promise<void> {
    const tmp = join(this.dir, `.${file}.tmp`);
    await Deno.writeTextFile(tmp, JSON.stringify(body));
    await Deno.rename(tmp, join(this.dir, file));
  }

  /** Removes the files. */
  async remove(): Promise<void> {
    await Deno.remove(this.dir, { recursive: true }).catch(() => {});
  }
}
