/**
 * Egress: a policy-controlled proxy from cluster workloads into the tailnet. Listeners on the cluster
 * side speak HTTP proxy (CONNECT and absolute-form), SOCKS5, or both on one port (`handshake.ts`), or map
 * a port to one destination. Each connection goes the same way: the client's address against the
 * listener's sources, the handshake (with credentials when set), the asked destination through the
 * aliases and resolved against tailscaled's own view of the tailnet, the resolved address judged by the
 * rules (`destination.ts`), then dialed — through tailscaled's LocalAPI in userspace mode, a plain
 * connect behind a kernel TUN — and relayed. One decision-log record per flow.
 *
 * @module
 */

import type { FlowTable } from "../l4/flows.ts";
import { relay, type RelayConn } from "../l4/relay.ts";
import type { LocalApiClient, Status } from "../localapi/mod.ts";
import { LocalApiError } from "../localapi/mod.ts";
import { getLogger } from "../log.ts";
import { type Cidr, cidrContains, parseCidr } from "../net/cidr.ts";
import { formatAddr, joinHostPort } from "../net/address.ts";
import { parseIp } from "../net/ip.ts";
import type { EgressEvent, Telemetry } from "../telemetry/mod.ts";
import { writeAll } from "../util/bytes.ts";
import { closeQuietly } from "../util/async.ts";
import { errorMessage } from "../util/error.ts";
import { type EgressUsers, loadEgressUsers } from "./users.ts";
import {
  applyAliases,
  judge,
  resolveHost,
  type TailnetView,
  tailnetView,
  type Verdict,
} from "./destination.ts";
import { closeWithReply, type Handshake, HandshakeError, readHandshake } from "./handshake.ts";
import type { EgressListenerSpec, EgressPolicy } from "./plan.ts";

export { type EgressListenerSpec, type EgressPolicy, planEgress } from "./plan.ts";
import { CONNECT_ESTABLISHED, forwardHead, renderHttpResponse } from "./http_proxy.ts";
import { renderSocks5Reply, SOCKS5_REPLY, type Socks5ReplyCode } from "./socks5.ts";

/** What the egress plane needs from the rest of the process. */
export interface EgressDeps {
  api: LocalApiClient;
  /** tailscaled's status at start: TUN or userspace decides how to dial. */
  status: Status;
  /** Every open flow (drained at shutdown with the others). */
  flows: FlowTable;
  telemetry?: Telemetry;
}

const log = getLogger("egress");
/** How long a status snapshot of the tailnet is reused for decisions. */
const VIEW_TTL_MS = 1000;

/** An open egress flow, re-judged when the policy changes. */
interface OpenFlow {
  listener: string;
  asked: { host: string; port: number };
  ip: string;
  abort: AbortController;
}

/** The running egress listeners. */
export class EgressPlane {
  readonly #deps: EgressDeps;
  #policy: EgressPolicy;
  #listeners = new Map<string, { key: string; listener: EgressListener }>();
  readonly #open = new Set<OpenFlow>();
  #view?: { at: number; view: Promise<TailnetView> };
  #closing = false;

  /** An egress plane without listeners (see {@link apply}). */
  constructor(deps: EgressDeps, policy: EgressPolicy) {
    this.#deps = deps;
    this.#policy = policy;
  }

