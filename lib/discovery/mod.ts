/**
 * Discovery mode (Envoy Gateway data plane): the listeners come from a running Envoy's admin API
 * instead of the config. This module is the only one that reads Envoy's admin API for them; parsing is
 * in `parse.ts` (pure), health-based unadvertising in `health.ts` (pure).
 *
 * Each discovered listener is exposed on the tailnet at its own port and relayed to
 * `discovery.envoyAddress:port`: `tcp_proxy` listeners are authorized per connection by us (listener
 * name = Envoy's), HTTP listeners by ext_authz per request (Envoy Gateway's SecurityPolicy calls our
 * server), after a check here that the caller holds some tailvoy grant.
 *
 * @module
 */

import { setOwn } from "../util/own.ts";
import type { Config, DiscoveryConfig, ListenerConfig } from "../config/mod.ts";
import { compilePattern, type Pattern } from "../config/mod.ts";
import { joinHostPort } from "../net/address.ts";
import type { L7Target } from "../l4/mod.ts";
import { type DiscoveredListener, parseClusterHealth, parseListeners } from "./parse.ts";

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

/** Admin API paths read on each poll: only the dynamic listeners and routes, not the whole dump. */
export const ADMIN_PATHS = {
  ready: "/ready",
  listeners: "/config_dump?resource=dynamic_listeners",
  routes: "/config_dump?resource=dynamic_route_configs",
  clusters: "/clusters?format=json",
} as const;

/** Reads Envoy's admin API (`discovery.envoyAdmin`). */
export class EnvoyAdminClient {
  readonly #base: string;
  readonly #timeoutMs: number;

  /** A client for the admin API at `baseUrl` (e.g. `http://127.0.0.1:19000`). */
  constructor(baseUrl: string, options: { timeoutMs?: number } = {}) {
    this.#base = baseUrl.replace(/\/+$/, "");
    this.#timeoutMs = options.timeoutMs ?? 5000;
  }

  /**
   * Envoy's server state from `/ready`: `LIVE` once initialized; before its first xDS answer
   * (`PRE_INITIALIZING`, `INITIALIZING`) it reports no listeners, which must not be taken for "all
   * listeners removed"; `DRAINING` while it shuts down.
   */
  async readyState(): Promise<string> {
    const { status, text } = await this.#get(ADMIN_PATHS.ready);
    const state = text.trim();
    // Envoy answers a word; anything longer is not Envoy's admin API (cut, so a page is not logged whole).
    return state === ""
      ? `HTTP ${status}`
      : state.length > 40
      ? `${state.slice(0, 40)}… (HTTP ${status})`
      : state;
  }

  /** GETs `path` and parses the JSON answer; throws with the URL and the fix on any failure. */
  async getJson(path: string): Promise<unknown> {
    const url = `${this.#base}${path}`;
    const { status, text } = await this.#get(path);
    if (status < 200 || status > 299) {
      throw new Error(`Envoy admin ${url} answered ${status}: ${text.slice(0, 200).trim()}`);
    }
    try {
      return JSON.parse(text);
    } catch {
      throw new Error(`Envoy admin ${url} did not answer JSON: is discovery.envoyAdmin Envoy's admin API?`);
    }
  }

  async #get(path: string): Promise<{ status: number; text: string }> {
    const url = `${this.#base}${path}`;
    let res: Response;
    try {
      res = await fetch(url, { signal: AbortSignal.timeout(this.#timeoutMs) });
    } catch (err) {
      const why = err instanceof DOMException && err.name === "TimeoutError"
        ? `no answer within ${this.#timeoutMs} ms`
        : err instanceof Error
        ? err.message
        : String(err);
      throw new Error(
        `Envoy admin ${url} is unreachable (${why}): check discovery.envoyAdmin and that Envoy runs`,
      );
    }
    return { status: res.status, text: await res.text() };
  }

  /** The active dynamic listeners whose name matches `filter` (all without one). */
  async listeners(options: { filter?: RegExp } = {}): Promise<DiscoveredListener[]> {
    const [listeners, routes] = await Promise.all([
      this.getJson(ADMIN_PATHS.listeners),
      this.getJson(ADMIN_PATHS.routes),
    ]);
    return parseListeners(listeners, { filter: options.filter, routeConfigs: routes });
  }

  /** Healthy and total hosts per cluster. */
  async clusterHealth(): Promise<ReturnType<typeof parseClusterHealth>> {
    return parseClusterHealth(await this.getJson(ADMIN_PATHS.clusters));
  }
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
