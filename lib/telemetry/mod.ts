/**
 * Telemetry: Prometheus metrics (prom-client) and the decision log, fed from one place so every
 * decision counted is also logged the same way. The decision log is one JSON line per L4 flow (at open
 * or refusal, and at close with bytes and duration) and per L7 request, under the logger
 * `tailvoy.decision`.
 *
 * @module
 */

import client from "prom-client";
import type { Identity } from "../identity/mod.ts";
import { getLogger } from "../log.ts";
import type { Decision } from "../policy/mod.ts";

/** One decision, in the fields of the decision log. */
export interface DecisionEvent {
  layer: "l4" | "l7";
  listener: string;
  /** L7 request id, or `flow-N` for an L4 flow. */
  requestId: string;
  /** Caller's address as seen (tailnet `IP:port`, or the loopback end WhoIs mapped). */
  caller: string;
  identity?: Identity;
  /** Host (L7) or SNI (L4). */
  host?: string;
  method?: string;
  path?: string;
  decision: Decision;
  /** Audit-only listener: the decision is logged but traffic is allowed. */
  shadow?: boolean;
  /** A finer outcome than the decision's code (e.g. ext_authz's `bad_secret`), for the log. */
  code?: string;
  latencyMs: number;
}

/** The end of an L4 flow. */
export interface FlowCloseEvent {
  listener: string;
  requestId: string;
  caller: string;
  identity?: Identity;
  host?: string;
  bytesUp: number;
  bytesDown: number;
  durationMs: number;
  end: string;
  /** Why, when we closed it (e.g. the re-check that revoked it). */
  reason?: string;
}

/**
 * One egress flow, logged once: at refusal, or at close with bytes and duration. `result` is `allow` for
 * a flow that was relayed, else why it was refused.
 */
export interface EgressEvent {
  listener: string;
  requestId: string;
  /** Client address, `IP:port`. */
  client: string;
  /** Proxy user, when credentials are required. */
  user?: string;
  /** `http`, `socks5`, or `target` (port-mapped). */
  protocol: string;
  /** Destination as asked (`host:port`), when the handshake got that far. */
  asked?: string;
  /** The alias used. */
  alias?: string;
  /** Resolved address dialed (or refused), `IP:port`. */
  resolved?: string;
  /** The tailnet node (or subnet router) behind it. */
  peer?: string;
  via?: string;
  result: "allow" | "source" | "handshake" | "unauthorized" | "destination" | "dial" | "draining";
  /** The rule that allowed it, or why not. */
  rule: string;
  bytesUp?: number;
  bytesDown?: number;
  durationMs?: number;
  end?: string;
}

const decisionLog = getLogger("decision");

function who(identity?: Identity): Record<string, unknown> {
  return {
    user: identity?.login ?? null,
    node: identity?.node ?? null,
    tags: identity?.tags ?? [],
  };
}

/** What decided: the matching rule, or why nothing matched. */
export function ruleOf(decision: Decision): string {
  return decision.matched ? decision.matched.json : decision.reasons.join("; ");
}

