/**
 * TCP listeners of the data plane: accept a tailnet connection, establish who is calling (from the
 * PROXY header tailscaled sends in serve mode, or from the socket in direct mode), authorize, and relay
 * to the backend — plain `tcp`, `tls` passthrough routed by SNI (either opening, on request, with a PROXY
 * v2 header naming the caller: `backend_proxy.ts`), or, for http/https/grpc, to Envoy with our own PROXY
 * v2 header carrying the caller and a per-process secret.
 *
 * @module
 */

import { authorize, type Caller } from "../access/mod.ts";
import type { BackendProxyConfig } from "../config/mod.ts";
import type { Identity, IdentityResolver } from "../identity/mod.ts";
import { formatAddr, isLoopbackIp, joinHostPort, splitAddr } from "../net/address.ts";
import { getLogger } from "../log.ts";
import { concat, writeAll } from "../util/bytes.ts";
import { formatExplanation } from "../policy/mod.ts";
import { encodeProxyV2, type ProxyTlv, readProxyHeader } from "../proxy_protocol/mod.ts";
import type { Telemetry } from "../telemetry/mod.ts";
import { readClientHello } from "../tls/client_hello.ts";
import { admit } from "./admit.ts";
import { identityTlvs } from "./backend_proxy.ts";
import { type FlowTable, type L7Recheck, l7Recheck } from "./flows.ts";
import { relay, type RelayConn } from "./relay.ts";

import { SECRET_TLV_TYPE, type ServiceIndex } from "../wire.ts";
import { closeQuietly, delay } from "../util/async.ts";
import { errorMessage } from "../util/error.ts";

/** How connections reach a listener. */
export type Ingress = "serve" | "direct";

/**
 * Where an L7 listener's connections go: Envoy's listener, told the caller in a PROXY v2 header with
 * our secret and the Service (Envoy we run, see `lib/wire.ts`) or, in discovery mode, without them or
 * without any header (Envoy Gateway's).
 */
export interface L7Target {
  hostname: string;
  port: number;
  /** Sent in the secret TLV; absent in discovery mode (Envoy Gateway's listeners cannot check it). */
  secret?: Uint8Array;
  /** With the secret: the Services, sent as the PROXY destination port. */
  services?: ServiceIndex;
  /** Send a PROXY v2 header (default true): false for an Envoy listener without the proxy_protocol filter. */
  proxyProtocol?: boolean;
  /**
   * Refuse callers that hold no tailvoy rule at all, before Envoy sees them (discovery mode: a route the
   * operator forgot to attach a SecurityPolicy to then still needs a grant).
   */
  requireGrant?: boolean;
}

/** What one TCP listener does. */
export interface TcpListenerSpec {
  /** Listener name (what grants name). */
  name: string;
  protocol: "tcp" | "tls" | "http" | "https" | "grpc";
  ingress: Ingress;
  /** Addresses to bind: serve mode `127.0.0.1:0`; direct mode the tailnet IPs or 127.0.0.1 with the port. */
  bind: { hostname: string; port: number }[];
  /**
   * The listener's port on the tailnet: the destination port of the PROXY header sent to a backend
   * (default: the backend's port).
   */
  port?: number;
  /** Backend of a tcp listener, `host:port`. */
  backend?: string;
  /**
   * Send the backend of a tcp listener a PROXY v2 header naming the caller (`lib/l4/backend_proxy.ts`):
   * the listener's `proxyProtocol`, or a discovered Envoy listener's (no TLVs).
   */
  proxyProtocol?: BackendProxyConfig;
  /** SNI routes of a tls listener (exact names first, then `*.` wildcards), each with its own PROXY header. */
  routes?: { hostname: string; backend: string; proxyProtocol?: BackendProxyConfig }[];
  /** Envoy target of an http/https/grpc listener. */
  l7?: L7Target;
  /** Audit only: decisions are computed and logged, but denied callers are let through. */
  shadow?: boolean;
  /** The Tailscale Service (`svc:NAME`) this listener serves: WhoIs is scoped to it. */
  svcName?: string;
}

