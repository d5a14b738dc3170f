/**
 * Discovery mode (Envoy Gateway data plane): the listeners come from a running Envoy's admin API
 * instead of the config. This module is the only one that reads Envoy's admin API for them (through
 * `EnvoyAdminClient` of `lib/envoy`); parsing is in `parse.ts` (pure), health-based unadvertising in
 * `health.ts` (pure).
 *
 * What the data plane runs for the discovered listeners is planned in `lib/modes/plan.ts`.
 *
 * @module
 */

import type { DiscoveryConfig } from "../config/mod.ts";
import { compilePattern, type Pattern } from "../config/mod.ts";
import { EnvoyAdminClient, EnvoyAdminError } from "../envoy/mod.ts";
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
  const [listeners, routes] = await Promise.all([
    admin.dynamicListeners(),
    // Envoy answers 404 for a resource type its config dump lacks: no HTTP listener, no route configs.
    admin.dynamicRouteConfigs().catch((err) => {
      if (err instanceof EnvoyAdminError && err.status === 404) return { configs: [] };
      throw err;
    }),
  ]);
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