/** Metrics and decision log of one process. */
export class Telemetry {
  /** The Prometheus registry served at `/metrics`. */
  readonly registry = new client.Registry();
  readonly decisions = new client.Counter({
    name: "tailvoy_decisions_total",
    help: "Access decisions by listener, layer and result (allow, deny, shadow_allow).",
    labelNames: ["listener", "layer", "result"] as const,
    registers: [this.registry],
  });
  readonly whoisCalls = new client.Counter({
    name: "tailvoy_whois_calls_total",
    help: "LocalAPI WhoIs calls by result.",
    labelNames: ["result"] as const,
    registers: [this.registry],
  });
  readonly whoisErrors = new client.Counter({
    name: "tailvoy_whois_errors_total",
    help: "LocalAPI WhoIs failures by kind.",
    labelNames: ["kind"] as const,
    registers: [this.registry],
  });
  readonly whoisLatency = new client.Histogram({
    name: "tailvoy_whois_duration_seconds",
    help: "LocalAPI WhoIs call latency.",
    buckets: [0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.05, 0.25, 1],
    registers: [this.registry],
  });
  readonly whoisCacheHits = new client.Counter({
    name: "tailvoy_whois_cache_hits_total",
    help: "Identity lookups answered from the cache (or a lookup already in flight).",
    registers: [this.registry],
  });
  readonly openFlows = new client.Gauge({
    name: "tailvoy_open_flows",
    help: "Open L4 flows (connections and UDP sessions) by listener.",
    labelNames: ["listener"] as const,
    registers: [this.registry],
  });
  readonly flowBytes = new client.Counter({
    name: "tailvoy_flow_bytes_total",
    help: "Bytes relayed by listener and direction (up = caller to backend).",
    labelNames: ["listener", "direction"] as const,
    registers: [this.registry],
  });
  readonly egressFlows = new client.Counter({
    name: "tailvoy_egress_flows_total",
    help:
      "Egress flows by listener and result (allow, or the stage that refused: source, handshake, unauthorized, destination, dial, draining).",
    labelNames: ["listener", "result"] as const,
    registers: [this.registry],
  });
  readonly egressOpen = new client.Gauge({
    name: "tailvoy_egress_open_flows",
    help: "Open egress flows by listener.",
    labelNames: ["listener"] as const,
    registers: [this.registry],
  });
  readonly revoked = new client.Counter({
    name: "tailvoy_flows_revoked_total",
    help: "Open flows closed because a re-check denied them.",
    labelNames: ["listener"] as const,
    registers: [this.registry],
  });
  readonly envoyRestarts = new client.Counter({
    name: "tailvoy_envoy_restarts_total",
    help: "Envoy restarts after an unexpected exit.",
    registers: [this.registry],
  });
  readonly envoyReady = new client.Gauge({
    name: "tailvoy_envoy_ready",
    help: "1 when Envoy answers /ready with LIVE.",
    registers: [this.registry],
  });
  readonly configReloads = new client.Counter({
    name: "tailvoy_config_reloads_total",
    help: "Configuration reloads by result (ok, invalid, failed).",
    labelNames: ["result"] as const,
    registers: [this.registry],
  });
  readonly discoveredListeners = new client.Gauge({
    name: "tailvoy_discovered_listeners",
    help: "Envoy listeners found by discovery mode's last successful poll, by kind (http, tcp, udp).",
    labelNames: ["kind"] as const,
    registers: [this.registry],
  });
  readonly discoveryPolls = new client.Counter({
    name: "tailvoy_discovery_polls_total",
    help: "Polls of Envoy's admin API in discovery mode by what was read and result (ok, error).",
    labelNames: ["what", "result"] as const,
    registers: [this.registry],
  });
  readonly servicesWithheld = new client.Gauge({
    name: "tailvoy_services_withheld",
    help: "Tailscale Services not advertised because their Envoy clusters have no healthy host.",
    registers: [this.registry],
  });
  readonly serveConfigWrites = new client.Counter({
    name: "tailvoy_serve_config_writes_total",
    help: "Writes of tailscaled's serve config.",
    registers: [this.registry],
  });

  #logAllows: boolean;

  /** Creates the metrics; `logAllows: false` keeps allowed decisions out of the log (denies stay). */
  constructor(options: { logAllows?: boolean } = {}) {
    this.#logAllows = options.logAllows ?? true;
  }

  /** Switches logging of allowed decisions (reload). */
  set logAllows(on: boolean) {
    this.#logAllows = on;
  }

  /**
   * Envoy supervisor callbacks (`onState`, `onRestart`) that keep `tailvoy_envoy_ready` and
   * `tailvoy_envoy_restarts_total` current as they change.
   */
  envoyCallbacks(): { onState: (state: string) => void; onRestart: () => void } {
    return {
      onState: (state) => this.envoyReady.set(state === "ready" ? 1 : 0),
      onRestart: () => this.envoyRestarts.inc(),
    };
  }

