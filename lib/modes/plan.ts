/**
 * Planning: what listeners the data plane runs, from the config's static listeners (standalone) or from
 * the listeners a running Envoy reports (Envoy Gateway mode), plus the config's egress listeners in
 * either. Pure: no I/O.
 *
 * @module
 */

import { type Config, createServiceMatcher, L7_PROTOCOLS } from "../config/mod.ts";
import type { DiscoveredListener } from "../discovery/mod.ts";
import { planEgress } from "../egress/plan.ts";
import type { L7Target, ListenerSpec } from "../l4/mod.ts";
import { joinHostPort } from "../net/address.ts";

/** A plan and the problems to tell the operator about, one line per listener. */
export interface Plan {
  specs: ListenerSpec[];
  /** The egress listeners and policy, with an `egress:` block. */
  egress?: ReturnType<typeof planEgress>;
  warnings: { listener: string; message: string }[];
}

/**
 * The config's listeners as specs. An http/https/grpc listener without an Envoy target in `l7Targets`
 * is left out with a warning (Envoy is not running).
 */
export function planListeners(config: Config, options: { l7Targets?: ReadonlyMap<string, L7Target> }): Plan {
  const servicesOf = createServiceMatcher(config);
  const plan: Plan = { specs: [], egress: planEgress(config.egress), warnings: [] };
  for (const [name, l] of Object.entries(config.listeners)) {
    const l7 = options.l7Targets?.get(name);
    if (L7_PROTOCOLS.includes(l.protocol) && !l7) {
      plan.warnings.push({
        listener: name,
        message: `${l.protocol} needs Envoy, which is not running: not started`,
      });
      continue;
    }
    const tcpBased = l.protocol !== "udp";
    plan.specs.push({
      name,
      protocol: l.protocol,
      ingress: l.ingress,
      port: l.port,
      backend: l.backend,
      proxyProtocol: l.protocol === "tcp" ? l.proxyProtocol : undefined,
      routes: l.routes.flatMap((r) =>
        r.hostname && r.backend
          ? [{ hostname: r.hostname, backend: r.backend, proxyProtocol: r.proxyProtocol ?? l.proxyProtocol }]
          : []
      ),
      l7,
      shadow: l.shadow,
      services: l.ingress === "serve" && tcpBased ? servicesOf(name) : [],
    });
  }
  return plan;
}

/**
 * Discovered Envoy listeners as specs, all with serve ingress, each relayed to `envoyAddress` at its own
 * port. A PROXY v2 header is sent when `proxyProtocol: v2` is set *and* Envoy's listener reads one
 * (sending it to a listener without the filter would break every connection). UDP listeners are left
 * out: Envoy binds their port, and tailscaled's serve forwards TCP only.
 */
export function planDiscovered(config: Config, listeners: readonly DiscoveredListener[]): Plan {
  const discovery = config.discovery!;
  const servicesOf = createServiceMatcher(config);
  const plan: Plan = { specs: [], egress: planEgress(config.egress), warnings: [] };
  for (const l of listeners) {
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
    const common = { name: l.name, ingress: "serve" as const, port: l.port, services: servicesOf(l.name) };
    if (l.kind === "http") {
      if (!proxy) {
        warn(
          "HTTP listener without PROXY protocol: Envoy cannot tell ext_authz who calls, so every request on a route with ext_authz is denied; set discovery.proxyProtocol: v2 and enable PROXY protocol on the Gateway",
        );
      }
      plan.specs.push({
        ...common,
        protocol: "http",
        l7: { hostname: discovery.envoyAddress, port: l.port, proxyProtocol: proxy, requireGrant: true },
      });
      continue;
    }
    plan.specs.push({
      ...common,
      protocol: "tcp",
      backend: joinHostPort(discovery.envoyAddress, l.port),
      // Envoy's listener reads the PROXY header itself: no identity TLVs.
      proxyProtocol: proxy ? { version: "v2", tlvs: [] } : undefined,
    });
  }
  return plan;
}
