/**
 * Envoy Gateway data-plane mode: tailvoy runs in place of Envoy Gateway's Envoy container, starts Envoy
 * with Envoy Gateway's arguments (after `--`), serves ext_authz for the SecurityPolicies that point at
 * it, and keeps the tailnet listeners in step with the listeners Envoy reports (`discovery:`), withholding
 * Tailscale Services whose clusters are unhealthy.
 *
 * Security model, different from standalone mode: Envoy Gateway's listeners cannot check our relay
 * secret, so ext_authz believes the PROXY source Envoy reports. That is sound only when Envoy's
 * listeners are reachable through tailvoy alone (no LoadBalancer Service, a NetworkPolicy); the README
 * says so. Each HTTP connection is also checked here for *some* tailvoy grant before Envoy sees it, so
 * a route left without a SecurityPolicy is still closed to callers without one.
 *
 * @module
 */

import { type Config, createServiceMatcher } from "../config/mod.ts";
import {
  type ClusterHealth,
  type DiscoveredListener,
  envoyAdminOf,
  listenerFilter,
  readClusterHealth,
  readListeners,
  ServiceHealthTracker,
} from "../discovery/mod.ts";
import { type EnvoyAdminClient, EnvoySupervisor } from "../envoy/mod.ts";
import { DEFAULT_AUTHZ_ADDRESS, GrpcAuthzProcess } from "../extauthz/grpc_process.ts";
import { decisionEvent } from "../extauthz/mod.ts";
import { getLogger } from "../log.ts";
import { Listeners } from "./listeners.ts";
import { type Mode, type ModeDeps, StartError } from "./mod.ts";
import { planDiscovered } from "./plan.ts";
import { errorMessage } from "../util/error.ts";

/**
 * What Envoy Gateway mode is started with: `authzAddr` is the gRPC ext_authz listen address (default
 * `127.0.0.1:9001`; Envoy Gateway needs `0.0.0.0:9001`); `envoyArgs` are Envoy Gateway's Envoy arguments
 * (empty: Envoy runs elsewhere and is only polled).
 */
export type GatewayDeps = Pick<ModeDeps, "api" | "resolver" | "status" | "authzAddr" | "envoyArgs"> & {
  telemetry?: ModeDeps["telemetry"];
};

const log = getLogger("discovery");
const HTTP_SETTINGS = { protocol: "http", acceptAppCaps: false, shadow: false } as const;

/** A running Envoy Gateway data plane. */
export class GatewayMode implements Mode {
  readonly tailnet: Listeners;
  #config: Config;
  readonly #deps: GatewayDeps;
  readonly #authz: GrpcAuthzProcess;
  readonly #envoy?: EnvoySupervisor;
  #admin: EnvoyAdminClient;
  #health: ServiceHealthTracker;
  #listeners?: DiscoveredListener[];
  #lastKey = "";
  /** The config the running listeners were planned from (a reload re-plans them). */
  #appliedConfig?: Config;
  readonly #byPort: Map<number, string>;
  #warned = new Set<string>();
  #lastError = { listeners: "", clusters: "", apply: "" };
  /** Services the data plane was last told to withhold. */
  #applied = new Set<string>();
  /** The last poll found Envoy draining. */
  #draining = false;
  /** The last poll found no listeners where there were some (applied only when seen twice). */
  #emptyOnce = false;
  #timer?: ReturnType<typeof setTimeout>;
  #polling: Promise<void> = Promise.resolve();
  #closed = false;

  private constructor(
    config: Config,
    deps: GatewayDeps,
    parts: {
      listeners: Listeners;
      authz: GrpcAuthzProcess;
      envoy?: EnvoySupervisor;
      byPort: Map<number, string>;
    },
  ) {
    this.#byPort = parts.byPort;
    this.#config = config;
    this.#deps = deps;
    this.tailnet = parts.listeners;
    this.#authz = parts.authz;
    this.#envoy = parts.envoy;
    this.#admin = envoyAdminOf(config.discovery!);
    this.#health = new ServiceHealthTracker(healthSettings(config));
  }