/** Where one connection goes, and what goes ahead of the caller's bytes. */
interface Target {
  backend: string;
  /** Bytes already read from the caller (after the PROXY header; a tls listener's ClientHello). */
  payload: Uint8Array;
  sni?: string;
  /** The PROXY header the backend is sent, for the admitted identity; `undefined` from it: refuse. */
  header?: (identity: Identity | undefined) => Uint8Array | undefined;
}

/** Timeouts and limits of the TCP data plane, in ms. */
export interface TcpTimeouts {
  proxyHeader: number;
  tlsHello: number;
  dial: number;
  idle?: number;
  maxLifetime?: number;
}

/** Shared services of the listeners (tcp and udp). */
export interface ListenerDeps {
  resolver: IdentityResolver;
  flows: FlowTable;
  timeouts: TcpTimeouts;
  /**
   * Serve ingress: why a connection must be refused before its PROXY header is read (it does not come
   * from tailscaled), or `undefined` to go on. Absent: every loopback peer is believed.
   */
  servePeer?: (conn: Deno.TcpConn) => string | undefined;
  /** Metrics and decision log. */
  telemetry?: Telemetry;
  /** This node's tailnet IPs: the destination address of PROXY headers to tcp/tls backends. */
  selfIps?: readonly string[];
}

const log = getLogger("l4");

/** The tls route for `sni`: exact name first, then the longest `*.` wildcard. */
export function sniRoute<R extends { hostname: string }>(routes: readonly R[], sni: string): R | undefined {
  const name = sni.toLowerCase();
  const exact = routes.find((r) => r.hostname.toLowerCase() === name);
  if (exact) return exact;
  const wild = routes
    .filter((r) => r.hostname.startsWith("*.") && name.endsWith(r.hostname.slice(1).toLowerCase()))
    .sort((a, b) => b.hostname.length - a.hostname.length);
  return wild[0];
}

/** The backend for `sni` among tls routes (see {@link sniRoute}). */
export function routeBySni(
  routes: readonly { hostname: string; backend: string }[],
  sni: string,
): string | undefined {
  return sniRoute(routes, sni)?.backend;
}

async function dial(addr: string, timeoutMs: number): Promise<Deno.TcpConn> {
  const { ip, port } = splitAddr(addr);
  // Not AbortSignal.timeout: its timer would outlive every successful connect by `timeoutMs`.
  const abort = new AbortController();
  const timer = setTimeout(
    () => abort.abort(new Error(`connect timed out after ${timeoutMs} ms`)),
    timeoutMs,
  );
  try {
    return await Deno.connect({ hostname: ip, port: port!, signal: abort.signal });
  } finally {
    clearTimeout(timer);
  }
}

/** A running TCP listener. */
export class TcpListener {
  readonly spec: TcpListenerSpec;
  readonly #deps: ListenerDeps;
  readonly #listeners: Deno.TcpListener[] = [];
  readonly #pending = new Set<Deno.Conn>();
  #closed = false;
  /** Connections refused (deny, bad header, timeout), for metrics and tests. */
  refused = 0;

  private constructor(spec: TcpListenerSpec, deps: ListenerDeps) {
    this.spec = spec;
    this.#deps = deps;
  }

