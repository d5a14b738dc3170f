/**
 * The L4 data plane: builds the tailnet listeners of a config (serve or direct ingress; tcp, tls
 * passthrough, udp, and the hand-off of http/https/grpc to Envoy), re-checks live flows, and shuts down
 * in order: no new connections, our serve entries removed, open flows drained.
 *
 * @module
 */

import { type Config, createServiceMatcher, L7_PROTOCOLS, type ListenerConfig } from "../config/mod.ts";
import type { IdentityResolver } from "../identity/mod.ts";
import type { LocalApiClient, Status } from "../localapi/mod.ts";
import type { Telemetry } from "../telemetry/mod.ts";
import { getLogger } from "../log.ts";
import { formatAddr } from "../net/address.ts";
import { type Entries, type Forward, ServeSession } from "../serve/mod.ts";
import { SockDiag } from "../sockdiag/mod.ts";
import { FlowTable } from "./flows.ts";
import { type L7Target, type TcpDeps, TcpListener, type TcpListenerSpec } from "./tcp.ts";
import { UdpListener } from "./udp.ts";
import { delay } from "../util/async.ts";
import { errorMessage } from "../util/error.ts";

export { BACKEND_TLV_TYPES, identityTlvs } from "./backend_proxy.ts";
export { FlowTable } from "./flows.ts";
export { relay, type RelayConn, type RelayResult } from "./relay.ts";
export { type L7Target, routeBySni, TcpListener } from "./tcp.ts";
export { UdpListener, UdpSessionTable } from "./udp.ts";

/** Inputs of {@link startDataPlane}. */
export interface DataPlaneDeps {
  api: LocalApiClient;
  resolver: IdentityResolver;
  /** tailscaled's status (own IPs; TUN or userspace). */
  status: Status;
  /** Envoy targets of the L7 listeners, by listener name; L7 listeners without one are not started. */
  l7Targets?: Map<string, L7Target>;
  /** tcp listeners whose backend is sent a PROXY v2 header naming the caller (discovered Envoy listeners). */
  proxyProtocolTo?: ReadonlySet<string>;
  /** Metrics and decision log. */
  telemetry?: Telemetry;
}

const log = getLogger("l4");

/** One running listener and what it was built from (to tell on reload whether it changed). */
interface Entry {
  key: string;
  tcp?: TcpListener;
  udp?: UdpListener;
  forward?: Forward;
  /** One listener per Tailscale Service this listener is mapped to (serve ingress). */
  services?: { svc: string; tcp: TcpListener; forward: Forward }[];
}

/** What a reload changed. */
export interface ReloadSummary {
  added: string[];
  removed: string[];
  changed: string[];
  kept: string[];
}

/** A running data plane. */
export class DataPlane {
  readonly flows: FlowTable;
  serve?: ServeSession;
  #entries = new Map<string, Entry>();
  #closing = false;
  readonly #deps: DataPlaneDeps;
  readonly #tcpDeps: TcpDeps;
  readonly #directHosts: string[];
  #servicesOf: (listener: string) => string[];
  /** Services we added to AdvertiseServices (to remove exactly those). */
  #advertised: string[] = [];
  /** Services kept out of AdvertiseServices (unhealthy in discovery mode). */
  #withheld = new Set<string>();
  /** Services already reported as not approved (once each is enough). */
  #unapprovedWarned = new Set<string>();
  #proxyProtocolTo: ReadonlySet<string>;
  #sockDiag?: SockDiag;

