/**
 * The L4 data plane: builds the tailnet listeners of a config (serve or direct ingress; tcp, tls
 * passthrough, udp, and the hand-off of http/https/grpc to Envoy), re-checks live flows, and shuts down
 * in order: no new connections, our serve entries removed, open flows drained.
 *
 * @module
 */

import type { Config } from "../config/mod.ts";
import type { IdentityResolver } from "../identity/mod.ts";
import type { LocalApiClient, Status } from "../localapi/mod.ts";
import type { Telemetry } from "../telemetry/mod.ts";
import { getLogger } from "../log.ts";
import { type Forward, ServeSession } from "../serve/mod.ts";
import { FlowTable } from "./flows.ts";
import { type L7Target, TcpListener, type TcpListenerSpec } from "./tcp.ts";
import { UdpListener } from "./udp.ts";

export { FlowTable } from "./flows.ts";
export { relay, type RelayConn, type RelayResult } from "./relay.ts";
export { type L7Target, routeBySni, SECRET_TLV_TYPE, TcpListener } from "./tcp.ts";
export { UdpListener, UdpSessionTable } from "./udp.ts";

/** Inputs of {@link startDataPlane}. */
export interface DataPlaneDeps {
  api: LocalApiClient;
  resolver: IdentityResolver;
  /** tailscaled's status (own IPs; TUN or userspace). */
  status: Status;
  /** Envoy targets of the L7 listeners, by listener name; L7 listeners without one are not started. */
  l7Targets?: Map<string, L7Target>;
  /** Metrics and decision log. */
  telemetry?: Telemetry;
}

const log = getLogger("l4");
const L7 = new Set(["http", "https", "grpc"]);

/** A running data plane. */
export class DataPlane {
  readonly flows: FlowTable;
  readonly tcp: TcpListener[] = [];
  readonly udp: UdpListener[] = [];
  serve?: ServeSession;
  #forwards: Forward[] = [];
  #closing = false;
  readonly #api: LocalApiClient;
  readonly #telemetry?: Telemetry;

  private constructor(api: LocalApiClient, flows: FlowTable, telemetry?: Telemetry) {
    this.#api = api;
    this.flows = flows;
    this.#telemetry = telemetry;
  }

  /** Binds every listener of `config` and, in serve mode, asks tailscaled to forward to them. */
  static async start(config: Config, deps: DataPlaneDeps): Promise<DataPlane> {
    const t = config.tailvoy.timeouts;
    const flows = new FlowTable(deps.resolver, {
      onRevoked: (flow) => deps.telemetry?.revoked.inc({ listener: flow.listener }),
    });
    const plane = new DataPlane(deps.api, flows, deps.telemetry);
    const tcpDeps = {
      resolver: deps.resolver,
      flows,
      telemetry: deps.telemetry,
      timeouts: { proxyHeader: 3000, tlsHello: t.tlsHello, dial: t.dial },
    };
    // Behind a kernel TUN the tailnet IPs are ours to bind; behind userspace networking tailscaled
    // delivers to 127.0.0.1:PORT and WhoIs maps that address back to the peer.
    const directHosts = deps.status.TUN ? deps.status.TailscaleIPs : ["127.0.0.1"];
    try {
      for (const [name, l] of Object.entries(config.listeners)) {
        if (l.shadow) {
          log.warn(
            "listener {name} is in SHADOW mode: decisions are logged, but every caller is let through",
            {
              name,
            },
          );
        }
        if (l.protocol === "udp") {
          plane.udp.push(
            await UdpListener.start({
              name,
              bind: directHosts.map((hostname) => ({ hostname, port: l.port })),
              backend: l.backend!,
              shadow: l.shadow,
            }, tcpDeps),
          );
          continue;
        }
        const l7 = deps.l7Targets?.get(name);
        if (L7.has(l.protocol) && !l7) {
          log.error("listener {name} ({protocol}) needs Envoy, which is not running: not started", {
            name,
            protocol: l.protocol,
          });
          continue;
        }
        const spec: TcpListenerSpec = {
          name,
          protocol: l.protocol as TcpListenerSpec["protocol"],
          ingress: l.ingress,
          bind: l.ingress === "serve"
            ? [{ hostname: "127.0.0.1", port: 0 }]
            : directHosts.map((hostname) => ({ hostname, port: l.port })),
          backend: l.backend,
          routes: l.routes.flatMap((r) =>
            r.hostname && r.backend ? [{ hostname: r.hostname, backend: r.backend }] : []
          ),
          l7,
          shadow: l.shadow,
        };
        if (l.shadow) {
          log.warn(
            "listener {name} is in SHADOW mode: decisions are logged, but every caller is let through",
            {
              name,
            },
          );
        }
        const listener = new TcpListener(spec, tcpDeps);
        plane.tcp.push(listener);
        if (l.ingress === "serve") {
          plane.#forwards.push({ port: l.port, target: `127.0.0.1:${listener.addrs[0].port}` });
        }
        log.info("listener {name} ({protocol}, {ingress}) on {addrs}", {
          name,
          protocol: l.protocol,
          ingress: l.ingress,
          addrs: listener.addrs.map((a) => `${a.hostname}:${a.port}`).join(", "),
        });
      }
      if (plane.#forwards.length) await plane.#openServe();
    } catch (err) {
      await plane.close(0);
      throw err;
    }
    plane.flows.startRecheck(t.recheck);
    return plane;
  }

  async #openServe(): Promise<void> {
    this.serve = await ServeSession.open(this.#api, {
      onWrite: () => this.#telemetry?.serveConfigWrites.inc(),
    });
    await this.serve.setForwards(this.#forwards);
    // tailscaled drops our entries when the bus stream ends (e.g. it restarted): put them back.
    const session = this.serve;
    void session.lost.then(async () => {
      while (!this.#closing && this.serve === session) {
        log.warn("lost the tailscaled session that owns our serve entries; re-registering");
        try {
          await this.#openServe();
          return;
        } catch (err) {
          log.warn("re-registering serve entries failed: {error}; retrying", { error: String(err) });
          await new Promise((r) => setTimeout(r, 1000));
        }
      }
    });
  }

  /** Stops accepting, removes our serve entries, lets open flows finish for `drainMs`, then closes them. */
  async close(drainMs: number): Promise<void> {
    this.#closing = true;
    this.flows.stopRecheck();
    await this.serve?.close();
    for (const l of this.tcp) l.close();
    await this.flows.drain(drainMs);
    for (const l of this.udp) l.close();
  }
}