  /** Running listeners by name (for tests: their bound addresses). */
  get listeners(): ReadonlyMap<string, { addrs: Deno.NetAddr[] }> {
    return new Map([...this.#listeners].map(([name, e]) => [name, { addrs: e.listener.addrs }]));
  }

  /**
   * Runs exactly `specs` under `policy`: unchanged listeners keep running (their users re-read), others
   * start or stop; open flows the new policy no longer allows (or resolves elsewhere) are closed.
   */
  async apply(specs: readonly EgressListenerSpec[], policy: EgressPolicy): Promise<void> {
    this.#policy = policy;
    const next = new Map<string, { key: string; listener: EgressListener }>();
    const wanted = new Set(specs.map((s) => s.name));
    try {
      for (const spec of specs) {
        const key = JSON.stringify(spec);
        const old = this.#listeners.get(spec.name);
        if (old?.key === key) {
          next.set(spec.name, old);
          await old.listener.loadUsers();
          continue;
        }
        old?.listener.close();
        next.set(spec.name, { key, listener: await EgressListener.start(spec, this) });
      }
    } finally {
      for (const [name, old] of this.#listeners) {
        // Part-way through a failed apply, listeners not reached yet keep running.
        if (next.has(name)) continue;
        if (wanted.has(name) && !old.listener.closed) next.set(name, old);
        else old.listener.close();
      }
      this.#listeners = next;
    }
    await this.#rejudge();
  }

  /** Stops accepting; open flows are the flow table's to drain. */
  close(): void {
    this.#closing = true;
    for (const { listener } of this.#listeners.values()) listener.close();
  }

  /** @internal The policy in force. */
  get policy(): EgressPolicy {
    return this.#policy;
  }

  /** @internal */
  get deps(): EgressDeps {
    return this.#deps;
  }

  /** @internal Whether new connections are refused (draining). */
  get closing(): boolean {
    return this.#closing;
  }

  /** @internal tailscaled's view of the tailnet, at most {@link VIEW_TTL_MS} old. */
  view(): Promise<TailnetView> {
    const now = performance.now();
    if (!this.#view || now - this.#view.at > VIEW_TTL_MS) {
      const view = this.#deps.api.status({ peers: true, timeoutMs: 2000 }).then((status) =>
        tailnetView(status, { localAddresses: localAddresses() })
      );
      // A failed snapshot is not reused: the next connection asks again.
      view.catch(() => {
        if (this.#view?.view === view) this.#view = undefined;
      });
      this.#view = { at: now, view };
    }
    return this.#view.view;
  }

  /** @internal Registers an open flow for re-judging; returns its removal. */
  track(flow: OpenFlow): () => void {
    this.#open.add(flow);
    return () => this.#open.delete(flow);
  }

  async #rejudge(): Promise<void> {
    if (!this.#open.size) return;
    this.#view = undefined;
    let view: TailnetView;
    try {
      view = await this.view();
    } catch {
      return; // Unknown: keep what runs; new connections are judged (and refused) on their own.
    }
    for (const flow of this.#open) {
      const verdict = decide(view, this.#policy, flow.listener, flow.asked);
      if (verdict.allow && verdict.ip === flow.ip) continue;
      const why = verdict.allow ? `now resolves to ${verdict.ip}` : verdict.reason;
      log.warn("closing egress flow on {listener} to {asked}: the reloaded policy {why}", {
        listener: flow.listener,
        asked: joinHostPort(flow.asked.host, flow.asked.port),
        why: verdict.allow ? why : `no longer allows it (${why})`,
      });
      flow.abort.abort(`egress policy changed: ${why}`);
    }
  }
}

type Decided = Verdict | { allow: false; reason: string; ip?: undefined; port: number; alias?: string };

/** Aliases, resolution and rules for one asked destination (names off the tailnet are not looked up). */
function decide(
  view: TailnetView,
  policy: EgressPolicy,
  listener: string,
  asked: { host: string; port: number },
): Decided & { alias?: string } {
  const target = applyAliases(policy.aliases, asked);
  const resolved = resolveHost(view, target.host);
  if (resolved.kind === "unknown-name") {
    return {
      allow: false,
      port: target.port,
      alias: target.alias,
      reason: `${target.host} is not a tailnet name (MagicDNS names and IPs only; add an alias)`,
    };
  }
  const verdict = judge(view, policy.rules, {
    ip: resolved.ip,
    port: target.port,
    listener,
    peer: resolved.peer,
  });
  return { ...verdict, alias: target.alias };
}

function localAddresses(): string[] {
  try {
    return Deno.networkInterfaces().map((i) => i.address);
  } catch {
    return [];
  }
}

/** One egress listener. */
class EgressListener {
  readonly #spec: EgressListenerSpec;
  readonly #plane: EgressPlane;
  readonly #sources: Cidr[];
  readonly #listener: Deno.TcpListener;
  readonly #pending = new Set<Deno.Conn>();
  #users?: EgressUsers;
  #closed = false;

  private constructor(spec: EgressListenerSpec, plane: EgressPlane, listener: Deno.TcpListener) {
    this.#spec = spec;
    this.#plane = plane;
    this.#listener = listener;
    this.#sources = spec.sources.flatMap((s) => parseCidr(s) ?? []);
  }

  static async start(spec: EgressListenerSpec, plane: EgressPlane): Promise<EgressListener> {
    const colon = spec.address.lastIndexOf(":");
    const host = spec.address.slice(0, colon).replace(/^\[|\]$/g, "");
    const listener = Deno.listen({
      hostname: host === "" ? "0.0.0.0" : host,
      port: Number(spec.address.slice(colon + 1)),
    });
    const l = new EgressListener(spec, plane, listener);
    try {
      await l.loadUsers();
    } catch (err) {
      listener.close();
      throw err;
    }
    log.info("egress listener {name} ({kind}) on {addr}", {
      name: spec.name,
      kind: spec.target
        ? `to ${joinHostPort(spec.target.host, spec.target.port)}`
        : spec.protocols!.join("+"),
      addr: formatAddr(listener.addr),
    });
    void l.#acceptLoop();
    return l;
  }

  get addrs(): Deno.NetAddr[] {
    return [this.#listener.addr];
  }

  /** Whether {@link close} was called. */
  get closed(): boolean {
    return this.#closed;
  }

  /** Reads the proxy users again (a reload picks up a changed users file). */
  async loadUsers(): Promise<void> {
    const credentials = this.#spec.credentials;
    this.#users = credentials
      ? await loadEgressUsers(credentials, { path: ["egress", "listeners", this.#spec.name, "credentials"] })
      : undefined;
  }

  close(): void {
    this.#closed = true;
    closeQuietly(this.#listener);
    for (const c of this.#pending) closeQuietly(c);
  }

  async #acceptLoop(): Promise<void> {
    let backoff = 50;
    while (!this.#closed) {
      let conn: Deno.TcpConn;
      try {
        conn = await this.#listener.accept();
        backoff = 50;
      } catch (err) {
        if (this.#closed) return;
        log.error("egress listener {name}: accept failed ({error}); retrying in {ms} ms", {
          name: this.#spec.name,
          error: errorMessage(err),
          ms: backoff,
        });
        await new Promise((r) => setTimeout(r, backoff));
        backoff = Math.min(backoff * 2, 1000);
        continue;
      }
      conn.setNoDelay(true);
      this.#pending.add(conn);
      void this.#handle(conn).catch((err) => {
        log.error("egress listener {name}: unexpected error: {error}", {
          name: this.#spec.name,
          error: err instanceof Error ? err.stack : String(err),
        });
        closeQuietly(conn);
      }).finally(() => this.#pending.delete(conn));
    }
  }

  async #handle(conn: Deno.TcpConn): Promise<void> {
    const plane = this.#plane;
    const { telemetry, flows } = plane.deps;
    const spec = this.#spec;
    const id = flows.nextId();
    const client = formatAddr(conn.remoteAddr);
    const event: EgressEvent = {
      listener: spec.name,
      requestId: `egress-${id}`,
      client,
      protocol: spec.target ? "target" : spec.protocols!.join("+"),
      result: "allow",
      rule: "",
    };
    const refused = async (result: EgressEvent["result"], rule: string, reply?: Uint8Array) => {
      telemetry?.egress({ ...event, result, rule });
      await closeWithReply(conn, reply);
    };
    const clientIp = parseIp(conn.remoteAddr.hostname);
    if (!clientIp || !this.#sources.some((c) => cidrContains(c, clientIp))) {
      return await refused("source", `client ${client} is not in the listener's sources`);
    }
    if (plane.closing) return await refused("draining", "the proxy is shutting down");
    const policy = plane.policy;
    let handshake: Handshake | undefined;
    if (!spec.target) {
      const users = this.#users;
      try {
        handshake = await readHandshake(conn, {
          protocols: spec.protocols!,
          timeoutMs: policy.timeouts.handshake,
          authenticate: users && ((c) => users.verify(c.user, c.password)),
        });
      } catch (err) {
        if (!(err instanceof HandshakeError)) throw err;
        // The reply was sent and the connection closed by the handshake.
        telemetry?.egress({
          ...event,
          protocol: err.protocol ?? "?",
          result: err.reason === "unauthorized" ? "unauthorized" : "handshake",
          rule: err.message,
        });
        return;
      }
      event.protocol = handshake.protocol;
      event.user = handshake.user;
    }
    const asked = handshake ? handshake.request.destination : spec.target!;
    event.asked = joinHostPort(asked.host, asked.port);
    const fail = (kind: "deny" | "unavailable" | "refused" | "unreachable" | "timeout") =>
      failureReply(handshake, kind, event.asked!);

    let view: TailnetView;
    try {
      view = await plane.view();
    } catch (err) {
      return await refused(
        "destination",
        `tailscaled's view of the tailnet is unavailable: ${errorMessage(err)}`,
        fail("unavailable"),
      );
    }
    const verdict = decide(view, policy, spec.name, asked);
    event.alias = verdict.alias;
    if (verdict.ip !== undefined) {
      event.resolved = joinHostPort(verdict.ip, verdict.port);
      event.peer = verdict.peer;
      event.via = verdict.via;
    }
    if (!verdict.allow) return await refused("destination", verdict.reason, fail("deny"));
    event.rule = verdict.rule!;

    let upstream: RelayConn;
    try {
      upstream = await this.#dial(verdict, policy.timeouts.dial);
    } catch (err) {
      const kind = err instanceof LocalApiError
        ? err.kind === "dial-refused" ? "refused" : err.kind === "timeout" ? "timeout" : "unreachable"
        : err instanceof Deno.errors.ConnectionRefused
        ? "refused"
        : err instanceof Deno.errors.TimedOut || /timed out/.test(errorMessage(err))
        ? "timeout"
        : "unreachable";
      return await refused("dial", `dialing ${event.resolved} failed: ${errorMessage(err)}`, fail(kind));
    }

    try {
      if (handshake?.protocol === "socks5") await writeAll(conn, renderSocks5Reply(SOCKS5_REPLY.succeeded));
      else if (handshake?.request.kind === "connect") await writeAll(conn, CONNECT_ESTABLISHED);
      if (handshake?.protocol === "http" && handshake.request.kind === "forward") {
        await writeAll(upstream, forwardHead(handshake.request));
      }
      if (handshake?.protocol === "http" && handshake.rest.length) await writeAll(upstream, handshake.rest);
    } catch (err) {
      closeQuietly(upstream);
      closeQuietly(conn);
      telemetry?.egress({
        ...event,
        result: "dial",
        rule: `the first bytes could not be passed on: ${errorMessage(err)}`,
      });
      return;
    }
    this.#pending.delete(conn);
    const abort = new AbortController();
    const r = relay(conn, upstream, {
      signal: abort.signal,
      idleTimeoutMs: policy.timeouts.idle,
      maxLifetimeMs: policy.timeouts.lifetime,
    });
    const untrack = plane.track({ listener: spec.name, asked, ip: verdict.ip, abort });
    const { flow, remove } = flows.add({
      id,
      listener: spec.name,
      protocol: `egress-${event.protocol}`,
      caller: { addr: client },
      recheck: false,
      abort,
      bytes: () => ({ up: r.bytesUp, down: r.bytesDown }),
    });
    telemetry?.egressOpen.inc({ listener: spec.name });
    log.debug("egress flow {id} open on {listener}: {client} → {asked} ({resolved}, rule {rule})", {
      id,
      ...event,
    });
    const result = await r.done;
    remove();
    untrack();
    telemetry?.egressOpen.dec({ listener: spec.name });
    telemetry?.egress({
      ...event,
      bytesUp: result.bytesUp,
      bytesDown: result.bytesDown,
      durationMs: performance.now() - flow.openedAt,
      end: result.detail ? `${result.end}: ${result.detail}` : result.end,
    });
  }

  // Through tailscaled in userspace mode; behind a kernel TUN (and off the tailnet) a plain connect.
  async #dial(verdict: Verdict, timeoutMs: number): Promise<RelayConn> {
    const { api, status } = this.#plane.deps;
    if (!status.TUN && verdict.via !== "external") {
      const conn = await api.dial(verdict.ip, verdict.port, { timeoutMs });
      return conn as unknown as RelayConn;
    }
    const abort = new AbortController();
    const timer = setTimeout(
      () => abort.abort(new Error(`connect timed out after ${timeoutMs} ms`)),
      timeoutMs,
    );
    try {
      const conn = await Deno.connect({ hostname: verdict.ip, port: verdict.port, signal: abort.signal });
      conn.setNoDelay(true);
      return conn;
    } finally {
      clearTimeout(timer);
    }
  }
}

/** The protocol's own refusal for a failure after the handshake (a port-mapped listener just closes). */
function failureReply(
  handshake: Handshake | undefined,
  kind: "deny" | "unavailable" | "refused" | "unreachable" | "timeout",
  asked: string,
): Uint8Array | undefined {
  if (!handshake) return undefined;
  if (handshake.protocol === "socks5") {
    const codes: Record<typeof kind, Socks5ReplyCode> = {
      deny: SOCKS5_REPLY.notAllowed,
      unavailable: SOCKS5_REPLY.generalFailure,
      refused: SOCKS5_REPLY.connectionRefused,
      unreachable: SOCKS5_REPLY.hostUnreachable,
      timeout: SOCKS5_REPLY.hostUnreachable,
    };
    return renderSocks5Reply(codes[kind]);
  }
  switch (kind) {
    case "deny":
      return renderHttpResponse(403, { reason: "destination not allowed", host: asked });
    case "unavailable":
      return renderHttpResponse(503, { reason: "the tailnet is unavailable" });
    case "timeout":
      return renderHttpResponse(504, { reason: "destination did not answer", host: asked });
    default:
      return renderHttpResponse(502, { reason: "destination unreachable", host: asked });
  }
}
