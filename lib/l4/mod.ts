/**
 * The L4 data plane: runs the listeners a mode planned ({@link ListenerSpec}; serve or direct ingress;
 * tcp, tls passthrough, udp, and the hand-off of http/https/grpc to Envoy), re-checks live flows, and
 * drains them at shutdown. It binds and relays; telling tailscaled about the listeners is
 * `lib/serve/publish.ts`'s, planning them is the mode's (`lib/modes/`).
 *
 * @module
 */

import type { BackendProxyConfig, Config } from "../config/mod.ts";
import type { IdentityResolver } from "../identity/mod.ts";
import type { LocalApiClient, Status } from "../localapi/mod.ts";
import type { Telemetry } from "../telemetry/mod.ts";
import { getLogger } from "../log.ts";
import type { Entries, Forward } from "../serve/mod.ts";
import { SockDiag } from "../sockdiag/mod.ts";
import { FlowTable } from "./flows.ts";
import { type Ingress, type L7Target, type ListenerDeps, TcpListener, type TcpListenerSpec } from "./tcp.ts";
import { UdpListener } from "./udp.ts";
import { errorMessage } from "../util/error.ts";

export { BACKEND_TLV_TYPES, identityTlvs } from "./backend_proxy.ts";
export { FlowTable } from "./flows.ts";
export { relay, type RelayConn, type RelayResult } from "./relay.ts";
export { type Ingress, type L7Target, routeBySni, TcpListener } from "./tcp.ts";
export { UdpListener, UdpSessionTable } from "./udp.ts";

/** One listener to run, as a mode planned it. */
export interface ListenerSpec {
  /** Listener name (what grants name). */
  name: string;
  protocol: "tcp" | "tls" | "udp" | "http" | "https" | "grpc";
  ingress: Ingress;
  /** Port on the tailnet. */
  port: number;
  /** Backend of a tcp or udp listener, `host:port`. */
  backend?: string;
  /** Send a tcp listener's backend a PROXY v2 header naming the caller. */
  proxyProtocol?: BackendProxyConfig;
  /** SNI routes of a tls listener. */
  routes?: { hostname: string; backend: string; proxyProtocol?: BackendProxyConfig }[];
  /** Envoy target of an http/https/grpc listener. */
  l7?: L7Target;
  /** Audit only: decisions are logged, denied callers let through. */
  shadow?: boolean;
  /** Tailscale Services (`svc:NAME`) the listener is also published as (serve ingress, tcp-based). */
  services?: string[];
}

/** Inputs of {@link DataPlane.start}. */
export interface DataPlaneDeps {
  resolver: IdentityResolver;
  /** tailscaled's status (own IPs; TUN or userspace). */
  status: Status;
  /** tailscaled's LocalAPI: its socket's owner is the only user whose connections a serve port accepts. */
  api: LocalApiClient;
  /** Metrics and decision log. */
  telemetry?: Telemetry;
}

const log = getLogger("l4");

/** One running listener and the spec it was built from (to tell on apply whether it changed). */
interface Entry {
  key: string;
  tcp?: TcpListener;
  udp?: UdpListener;
  forward?: Forward;
  /** One listener per Tailscale Service (serve ingress): each connection's Service scopes WhoIs. */
  services?: { svc: string; tcp: TcpListener; forward: Forward }[];
}

/** What an apply changed. */
export interface ReloadSummary {
  added: string[];
  removed: string[];
  changed: string[];
  kept: string[];
}

/** A running data plane. */
export class DataPlane {
  readonly flows: FlowTable;
  #entries = new Map<string, Entry>();
  readonly #deps: DataPlaneDeps;
  readonly #listenerDeps: ListenerDeps;
  readonly #directHosts: string[];
  readonly #settings: Config["tailvoy"];
  #sockDiag?: SockDiag;