  /** Binds the listener's addresses (all or none); connections are served until {@link close}. */
  static start(spec: TcpListenerSpec, deps: ListenerDeps): Promise<TcpListener> {
    const l = new TcpListener(spec, deps);
    try {
      for (const addr of spec.bind) {
        l.#listeners.push(Deno.listen({ hostname: addr.hostname, port: addr.port }));
      }
    } catch (err) {
      l.close();
      return Promise.reject(err);
    }
    for (const listener of l.#listeners) void l.#acceptLoop(listener);
    return Promise.resolve(l);
  }

  /** The bound addresses (with the real port when 0 was asked for). */
  get addrs(): Deno.NetAddr[] {
    return this.#listeners.map((l) => l.addr);
  }

  /** Stops accepting; connections still being set up are closed; open flows are the flow table's. */
  close(): void {
    this.#closed = true;
    for (const l of this.#listeners) {
      closeQuietly(l);
    }
    for (const c of this.#pending) {
      closeQuietly(c);
    }
  }

  async #acceptLoop(listener: Deno.TcpListener): Promise<void> {
    let backoff = 50;
    while (true) {
      let conn: Deno.TcpConn;
      try {
        conn = await listener.accept();
        backoff = 50;
      } catch (err) {
        if (this.#closed) return;
        // E.g. out of file descriptors: the listener is fine, keep accepting once there is room.
        log.error("listener {listener}: accept failed ({error}); retrying in {ms} ms", {
          listener: this.spec.name,
          error: errorMessage(err),
          ms: backoff,
        });
        await delay(backoff);
        backoff = Math.min(backoff * 2, 1000);
        continue;
      }
      conn.setNoDelay(true);
      void this.#handle(conn).catch((err) => {
        log.error("listener {listener}: unexpected error: {error}", {
          listener: this.spec.name,
          error: err instanceof Error ? err.stack : String(err),
        });
        this.#pending.delete(conn);
        closeQuietly(conn);
      });
    }
  }

  #refuse(conn: Deno.Conn, why: string, fields: Record<string, unknown> = {}): void {
    this.refused++;
    this.#pending.delete(conn);
    closeQuietly(conn);
    log.info("refused on {listener}: {why}", { listener: this.spec.name, why, ...fields });
  }

  // Every connection goes the same way: who is calling, where to, may they, what the backend is told.
  async #handle(conn: Deno.TcpConn): Promise<void> {
    this.#pending.add(conn);
    const t0 = performance.now();
    const id = this.#deps.flows.nextId();
    const from = await this.#caller(conn);
    if (!from) return;
    const { caller, rest } = from;
    const target = await this.#target(conn, caller, rest);
    if (!target) return;
    const admitted = await this.#authorize(conn, caller, { id, t0, sni: target.sni });
    if (!admitted) return;
    let replay = target.payload;
    if (target.header) {
      const header = target.header(admitted.identity);
      if (!header) return this.#refuse(conn, "caller has no tailnet address", { caller: caller.addr });
      replay = concat(header, replay);
    }
    return await this.#connect(conn, {
      id,
      caller,
      identity: admitted.identity,
      backend: target.backend,
      replay,
      replayedPayload: target.payload.length,
      sni: target.sni,
      recheck: admitted.recheck,
    });
  }

  /**
   * Who is calling: serve ingress reads it from tailscaled's PROXY header (only tailscaled may send one);
   * direct ingress takes the socket's peer (a userspace tailscaled connects from 127.0.0.1:port, which WhoIs
   * maps back to the peer; a PROXY header from a client is just payload there). `undefined`: refused.
   */
  async #caller(conn: Deno.TcpConn): Promise<{ caller: Caller; rest: Uint8Array } | undefined> {
    const remote = conn.remoteAddr;
    if (this.spec.ingress === "direct") {
      return {
        caller: { addr: formatAddr(remote), proto: "tcp" },
        rest: new Uint8Array(0),
      };
    }
    if (!isLoopbackIp(remote.hostname)) {
      this.#refuse(conn, `non-loopback peer ${remote.hostname}`);
      return undefined;
    }
    const notTailscaled = this.#deps.servePeer?.(conn);
    if (notTailscaled) {
      this.#refuse(conn, notTailscaled, { peer: formatAddr(remote) });
      return undefined;
    }
    try {
      const got = await readProxyHeader(conn, { timeoutMs: this.#deps.timeouts.proxyHeader });
      if (got.header.command !== "PROXY" || !got.header.source) {
        this.#refuse(conn, "PROXY header without a source address (LOCAL command)");
        return undefined;
      }
      const source = got.header.source;
      return {
        caller: { addr: joinHostPort(source.address, source.port), proto: "tcp", svcName: this.spec.svcName },
        rest: got.rest,
      };
    } catch (err) {
      this.#refuse(conn, `no valid PROXY header: ${errorMessage(err)}`, {
        peer: formatAddr(remote),
      });
      return undefined;
    }
  }

  /** Where the connection goes, by protocol (a tls listener reads the ClientHello first). */
  async #target(conn: Deno.TcpConn, caller: Caller, rest: Uint8Array): Promise<Target | undefined> {
    const spec = this.spec;
    if (spec.protocol === "tcp") {
      const backend = spec.backend!;
      const proxy = spec.proxyProtocol;
      return {
        backend,
        payload: rest,
        header: proxy && ((identity) => this.#backendHeader(caller, identity, backend, proxy)),
      };
    }
    if (spec.protocol === "tls") {
      let hello;
      try {
        hello = await readClientHello(conn, { timeoutMs: this.#deps.timeouts.tlsHello, initial: rest });
      } catch (err) {
        this.#refuse(conn, `no usable TLS ClientHello: ${errorMessage(err)}`, {
          caller: caller.addr,
        });
        return undefined;
      }
      const sni = hello.hello.sni;
      if (!sni) {
        this.#refuse(conn, "TLS ClientHello without SNI", { caller: caller.addr });
        return undefined;
      }
      const route = sniRoute(spec.routes ?? [], sni);
      if (!route) {
        this.#refuse(conn, `no route for SNI ${sni}`, { caller: caller.addr });
        return undefined;
      }
      const proxy = route.proxyProtocol;
      return {
        backend: route.backend,
        payload: hello.bytes,
        sni,
        header: proxy && ((identity) => this.#backendHeader(caller, identity, route.backend, proxy)),
      };
    }
    const l7 = spec.l7!;
    if (!(l7.proxyProtocol ?? true)) return { backend: formatAddr(l7), payload: rest };
    // Our Envoy: the destination port tells ext_authz the Service, to scope WhoIs to it.
    const dstPort = l7.secret && l7.services ? l7.services.portOf(spec.svcName) : l7.port;
    const tlvs = l7.secret ? [{ type: SECRET_TLV_TYPE, value: l7.secret }] : [];
    return {
      backend: formatAddr(l7),
      payload: rest,
      header: (identity) => identity && this.#proxyHeader(caller, identity, { port: dstPort }, tlvs),
    };
  }

  /**
   * May the caller connect. tcp and tls: the L4 policy, recorded (`authorize` owns the shadow rule).
   * http/https/grpc: ext_authz judges each request; here the caller must be known (and, for Envoy
   * Gateway's listeners, hold some grant). `undefined`: refused.
   */
  async #authorize(
    conn: Deno.TcpConn,
    caller: Caller,
    options: { id: number; t0: number; sni?: string },
  ): Promise<{ identity?: Identity; recheck: boolean | L7Recheck } | undefined> {
    const spec = this.spec;
    if (!spec.l7) {
      const auth = await authorize(this.#deps.resolver, caller, {
        request: { layer: "l4", listener: spec.name, sni: options.sni },
        shadow: spec.shadow,
      });
      const record = { telemetry: this.#deps.telemetry, ...options, caller, host: options.sni };
      if (!admit(spec.name, auth, record)) {
        this.#refuse(conn, formatExplanation(auth.decision), this.#who(caller, auth.identity));
        return undefined;
      }
      return { identity: auth.identity, recheck: true };
    }
    let identity: Identity;
    try {
      identity = await this.#deps.resolver.resolve(caller.addr, { proto: "tcp", svcName: caller.svcName });
    } catch (err) {
      this.#refuse(conn, `caller unknown: ${errorMessage(err)}`, {
        caller: caller.addr,
      });
      return undefined;
    }
    if (spec.l7.requireGrant && identity.rules.length === 0) {
      this.#refuse(conn, "caller holds no tailvoy grant", this.#who(caller, identity));
      return undefined;
    }
    // Envoy Gateway names listeners in its SecurityPolicies: there, every grant counts.
    return { identity, recheck: l7Recheck(identity, spec.l7.requireGrant ? undefined : spec.name) };
  }

  /**
   * The PROXY v2 header of the backend contract (`lib/l4/backend_proxy.ts`) to a tcp/tls `backend`:
   * destination this node's tailnet IP and the listener's tailnet port. `undefined` without an identity
   * (a shadow listener letting an unknown caller through) or a tailnet address for the caller.
   */
  #backendHeader(
    caller: Caller,
    identity: Identity | undefined,
    backend: string,
    proxy: BackendProxyConfig,
  ): Uint8Array | undefined {
    if (!identity) return undefined;
    const port = this.spec.port ?? splitAddr(backend).port ?? 0;
    return this.#proxyHeader(caller, identity, { port, tailnet: true }, identityTlvs(identity, proxy.tlvs));
  }

  /**
   * A PROXY v2 header naming the caller by its tailnet address — never 127.0.0.1 (userspace direct
   * mode), which would say nothing to the receiver: then the node's own IP. The destination is
   * loopback (what our Envoy reads is the port) or, with `tailnet`, this node's tailnet IP of the
   * source's family, as tailscaled's serve sends. `undefined` without a source address.
   */
  #proxyHeader(
    caller: Caller,
    identity: Identity,
    destination: { port: number; tailnet?: boolean },
    tlvs: ProxyTlv[],
  ): Uint8Array | undefined {
    const { ip, port } = splitAddr(caller.addr);
    const srcIp = isLoopbackIp(ip) ? identity.ips.find((a) => !a.includes(":")) ?? identity.ips[0] : ip;
    if (!srcIp) return undefined;
    const v6 = srcIp.includes(":");
    const self = destination.tailnet ? this.#deps.selfIps?.find((a) => a.includes(":") === v6) : undefined;
    return encodeProxyV2({
      command: "PROXY",
      transport: "tcp",
      source: { address: srcIp, port: port ?? 0 },
      destination: { address: self ?? (v6 ? "::1" : "127.0.0.1"), port: destination.port },
      tlvs,
    });
  }

  #who(caller: Caller, identity?: Identity): Record<string, unknown> {
    return { caller: caller.addr, user: identity?.login, node: identity?.node, tags: identity?.tags };
  }

  async #connect(
    conn: Deno.TcpConn,
    flowInfo: {
      id: number;
      caller: Caller;
      identity?: Identity;
      backend: string;
      replay: Uint8Array;
      /** Bytes of `replay` that came from the caller (not our own PROXY header). */
      replayedPayload: number;
      sni?: string;
      recheck: boolean | L7Recheck;
    },
  ): Promise<void> {
    let upstream: Deno.TcpConn;
    try {
      upstream = await dial(flowInfo.backend, this.#deps.timeouts.dial);
      upstream.setNoDelay(true);
      if (flowInfo.replay.length) await writeAll(upstream, flowInfo.replay);
    } catch (err) {
      return this.#refuse(
        conn,
        `backend ${flowInfo.backend} unreachable: ${errorMessage(err)}`,
        {
          caller: flowInfo.caller.addr,
        },
      );
    }
    this.#pending.delete(conn);
    const abort = new AbortController();
    const r = relay(conn as RelayConn, upstream as RelayConn, {
      signal: abort.signal,
      idleTimeoutMs: this.#deps.timeouts.idle,
      maxLifetimeMs: this.#deps.timeouts.maxLifetime,
    });
    const { flow, remove } = this.#deps.flows.add({
      id: flowInfo.id,
      listener: this.spec.name,
      protocol: this.spec.protocol,
      caller: flowInfo.caller,
      identity: flowInfo.identity,
      sni: flowInfo.sni,
      recheck: flowInfo.recheck,
      abort,
      bytes: () => ({ up: r.bytesUp + flowInfo.replayedPayload, down: r.bytesDown }),
    });
    log.info("flow {id} open on {listener} from {caller} ({user}) to {backend}", {
      id: flow.id,
      listener: this.spec.name,
      backend: flowInfo.backend,
      sni: flowInfo.sni,
      ...this.#who(flowInfo.caller, flowInfo.identity),
    });
    const telemetry = this.#deps.telemetry;
    telemetry?.openFlows.inc({ listener: this.spec.name });
    const result = await r.done;
    remove();
    telemetry?.openFlows.dec({ listener: this.spec.name });
    telemetry?.flowClosed({
      listener: this.spec.name,
      requestId: `flow-${flow.id}`,
      caller: flowInfo.caller.addr,
      identity: flowInfo.identity,
      host: flowInfo.sni,
      bytesUp: result.bytesUp + flowInfo.replayedPayload,
      bytesDown: result.bytesDown,
      durationMs: performance.now() - flow.openedAt,
      end: result.end,
      reason: result.detail,
    });
    log.info("flow {id} closed on {listener}: {end}, {up} bytes up, {down} bytes down", {
      id: flow.id,
      listener: this.spec.name,
      end: result.end,
      detail: result.detail,
      up: result.bytesUp + flowInfo.replayedPayload,
      down: result.bytesDown,
      durationMs: Math.round(performance.now() - flow.openedAt),
      ...this.#who(flowInfo.caller, flowInfo.identity),
    });
  }
}