  /**
   * Starts ext_authz, Envoy (when given arguments), the data plane and the first poll. Envoy may not
   * have listeners yet (Envoy Gateway sends them over xDS): they are picked up by later polls.
   */
  static async start(config: Config, deps: GatewayDeps): Promise<GatewayMode> {
    if (!config.discovery) throw new Error("Envoy Gateway mode needs a config with a discovery block");
    // Filled by each discovery: ext_authz names a request's listener by the port it reached.
    const byPort = new Map<number, string>();
    // gRPC in a supervised child process: no HTTP/2 client can take the data plane down.
    const authz = await GrpcAuthzProcess.start(deps.authzAddr ?? DEFAULT_AUTHZ_ADDRESS, {
      resolver: deps.resolver,
      // Envoy Gateway names the listener in the SecurityPolicy's contextExtensions, as with tailvoy:
      // any name is accepted; grants decide what it allows.
      listeners: (name) => name === "" ? undefined : HTTP_SETTINGS,
      listenerForPort: (port) => byPort.get(port),
      appCapNames: config.tailvoy.capabilities,
      onDecision: (record) => deps.telemetry?.decision(decisionEvent(record)),
    });
    let envoy: EnvoySupervisor | undefined;
    let listeners: Listeners | undefined;
    let gateway: GatewayMode;
    try {
      if (deps.envoyArgs?.length) {
        envoy = new EnvoySupervisor({
          binary: config.tailvoy.envoyBinary,
          extraArgs: deps.envoyArgs,
          // Envoy Gateway's Envoy is ready only after its first xDS answer, which it waits for without
          // a timeout: allow as long as Envoy Gateway's own startup probe (300 s) before giving up.
          readyTimeoutMs: 300_000,
          ...deps.telemetry?.envoyCallbacks(),
        });
        await envoy.startExternal();
        log.info("Envoy ready (pid {pid}, admin {admin})", { pid: envoy.pid, admin: envoy.adminAddress });
      }
      listeners = await Listeners.start(config.tailvoy, { ...deps, serve: true });
      gateway = new GatewayMode(config, deps, { listeners, authz, envoy, byPort });
    } catch (err) {
      await listeners?.close({ drain: 0, unadvertiseGrace: 0 });
      await envoy?.stop({ drainMs: 0 }).catch(() => {});
      await authz.close();
      throw new StartError(
        `could not start discovery mode: ${errorMessage(err)}`,
        {
          exitCode: 1,
          cause: err,
        },
      );
    }
    await gateway.poll();
    gateway.#schedule();
    log.info("ready: discovery mode, polling Envoy admin {admin} every {ms} ms", {
      admin: config.discovery.envoyAdmin,
      ms: config.discovery.pollInterval,
    });
    return gateway;
  }

  /** Listeners found by the last successful poll (`undefined` before the first). */
  get listeners(): readonly DiscoveredListener[] | undefined {
    return this.#listeners;
  }

  /** A poll found Envoy's listeners (and the data plane runs them). */
  get listening(): boolean {
    return this.#listeners !== undefined;
  }

  /** Ready once a poll succeeded and, when we run Envoy, Envoy answers `/ready`. */
  get ready(): boolean {
    return this.#listeners !== undefined && (this.#envoy?.isReady ?? true);
  }

  /** Envoy's process id when we run it. */
  get envoyPid(): number | undefined {
    return this.#envoy?.pid;
  }