  /** Records an access decision: counted, and logged (allows only when enabled). */
  decision(event: DecisionEvent): void {
    const allow = event.decision.allow;
    const result = allow ? "allow" : event.shadow ? "shadow_allow" : "deny";
    this.decisions.inc({ listener: event.listener, layer: event.layer, result });
    if (allow && !this.#logAllows) return;
    const record = {
      event: "decision",
      requestId: event.requestId,
      listener: event.listener,
      layer: event.layer,
      callerIp: event.caller,
      ...who(event.identity),
      host: event.host ?? null,
      method: event.method ?? null,
      path: event.decision.canonicalPath ?? event.path ?? null,
      decision: allow ? "allow" : "deny",
      shadow: event.shadow ?? false,
      code: event.code ?? event.decision.code,
      rule: ruleOf(event.decision),
      latencyMs: Math.round(event.latencyMs * 1000) / 1000,
    };
    const msg = "{decision} {layer} {listener} from {callerIp}: {rule}";
    if (allow) decisionLog.info(msg, record);
    else if (event.shadow) decisionLog.warn(`SHADOW (allowed anyway) ${msg}`, record);
    else decisionLog.info(msg, record);
  }

  /** Records the end of an L4 flow (always logged: it carries the byte counts). */
  flowClosed(event: FlowCloseEvent): void {
    this.flowBytes.inc({ listener: event.listener, direction: "up" }, event.bytesUp);
    this.flowBytes.inc({ listener: event.listener, direction: "down" }, event.bytesDown);
    decisionLog.info("close l4 {listener} from {callerIp}: {end}, {bytesUp} B up, {bytesDown} B down", {
      event: "close",
      requestId: event.requestId,
      listener: event.listener,
      layer: "l4",
      callerIp: event.caller,
      ...who(event.identity),
      host: event.host ?? null,
      bytesUp: event.bytesUp,
      bytesDown: event.bytesDown,
      durationMs: Math.round(event.durationMs),
      end: event.end,
      ...(event.reason ? { reason: event.reason } : {}),
    });
  }

  /** Records an egress flow: counted, and logged once (allowed flows at close, with their bytes). */
  egress(event: EgressEvent): void {
    this.egressFlows.inc({ listener: event.listener, result: event.result });
    if (event.bytesUp !== undefined) {
      this.flowBytes.inc({ listener: event.listener, direction: "up" }, event.bytesUp);
      this.flowBytes.inc({ listener: event.listener, direction: "down" }, event.bytesDown ?? 0);
    }
    const record = {
      event: "egress",
      requestId: event.requestId,
      listener: event.listener,
      layer: "egress",
      client: event.client,
      user: event.user ?? null,
      protocol: event.protocol,
      asked: event.asked ?? null,
      alias: event.alias ?? null,
      resolved: event.resolved ?? null,
      peer: event.peer ?? null,
      via: event.via ?? null,
      decision: event.result === "allow" ? "allow" : "deny",
      result: event.result,
      rule: event.rule,
      ...(event.bytesUp !== undefined
        ? {
          bytesUp: event.bytesUp,
          bytesDown: event.bytesDown ?? 0,
          durationMs: Math.round(event.durationMs ?? 0),
          end: event.end ?? null,
        }
        : {}),
    };
    decisionLog.info("egress {decision} {listener} {client} → {asked}: {rule}", record);
  }

  /** The identity resolver's observer: cache hits, WhoIs calls, errors by kind, latency. */
  resolverObserver(): { hit(): void; call(ms: number, error?: unknown): void } {
    return {
      hit: () => this.whoisCacheHits.inc(),
      call: (ms, error) => {
        this.whoisLatency.observe(ms / 1000);
        this.whoisCalls.inc({ result: error ? "error" : "ok" });
        if (error) this.whoisErrors.inc({ kind: (error as { kind?: string }).kind ?? "error" });
      },
    };
  }

  /** Prometheus text exposition. */
  metrics(): Promise<string> {
    return this.registry.metrics();
  }
}