  private constructor(config: Config, deps: DataPlaneDeps) {
    this.#deps = deps;
    this.#servicesOf = createServiceMatcher(config);
    this.#proxyProtocolTo = deps.proxyProtocolTo ?? new Set();
    this.flows = new FlowTable(deps.resolver, {
      onRevoked: (flow) => deps.telemetry?.revoked.inc({ listener: flow.listener }),
    });
    const t = config.tailvoy.timeouts;
    this.#tcpDeps = {
      resolver: deps.resolver,
      flows: this.flows,
      telemetry: deps.telemetry,
      timeouts: { proxyHeader: 3000, tlsHello: t.tlsHello, dial: t.dial },
      selfIps: deps.status.TailscaleIPs,
    };
    // Behind a kernel TUN the tailnet IPs are ours to bind; behind userspace networking tailscaled
    // delivers to 127.0.0.1:PORT and WhoIs maps that address back to the peer.
    this.#directHosts = deps.status.TUN ? deps.status.TailscaleIPs : ["127.0.0.1"];
  }

  /** Running TCP listeners. */
  get tcp(): TcpListener[] {
    return [...this.#entries.values()].flatMap((e) => e.tcp ? [e.tcp] : []);
  }

  /** Running UDP listeners. */
  get udp(): UdpListener[] {
    return [...this.#entries.values()].flatMap((e) => e.udp ? [e.udp] : []);
  }

  /** Binds every listener of `config` and, in serve mode, asks tailscaled to forward to them. */
  static async start(config: Config, deps: DataPlaneDeps): Promise<DataPlane> {
    const plane = new DataPlane(config, deps);
    try {
      const serve = config.discovery !== undefined ||
        Object.values(config.listeners).some((l) => l.ingress === "serve" && l.protocol !== "udp");
      if (serve && config.tailvoy.servePeerCheck) await plane.#checkServePeers();
      for (const [name, l] of Object.entries(config.listeners)) {
        const entry = await plane.#startListener(name, l, deps.l7Targets);
        if (entry) plane.#entries.set(name, entry);
      }
      await plane.#publish();
    } catch (err) {
      await plane.close(0);
      throw err;
    }
    plane.flows.startRecheck(config.tailvoy.timeouts.recheck);
    return plane;
  }

  // Writes our serve entries and advertises our Services (read-modify-write of the prefs).
  async #publish(): Promise<void> {
    const entries = this.#serveEntries();
    const services = Object.keys(entries.services).filter((s) => !this.#withheld.has(s));
    if (services.length && !this.#deps.status.Self?.Tags.length) {
      throw new Error(
        `Tailscale Services (${
          services.join(", ")
        }) need a tagged node, and this one has no tags: log tailscaled in with tags (tailscale.tags + TS_AUTHKEY or OAuth), or set tailvoy.ingress: direct`,
      );
    }
    if (this.serve) await this.serve.setEntries(entries);
    else if (entries.node.length || services.length) await this.#openServe(entries);
    await this.#advertise(services);
  }

  async #advertise(services: string[]): Promise<void> {
    if (!services.length && !this.#advertised.length) return;
    const prefs = await this.#deps.api.getPrefs();
    const current = new Set(prefs.AdvertiseServices);
    const added = services.filter((s) => !current.has(s));
    const stale = this.#advertised.filter((s) => !services.includes(s));
    if (added.length || stale.length) {
      const next = [...prefs.AdvertiseServices.filter((s) => !stale.includes(s)), ...added];
      await this.#deps.api.editPrefs({ AdvertiseServices: next });
      log.info("advertising Tailscale Services [{services}]", { services: next.join(", ") });
    }
    this.#advertised = [...this.#advertised.filter((s) => !stale.includes(s)), ...added];
    if (services.length) void this.#checkApproved(services);
  }

  // The control server must approve a Service host (autoApprovers.services or the admin console);
  // until it does, the Service's address does not reach us. Say so instead of failing silently.
  async #checkApproved(services: string[]): Promise<void> {
    await delay(10_000);
    if (this.#closing) return;
    try {
      const status = await this.#deps.api.status();
      const self = status.Self as { CapMap?: Record<string, unknown> } | null | undefined;
      const hosted = JSON.stringify(self?.CapMap?.["service-host"] ?? {});
      for (const svc of services) {
        if (!hosted.includes(`"${svc}"`) && !this.#unapprovedWarned.has(svc)) {
          this.#unapprovedWarned.add(svc);
          log.warn(
            "{svc} is advertised but the control server has not made this node a host of it; approve it in the admin console or with autoApprovers.services in the tailnet policy",
            { svc },
          );
        }
      }
    } catch { /* best effort */ }
  }

  /**
   * Keeps `services` out of AdvertiseServices (their serve entries stay, so open connections and
   * late arrivals are still served) and advertises again the ones no longer in the set.
   */
  async withhold(services: ReadonlySet<string>): Promise<void> {
    this.#withheld = new Set(services);
    if (!this.#closing) {
      await this.#advertise(Object.keys(this.#serveEntries().services).filter((s) => !services.has(s)));
    }
  }

  /** Removes our Services from AdvertiseServices, so clients move to other replicas. */
  async unadvertise(): Promise<void> {
    if (!this.#advertised.length) return;
    const prefs = await this.#deps.api.getPrefs();
    await this.#deps.api.editPrefs({
      AdvertiseServices: prefs.AdvertiseServices.filter((s) => !this.#advertised.includes(s)),
    });
    log.info("no longer advertising [{services}]", { services: this.#advertised.join(", ") });
    this.#advertised = [];
  }

  /**
   * Applies a new config: listeners whose settings did not change keep running (and their open
   * connections with them); added ones start, removed ones stop accepting, changed ones are rebuilt.
   * Open flows of removed or changed listeners are left to finish.
   */
  async reload(
    config: Config,
    options: { l7Targets?: Map<string, L7Target>; proxyProtocolTo?: ReadonlySet<string> } = {},
  ): Promise<ReloadSummary> {
    const summary: ReloadSummary = { added: [], removed: [], changed: [], kept: [] };
    const next = new Map<string, Entry>();
    this.#servicesOf = createServiceMatcher(config);
    this.#proxyProtocolTo = options.proxyProtocolTo ?? new Set();
    for (const [name, l] of Object.entries(config.listeners)) {
      const old = this.#entries.get(name);
      if (old && old.key === this.#entryKey(name, l, options.l7Targets?.get(name))) {
        next.set(name, old);
        summary.kept.push(name);
        continue;
      }
      if (old) this.#stopEntry(old);
      const entry = await this.#startListener(name, l, options.l7Targets);
      if (entry) next.set(name, entry);
      (old ? summary.changed : summary.added).push(name);
    }
    for (const [name, old] of this.#entries) {
      if (!next.has(name)) {
        this.#stopEntry(old);
        summary.removed.push(name);
      }
    }
    this.#entries = next;
    await this.#publish();
    this.flows.startRecheck(config.tailvoy.timeouts.recheck);
    return summary;
  }

  #serveEntries(): Entries {
    const entries = [...this.#entries.values()];
    const services: Record<string, Forward[]> = {};
    for (const e of entries) for (const s of e.services ?? []) (services[s.svc] ??= []).push(s.forward);
    return { node: entries.flatMap((e) => e.forward ? [e.forward] : []), services };
  }

  #stopEntry(entry: Entry): void {
    entry.tcp?.close();
    entry.udp?.close();
    for (const s of entry.services ?? []) s.tcp.close();
  }

  async #startListener(
    name: string,
    l: ListenerConfig,
    l7Targets?: Map<string, L7Target>,
  ): Promise<Entry | undefined> {
    if (l.shadow) {
      log.warn("listener {name} is in SHADOW mode: decisions are logged, but every caller is let through", {
        name,
      });
    }
    const l7 = l7Targets?.get(name);
    const svcs = l.ingress === "serve" && l.protocol !== "udp" ? this.#servicesOf(name) : [];
    const key = this.#entryKey(name, l, l7);
    if (l.protocol === "udp") {
      const udp = await UdpListener.start({
        name,
        bind: this.#directHosts.map((hostname) => ({ hostname, port: l.port })),
        backend: l.backend!,
        shadow: l.shadow,
      }, this.#tcpDeps);
      return { key, udp };
    }
    if (L7_PROTOCOLS.includes(l.protocol) && !l7) {
      log.error("listener {name} ({protocol}) needs Envoy, which is not running: not started", {
        name,
        protocol: l.protocol,
      });
      return undefined;
    }
    const spec: TcpListenerSpec = {
      name,
      protocol: l.protocol as TcpListenerSpec["protocol"],
      ingress: l.ingress,
      bind: l.ingress === "serve"
        ? [{ hostname: "127.0.0.1", port: 0 }]
        : this.#directHosts.map((hostname) => ({ hostname, port: l.port })),
      port: l.port,
      backend: l.backend,
      // Discovered Envoy listeners with the proxy_protocol filter get the same header, without TLVs.
      proxyProtocol: l.protocol === "tcp"
        ? l.proxyProtocol ?? (this.#proxyProtocolTo.has(name) ? { version: "v2", tlvs: [] } : undefined)
        : undefined,
      routes: l.routes.flatMap((r) =>
        r.hostname && r.backend
          ? [{ hostname: r.hostname, backend: r.backend, proxyProtocol: r.proxyProtocol ?? l.proxyProtocol }]
          : []
      ),
      l7,
      shadow: l.shadow,
    };
    const tcp = new TcpListener(spec, this.#tcpDeps);
    log.info("listener {name} ({protocol}, {ingress}) on {addrs}", {
      name,
      protocol: l.protocol,
      ingress: l.ingress,
      addrs: tcp.addrs.map(formatAddr).join(", "),
    });
    const forward = l.ingress === "serve"
      ? { port: l.port, target: `127.0.0.1:${tcp.addrs[0].port}` }
      : undefined;
    // A listener of its own per Service, so each connection's Service is known and scopes WhoIs.
    const services = svcs.map((svc) => {
      const svcTcp = new TcpListener({ ...spec, svcName: svc }, this.#tcpDeps);
      return { svc, tcp: svcTcp, forward: { port: l.port, target: `127.0.0.1:${svcTcp.addrs[0].port}` } };
    });
    return { key, tcp, forward, services };
  }

  async #openServe(entries: Entries): Promise<void> {
    this.serve = await ServeSession.open(this.#deps.api, {
      onWrite: () => this.#deps.telemetry?.serveConfigWrites.inc(),
    });
    await this.serve.setEntries(entries);
    // tailscaled drops our entries when the bus stream ends (e.g. it restarted): put them back.
    const session = this.serve;
    void session.lost.then(async () => {
      while (!this.#closing && this.serve === session) {
        log.warn("lost the tailscaled session that owns our serve entries; re-registering");
        try {
          await this.#openServe(this.#serveEntries());
          return;
        } catch (err) {
          log.warn("re-registering serve entries failed: {error}; retrying", { error: String(err) });
          await delay(1000);
        }
      }
    });
  }

  /**
   * Shuts down in order: our Services are unadvertised and, after `graceMs`, our serve entries are
   * removed and listeners stop accepting; open flows get `drainMs` to finish, then are closed.
   */
  /**
   * Serve ingress: a connection's PROXY header names the caller, so only tailscaled may open one. Each
   * connection's other end must belong to tailscaled's user (the owner of its LocalAPI socket), asked of
   * the kernel by exact 4-tuple at accept.
   */
  async #checkServePeers(): Promise<void> {
    let uid: number | null;
    try {
      uid = (await Deno.stat(this.#deps.api.socket)).uid;
    } catch (err) {
      throw new Error(
        `Cannot tell tailscaled's user from its socket ${this.#deps.api.socket} (${err}): check the path, or set tailvoy.servePeerCheck: false`,
      );
    }
    try {
      this.#sockDiag = SockDiag.open();
    } catch (err) {
      throw new Error(
        `Serve ingress must check that connections come from tailscaled, and cannot: ${
          errorMessage(err)
        }. Fix that, use tailvoy.ingress: direct, or set tailvoy.servePeerCheck: false (then any local process that finds a serve port can name any caller)`,
      );
    }
    const diag = this.#sockDiag;
    this.#tcpDeps.servePeer = (conn) => {
      const peer = conn.remoteAddr;
      const local = conn.localAddr;
      let owner;
      try {
        owner = diag.tcpOwner({ ip: peer.hostname, port: peer.port }, {
          ip: local.hostname,
          port: local.port,
        });
      } catch (err) {
        return `cannot tell who opened the connection (${errorMessage(err)})`;
      }
      if (!owner) {
        return "the connecting socket is gone (or unknown to the kernel): cannot tell it is tailscaled";
      }
      if (owner.uid !== uid) {
        return `the connecting process runs as uid ${owner.uid}, not tailscaled's ${uid}: only tailscaled may send PROXY headers to a serve port`;
      }
      return undefined;
    };
    log.info("serve ingress accepts connections from tailscaled's user only (uid {uid})", { uid });
  }

  async close(drainMs: number, options: { graceMs?: number } = {}): Promise<void> {
    this.#closing = true;
    this.flows.stopRecheck();
    if (this.#advertised.length) {
      await this.unadvertise().catch((err) =>
        log.warn("unadvertising failed: {error}", { error: String(err) })
      );
      await delay(options.graceMs ?? 0);
    }
    await this.serve?.close();
    for (const e of this.#entries.values()) for (const s of e.services ?? []) s.tcp.close();
    for (const l of this.tcp) l.close();
    await this.flows.drain(drainMs);
    for (const l of this.udp) l.close();
    this.#sockDiag?.close();
    this.#sockDiag = undefined;
  }

  // What a listener is built from: equal keys mean a reload can keep the running listener.
  #entryKey(name: string, l: ListenerConfig, l7: L7Target | undefined): string {
    const services = l.ingress === "serve" && l.protocol !== "udp" ? this.#servicesOf(name) : [];
    const target = l7 && { ...l7, secret: undefined, services: undefined };
    return JSON.stringify({ l, l7: target ?? null, services, proxy: this.#proxyProtocolTo.has(name) });
  }
}
