/**
 * Discovery mode (Envoy Gateway data plane): the listeners come from a running Envoy's admin API
 * instead of the config. This module is the only one that reads Envoy's admin API for them (through
 * `EnvoyAdminClient` of `lib/envoy`); parsing is in `parse.ts` (pure), health-based unadvertising in
 * `health.ts` (pure).
 *
 * Each discovered listener is exposed on the tailnet at its own port and relayed to
 * `discovery.envoyAddress:port`: `tcp_proxy` listeners are authorized per connection by us (listener
 * name = Envoy's), HTTP listeners by ext_authz per request (Envoy Gateway's SecurityPolicy calls our
 * server), after a check here that the caller holds some tailvoy grant.
 *
 * @module
 */

import { setOwn } from "../own.ts";
import type { Config, DiscoveryConfig, ListenerConfig } from "../config/mod.ts";
import { compilePattern, type Pattern } from "../config/mod.ts";
import { EnvoyAdminClient } from "../envoy/mod.ts";
import { joinHostPort } from "../extauthz/address.ts";
import type { L7Target } from "../l4/mod.ts";
import { type ClusterHealth, type DiscoveredListener, parseClusterHealth, parseListeners } from "./parse.ts";

export {
  assessService,
  type HealthChange,
  type HealthSettings,
  ServiceHealthTracker,
  type ServiceVerdict,
} from "./health.ts";
export {
  type ClusterHealth,
  type DiscoveredListener,
  DiscoveredListenerSchema,
  parseClusterHealth,
  parseListeners,
} from "./parse.ts";

/** The client of `discovery.envoyAdmin` (its errors name the setting to check). */
export function envoyAdminOf(discovery: DiscoveryConfig): EnvoyAdminClient {
  return new EnvoyAdminClient(discovery.envoyAdmin, { setting: "discovery.envoyAdmin" });
}

/** Envoy's active dynamic listeners (and the routes of its HTTP ones) whose name matches `filter` (all without one). */
export async function readListeners(
  admin: EnvoyAdminClient,
  options: { filter?: RegExp } = {},
): Promise<DiscoveredListener[]> {
  const [listeners, routes] = await Promise.all([admin.dynamicListeners(), admin.dynamicRouteConfigs()]);
  return parseListeners(listeners, { filter: options.filter, routeConfigs: routes });
}

/** Healthy and total hosts per cluster, from Envoy's admin API. */
export async function readClusterHealth(admin: EnvoyAdminClient): Promise<Map<string, ClusterHealth>> {
  return parseClusterHealth(await admin.clusters());
}

/** The `discovery.listenerFilter` regex (RE2), or `undefined`. */
export function listenerFilter(discovery: DiscoveryConfig): Pattern | undefined {
  return discovery.listenerFilter ? compilePattern(discovery.listenerFilter) : undefined;
}

/** What the data plane runs for a set of discovered listeners. */
export interface DiscoveredPlan {
  /** The config with `listeners` filled from discovery (tcp and http ones). */
  config: Config;
  /** Envoy targets of the HTTP listeners. */
  l7Targets: Map<string, L7Target>;
  /** tcp listeners whose Envoy listener is sent a PROXY v2 header. */
  proxyProtocolTo: Set<string>;
  /** Problems to tell the operator about, one per listener. */
  warnings: { listener: string; message: string }[];
}

/**
 * Turns discovered listeners into listeners the data plane runs, all with serve ingress, each relayed to
 * `envoyAddress` at its own port. A PROXY v2 header is sent when `proxyProtocol: v2` is set *and*
 * Envoy's listener reads one (sending it to a listener without the filter would break every connection).
 * UDP listeners are left out: Envoy binds their port, and tailscaled's serve forwards TCP only.
 */
export function planDiscovered(base: Config, listeners: readonly DiscoveredListener[]): DiscoveredPlan {
  const discovery = base.discovery!;
  const plan: DiscoveredPlan = {
    config: { ...base, listeners: {} },
    l7Targets: new Map(),
    proxyProtocolTo: new Set(),
    warnings: [],
  };
  for (const l of listeners) {
    const common = {
      routes: [],
      acceptAppCaps: false,
      shadow: false,
      ingress: "serve" as const,
      keepHeaders: [],
    };
    const warn = (message: string) => plan.warnings.push({ listener: l.name, message });
    if (l.kind === "udp") {
      warn("UDP listeners are not exposed in discovery mode (tailscaled serve forwards TCP only)");
      continue;
    }
    const proxy = discovery.proxyProtocol === "v2" && l.proxyProtocol;
    if (discovery.proxyProtocol !== "v2" && l.proxyProtocol) {
      warn(
        "Envoy's listener expects a PROXY header but discovery.proxyProtocol is not v2, so none is sent and Envoy closes every connection; set discovery.proxyProtocol: v2",
      );
    }
    if (discovery.proxyProtocol === "v2" && !l.proxyProtocol) {
      warn(
        "Envoy's listener has no proxy_protocol listener filter, so no PROXY header is sent to it; enable PROXY protocol on the Gateway (ClientTrafficPolicy)",
      );
    }
    if (l.kind === "http") {
      if (!proxy) {
        warn(
          "HTTP listener without PROXY protocol: Envoy cannot tell ext_authz who calls, so every request on a route with ext_authz is denied; set discovery.proxyProtocol: v2 and enable PROXY protocol on the Gateway",
        );
      }
      const listener: ListenerConfig = { ...common, port: l.port, protocol: "http" };
      setOwn(plan.config.listeners, l.name, listener);
      plan.l7Targets.set(l.name, {
        hostname: discovery.envoyAddress,
        port: l.port,
        proxyProtocol: proxy,
        requireGrant: true,
      });
      continue;
    }
    setOwn(plan.config.listeners, l.name, {
      ...common,
      port: l.port,
      protocol: "tcp",
      backend: joinHostPort(discovery.envoyAddress, l.port),
    });
    if (proxy) plan.proxyProtocolTo.add(l.name);
  }
  return plan;
}