  /** Polls Envoy now (serialized with the periodic polls). */
  poll(): Promise<void> {
    this.#polling = this.#polling.then(() => this.#poll()).catch((err) =>
      log.error("discovery poll failed unexpectedly: {error}", {
        error: err instanceof Error ? err.stack : String(err),
      })
    );
    return this.#polling;
  }

  /**
   * Applies a reloaded config: discovery settings and Service mappings take effect at the next poll
   * (made at once); the ext_authz server keeps the capabilities and address it started with.
   */
  async reload(config: Config): Promise<undefined> {
    this.#config = config;
    this.#admin = envoyAdminOf(config.discovery!);
    // Withheld Services stay withheld under the new thresholds until a healthy poll.
    this.#health.settings = healthSettings(config);
    this.#emptyOnce = false;
    this.#warned.clear();
    await this.poll();
    return undefined;
  }

  /** Nothing to prepare: the discovery settings were validated with the config. */
  prepare(): Promise<void> {
    return Promise.resolve();
  }

  #schedule(): void {
    if (this.#closed) return;
    this.#timer = setTimeout(async () => {
      await this.poll();
      this.#schedule();
    }, this.#config.discovery!.pollInterval);
  }

  async #poll(): Promise<void> {
    if (this.#closed) return;
    // One consistent view for the whole poll, even if a reload swaps them meanwhile.
    const snap = { config: this.#config, admin: this.#admin, tracker: this.#health };
    const telemetry = this.#deps.telemetry;
    let listeners: DiscoveredListener[];
    try {
      listeners = await this.#discover(snap);
      telemetry?.discoveryPolls.inc({ what: "listeners", result: "ok" });
      this.#lastError.listeners = "";
    } catch (err) {
      telemetry?.discoveryPolls.inc({ what: "listeners", result: "error" });
      const message = errorMessage(err);
      // Keep serving what we have: an admin API hiccup must not take the tailnet listeners down.
      if (message !== this.#lastError.listeners) {
        log.warn("discovery: {error}; keeping the current listeners and retrying", { error: message });
      }
      this.#lastError.listeners = message;
      this.#emptyOnce = false;
      await this.#syncWithheld(snap);
      return;
    }
    if (this.#closed) return;
    const key = JSON.stringify(listeners);
    // Every listener gone at once is more often a restarting Envoy than a real change: confirm it.
    if (!listeners.length && this.#listeners?.length && !this.#emptyOnce) {
      this.#emptyOnce = true;
      return;
    }
    this.#emptyOnce = false;
    if (key !== this.#lastKey || snap.config !== this.#appliedConfig) {
      try {
        await this.#apply(snap.config, listeners, key);
        this.#lastError.apply = "";
      } catch (err) {
        // Health keeps being tracked; the listeners are planned again at the next poll.
        const message = errorMessage(err);
        if (message !== this.#lastError.apply) {
          log.error("applying the discovered listeners failed: {error}; retrying at the next poll", {
            error: message,
          });
        }
        this.#lastError.apply = message;
      }
    }
    await this.#checkHealth(snap);
  }

  /** Envoy's listeners, read only while Envoy is LIVE before and after (a restart in between is caught). */
  async #discover(snap: { config: Config; admin: EnvoyAdminClient }): Promise<DiscoveredListener[]> {
    const live = async () => {
      const state = await snap.admin.readyState();
      // Draining lasts until Envoy is LIVE again (a restart passes through PRE_INITIALIZING first).
      if (state === "DRAINING") this.#draining = true;
      else if (state === "LIVE") this.#draining = false;
      if (state === "DRAINING") {
        throw new Error(
          "Envoy is draining: its Services are unadvertised and its listeners kept until it stops",
        );
      }
      if (state !== "LIVE") throw new Error(`Envoy is not ready (${state}); its listeners are not final`);
    };
    await live();
    const all = await readListeners(snap.admin);
    await live();
    const filter = listenerFilter(snap.config.discovery!);
    const listeners = filter ? all.filter((l) => filter.test(l.name)) : all;
    if (filter && all.length && !listeners.length) {
      this.#warnOnce(
        "",
        `discovery.listenerFilter ${
          JSON.stringify(snap.config.discovery!.listenerFilter)
        } matches none of Envoy's ${all.length} listeners (${all.slice(0, 5).map((l) => l.name).join(", ")}${
          all.length > 5 ? ", …" : ""
        }): fix the regex`,
      );
    }
    return listeners;
  }

  #warnOnce(listener: string, message: string): void {
    const id = `${listener}\n${message}`;
    if (this.#warned.has(id)) return;
    this.#warned.add(id);
    if (listener) log.warn("listener {listener}: {message}", { listener, message });
    else log.warn("{message}", { message });
  }

  async #apply(config: Config, listeners: DiscoveredListener[], key: string): Promise<void> {
    const plan = planDiscovered(config, listeners);
    const summary = await this.tailnet.apply(plan, {
      warn: (listener, message) => this.#warnOnce(listener, message),
    });
    this.#listeners = listeners;
    this.#lastKey = key;
    this.#appliedConfig = config;
    this.#byPort.clear();
    // HTTP/3 puts a UDP listener on an HTTP listener's port: only TCP listeners name requests' listeners.
    for (const l of listeners) if (l.kind !== "udp") this.#byPort.set(l.port, l.name);
    const telemetry = this.#deps.telemetry;
    for (const kind of ["http", "tcp", "udp"] as const) {
      telemetry?.discoveredListeners.set({ kind }, listeners.filter((l) => l.kind === kind).length);
    }
    log.info(
      "discovered {count} Envoy listeners: added [{added}], removed [{removed}], changed [{changed}]",
      {
        count: listeners.length,
        added: summary.added.join(", "),
        removed: summary.removed.join(", "),
        changed: summary.changed.join(", "),
        listeners: listeners.map((l) => `${l.name} (${l.kind} :${l.port})`),
      },
    );
  }

  /** The clusters behind each Tailscale Service of the current listeners. */
  #clustersOfServices(config: Config): Map<string, string[]> {
    const servicesOf = createServiceMatcher(config);
    const clustersOf = new Map<string, string[]>();
    for (const l of this.#listeners ?? []) {
      if (l.kind === "udp") continue;
      for (const svc of servicesOf(l.name)) {
        clustersOf.set(svc, [...clustersOf.get(svc) ?? [], ...l.clusters]);
      }
    }
    return clustersOf;
  }

  async #checkHealth(
    snap: { config: Config; admin: EnvoyAdminClient; tracker: ServiceHealthTracker },
  ): Promise<void> {
    const clustersOf = this.#clustersOfServices(snap.config);
    let health: Map<string, ClusterHealth> = new Map();
    if (clustersOf.size) {
      try {
        health = await readClusterHealth(snap.admin);
        this.#deps.telemetry?.discoveryPolls.inc({ what: "clusters", result: "ok" });
        this.#lastError.clusters = "";
      } catch (err) {
        this.#deps.telemetry?.discoveryPolls.inc({ what: "clusters", result: "error" });
        const message = errorMessage(err);
        // Unknown health changes nothing (the Go tailvoy counted it as healthy, re-advertising dead Services).
        if (message !== this.#lastError.clusters) {
          log.warn("cluster health unavailable: {error}; Service advertisement left as it is", {
            error: message,
          });
        }
        this.#lastError.clusters = message;
        await this.#syncWithheld(snap);
        return;
      }
    }
    for (const c of snap.tracker.update(clustersOf, health)) {
      if (c.advertise) log.info("{svc} has healthy backends again: advertising it", { svc: c.svc });
      else {
        log.warn("{svc}: no healthy host in [{clusters}] for {n} polls: no longer advertising it", {
          svc: c.svc,
          clusters: c.dead.join(", "),
          n: snap.config.discovery!.unhealthyThreshold,
        });
      }
    }
    await this.#syncWithheld(snap);
  }

  /**
   * Makes the data plane withhold what it should: the tracker's unhealthy Services, or every Service
   * while Envoy drains (Envoy Gateway's shutdown manager drains it before tailvoy gets SIGTERM). A
   * failed prefs write is retried at the next poll.
   */
  async #syncWithheld(snap: { config: Config; tracker: ServiceHealthTracker }): Promise<void> {
    const wanted = this.#draining
      ? new Set(this.#clustersOfServices(snap.config).keys())
      : snap.tracker.withheld;
    this.#deps.telemetry?.servicesWithheld.set(wanted.size);
    const same = wanted.size === this.#applied.size && [...wanted].every((s) => this.#applied.has(s));
    if (same || this.#closed) return;
    try {
      await this.tailnet.withhold(wanted);
      if (this.#draining && wanted.size) {
        log.info("Envoy is draining: no longer advertising [{services}]", {
          services: [...wanted].join(", "),
        });
      }
      this.#applied = new Set(wanted);
    } catch (err) {
      log.warn("updating AdvertiseServices failed: {error}; retrying at the next poll", {
        error: errorMessage(err),
      });
    }
  }

  /**
   * Stops polling, then shuts down like standalone mode: Services unadvertised, after `graceMs` serve
   * entries removed and listeners closed, open flows drained for `drainMs`; then Envoy and ext_authz.
   */
  async close(timeouts: Config["tailvoy"]["timeouts"]): Promise<void> {
    this.#closed = true;
    clearTimeout(this.#timer);
    await this.#polling;
    await this.tailnet.close(timeouts);
    await this.#envoy?.stop({ drainMs: timeouts.drain });
    await this.#authz.close();
  }
}

function healthSettings(config: Config) {
  const d = config.discovery!;
  return { policy: d.healthPolicy, threshold: d.unhealthyThreshold };
}