  private constructor(settings: Config["tailvoy"], deps: DataPlaneDeps) {
    this.#deps = deps;
    this.#settings = settings;
    this.flows = new FlowTable(deps.resolver, {
      onRevoked: (flow) => deps.telemetry?.revoked.inc({ listener: flow.listener }),
    });
    const t = settings.timeouts;
    this.#listenerDeps = {
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

  /**
   * A data plane with no listeners yet (see {@link apply}). With `serve`, the serve-ingress peer check is
   * set up now, so a machine that cannot do it fails at start.
   */
  static async start(
    settings: Config["tailvoy"],
    deps: DataPlaneDeps & { serve?: boolean },
  ): Promise<DataPlane> {
    const plane = new DataPlane(settings, deps);
    if (deps.serve) await plane.#ensureServePeerCheck();
    return plane;
  }

  /**
   * Runs exactly `specs`: listeners whose spec did not change keep running (and their open connections
   * with them); added ones start, removed ones stop accepting, changed ones are rebuilt. Open flows of
   * removed or changed listeners are left to finish.
   */
  async apply(specs: readonly ListenerSpec[]): Promise<ReloadSummary> {
    if (specs.some((s) => s.ingress === "serve" && s.protocol !== "udp")) await this.#ensureServePeerCheck();
    const summary: ReloadSummary = { added: [], removed: [], changed: [], kept: [] };
    const next = new Map<string, Entry>();
    const stopped = new Set<string>();
    try {
      for (const spec of specs) {
        const old = this.#entries.get(spec.name);
        if (old && old.key === entryKey(spec)) {
          next.set(spec.name, old);
          summary.kept.push(spec.name);
          continue;
        }
        if (old) {
          stopEntry(old);
          stopped.add(spec.name);
        }
        next.set(spec.name, await this.#startListener(spec));
        (old ? summary.changed : summary.added).push(spec.name);
      }
    } catch (err) {
      // Keep what runs (listeners started so far, old ones not reached yet), so it can be published and stopped.
      for (const [name, e] of this.#entries) if (!next.has(name) && !stopped.has(name)) next.set(name, e);
      this.#entries = next;
      throw err;
    }
    for (const [name, old] of this.#entries) {
      if (!next.has(name)) {
        stopEntry(old);
        summary.removed.push(name);
      }
    }
    this.#entries = next;
    this.flows.startRecheck(this.#settings.timeouts.recheck);
    return summary;
  }

  /** The serve entries of the running listeners: tailnet port (and Service) → our loopback listener. */
  serveEntries(): Entries {
    const entries = [...this.#entries.values()];
    const services: Record<string, Forward[]> = {};
    for (const e of entries) for (const s of e.services ?? []) (services[s.svc] ??= []).push(s.forward);
    return { node: entries.flatMap((e) => e.forward ? [e.forward] : []), services };
  }

  async #startListener(spec: ListenerSpec): Promise<Entry> {
    if (spec.shadow) {
      log.warn("listener {name} is in SHADOW mode: decisions are logged, but every caller is let through", {
        name: spec.name,
      });
    }
    const key = entryKey(spec);
    if (spec.protocol === "udp") {
      const udp = await UdpListener.start({
        name: spec.name,
        bind: this.#directHosts.map((hostname) => ({ hostname, port: spec.port })),
        backend: spec.backend!,
        shadow: spec.shadow,
      }, this.#listenerDeps);
      return { key, udp };
    }
    const tcpSpec: TcpListenerSpec = {
      name: spec.name,
      protocol: spec.protocol,
      ingress: spec.ingress,
      bind: spec.ingress === "serve"
        ? [{ hostname: "127.0.0.1", port: 0 }]
        : this.#directHosts.map((hostname) => ({ hostname, port: spec.port })),
      port: spec.port,
      backend: spec.backend,
      proxyProtocol: spec.proxyProtocol,
      routes: spec.routes,
      l7: spec.l7,
      shadow: spec.shadow,
    };
    const tcp = await TcpListener.start(tcpSpec, this.#listenerDeps);
    log.info("listener {name} ({protocol}, {ingress}) on {addrs}", {
      name: spec.name,
      protocol: spec.protocol,
      ingress: spec.ingress,
      addrs: tcp.addrs.map((a) => `${a.hostname}:${a.port}`).join(", "),
    });
    const forward = spec.ingress === "serve"
      ? { port: spec.port, target: `127.0.0.1:${tcp.addrs[0].port}` }
      : undefined;
    const services = [];
    try {
      for (const svc of spec.ingress === "serve" ? spec.services ?? [] : []) {
        const svcTcp = await TcpListener.start({ ...tcpSpec, svcName: svc }, this.#listenerDeps);
        services.push({
          svc,
          tcp: svcTcp,
          forward: { port: spec.port, target: `127.0.0.1:${svcTcp.addrs[0].port}` },
        });
      }
    } catch (err) {
      stopEntry({ key, tcp, services });
      throw err;
    }
    return { key, tcp, forward, services };
  }

  /**
   * Serve ingress: a connection's PROXY header names the caller, so only tailscaled may open one. Each
   * connection's other end must belong to tailscaled's user (the owner of its LocalAPI socket), asked of
   * the kernel by exact 4-tuple at accept.
   */
  async #ensureServePeerCheck(): Promise<void> {
    if (this.#sockDiag || !this.#settings.servePeerCheck) return;
    const socket = this.#deps.api.socket;
    let uid: number | null;
    try {
      uid = (await Deno.stat(socket)).uid;
    } catch (err) {
      throw new Error(
        `Cannot tell tailscaled's user from its socket ${socket} (${err}): check the path, or set tailvoy.servePeerCheck: false`,
      );
    }
    let diag: SockDiag;
    try {
      diag = SockDiag.open();
    } catch (err) {
      throw new Error(
        `Serve ingress must check that connections come from tailscaled, and cannot: ${
          errorMessage(err)
        }. Fix that, use tailvoy.ingress: direct, or set tailvoy.servePeerCheck: false (then any local process that finds a serve port can name any caller)`,
      );
    }
    this.#sockDiag = diag;
    this.#listenerDeps.servePeer = (conn) => {
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

  /**
   * Stops accepting and drains: open flows (also those other planes registered in {@link flows}) get
   * `drainMs` to finish, then are closed.
   */
  async close(drainMs: number): Promise<void> {
    this.flows.stopRecheck();
    for (const e of this.#entries.values()) for (const s of e.services ?? []) s.tcp.close();
    for (const l of this.tcp) l.close();
    await this.flows.drain(drainMs);
    for (const l of this.udp) l.close();
    this.#sockDiag?.close();
    this.#sockDiag = undefined;
  }
}

function stopEntry(entry: Entry): void {
  entry.tcp?.close();
  entry.udp?.close();
  for (const s of entry.services ?? []) s.tcp.close();
}

// What a listener is built from: equal keys mean an apply can keep the running listener. The secret and
// the Service index of an L7 target are the same object for the whole process.
function entryKey(spec: ListenerSpec): string {
  const l7 = spec.l7 && { ...spec.l7, secret: undefined, services: undefined };
  return JSON.stringify({ ...spec, l7 });
}
