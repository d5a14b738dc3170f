/**
 * UDP listeners (direct ingress only: tailscaled's serve does not forward UDP). Each peer address gets
 * a session with its own backend socket, created only after the peer is identified and allowed; packets
 * of unknown or denied peers are dropped. Sessions expire when idle, their number is capped, and a
 * revoked session is closed by the flow table's re-check.
 *
 * @module
 */

import dgram from "node:dgram";
import { authorize, type Caller } from "../access/mod.ts";
import type { Identity } from "../identity/mod.ts";
import { joinHostPort, splitAddr } from "../net/address.ts";
import { getLogger } from "../log.ts";
import { formatExplanation } from "../policy/mod.ts";
import { admit } from "./admit.ts";
import type { ListenerDeps } from "./tcp.ts";
import { closeQuietly } from "../util/async.ts";

/** State of one peer's session. */
export type SessionState = "pending" | "open" | "denied";

/** One session of the table. */
export interface Session<T> {
  key: string;
  state: SessionState;
  lastActive: number;
  /** Packets that arrived while the decision was pending (bounded). */
  queue: Uint8Array[];
  /** Whatever the owner attaches (the backend socket). */
  value?: T;
}

/** Options of a {@link UdpSessionTable}. */
export interface SessionTableOptions {
  /** Most sessions at once; packets from new peers beyond it are dropped. */
  maxSessions: number;
  /** An open session idle this long is closed. */
  idleMs: number;
  /** A denied peer is remembered this long (its packets are dropped without a new lookup). */
  denyMs: number;
  /** Packets kept per pending session. */
  maxQueue: number;
  now?: () => number;
}

/** What to do with an incoming packet. */
export type PacketAction = "created" | "queued" | "forward" | "drop";

/** The per-peer session table (no I/O; the listener does the sockets). */
export class UdpSessionTable<T> {
  readonly #sessions = new Map<string, Session<T>>();
  readonly #opt: Required<SessionTableOptions>;

  /** Creates an empty table. */
  constructor(options: SessionTableOptions) {
    this.#opt = { now: () => performance.now(), ...options };
  }

  /** Classifies a packet from `key`, creating a pending session for a new peer when there is room. */
  packet(key: string, data: Uint8Array): { action: PacketAction; session?: Session<T> } {
    const now = this.#opt.now();
    const s = this.#sessions.get(key);
    if (!s) {
      if (this.#sessions.size >= this.#opt.maxSessions) return { action: "drop" };
      const session: Session<T> = { key, state: "pending", lastActive: now, queue: [data] };
      this.#sessions.set(key, session);
      return { action: "created", session };
    }
    if (s.state === "denied") return { action: "drop", session: s };
    s.lastActive = now;
    if (s.state === "open") return { action: "forward", session: s };
    if (s.queue.length >= this.#opt.maxQueue) return { action: "drop", session: s };
    s.queue.push(data);
    return { action: "queued", session: s };
  }

  /** Marks a pending session allowed; returns its queued packets. */
  open(key: string, value: T): Uint8Array[] {
    const s = this.#sessions.get(key);
    if (!s) return [];
    s.state = "open";
    s.value = value;
    s.lastActive = this.#opt.now();
    const queued = s.queue;
    s.queue = [];
    return queued;
  }

  /** Marks a session denied (its packets are dropped until it expires). */
  deny(key: string): void {
    const s = this.#sessions.get(key);
    if (!s) return;
    s.state = "denied";
    s.queue = [];
    s.value = undefined;
    s.lastActive = this.#opt.now();
  }

  /** Records activity from the backend side. */
  touch(key: string): void {
    const s = this.#sessions.get(key);
    if (s) s.lastActive = this.#opt.now();
  }

  /** Removes a session, returning it. */
  remove(key: string): Session<T> | undefined {
    const s = this.#sessions.get(key);
    this.#sessions.delete(key);
    return s;
  }

  /** Removes and returns sessions idle too long (open) or remembered long enough (denied). */
  expire(): Session<T>[] {
    const now = this.#opt.now();
    const gone: Session<T>[] = [];
    for (const s of this.#sessions.values()) {
      const limit = s.state === "denied" ? this.#opt.denyMs : this.#opt.idleMs;
      if (s.state !== "pending" && now - s.lastActive >= limit) gone.push(s);
    }
    for (const s of gone) this.#sessions.delete(s.key);
    return gone;
  }

  /** Removes and returns every session. */
  clear(): Session<T>[] {
    const all = [...this.#sessions.values()];
    this.#sessions.clear();
    return all;
  }

  /** Number of sessions in any state. */
  get size(): number {
    return this.#sessions.size;
  }
}

/** What one UDP listener does. */
export interface UdpListenerSpec {
  name: string;
  /** Addresses to bind (the tailnet IPs, or 127.0.0.1 behind a userspace tailscaled). */
  bind: { hostname: string; port: number }[];
  backend: string;
  idleMs?: number;
  maxSessions?: number;
  /** Audit only: decisions are computed and logged, but denied peers are let through. */
  shadow?: boolean;
}

const log = getLogger("udp");

interface Backend {
  socket: dgram.Socket;
  abort: AbortController;
  counts: { up: number; down: number };
  remove: () => void;
}

/** A running UDP listener. */
export class UdpListener {
  readonly spec: UdpListenerSpec;
  readonly #deps: ListenerDeps;
  readonly #sockets: dgram.Socket[] = [];
  readonly #table: UdpSessionTable<Backend>;
  readonly #sweep: ReturnType<typeof setInterval>;
  /** Packets dropped (unknown, denied, over capacity), for metrics and tests. */
  dropped = 0;

  private constructor(spec: UdpListenerSpec, deps: ListenerDeps) {
    this.spec = spec;
    this.#deps = deps;
    const idleMs = spec.idleMs ?? 30_000;
    this.#table = new UdpSessionTable({
      maxSessions: spec.maxSessions ?? 4096,
      idleMs,
      denyMs: 1000,
      maxQueue: 16,
    });
    this.#sweep = setInterval(() => {
      for (const s of this.#table.expire()) this.#closeBackend(s.value);
    }, Math.min(1000, idleMs));
  }

  /** Binds every address of `spec`. */
  static async start(spec: UdpListenerSpec, deps: ListenerDeps): Promise<UdpListener> {
    const l = new UdpListener(spec, deps);
    try {
      for (const addr of spec.bind) {
        const socket = dgram.createSocket(addr.hostname.includes(":") ? "udp6" : "udp4");
        await new Promise<void>((resolve, reject) => {
          socket.once("error", reject);
          socket.bind(addr.port, addr.hostname, () => {
            socket.off("error", reject);
            resolve();
          });
        });
        socket.on("message", (msg: Uint8Array, rinfo: dgram.RemoteInfo) => l.#onPacket(socket, msg, rinfo));
        l.#sockets.push(socket);
      }
    } catch (err) {
      l.close();
      throw err;
    }
    return l;
  }

  /** Bound addresses. */
  get addrs(): { address: string; port: number }[] {
    return this.#sockets.map((s) => s.address());
  }

  /** Number of sessions. */
  get sessions(): number {
    return this.#table.size;
  }

  /** Closes the listening sockets and every session. */
  close(): void {
    clearInterval(this.#sweep);
    for (const s of this.#sockets) {
      closeQuietly(s);
    }
    for (const s of this.#table.clear()) this.#closeBackend(s.value);
  }

  #onPacket(socket: dgram.Socket, msg: Uint8Array, rinfo: dgram.RemoteInfo): void {
    const key = joinHostPort(rinfo.address, rinfo.port);
    const { action, session } = this.#table.packet(key, msg);
    if (action === "drop") this.dropped++;
    if (action === "forward") {
      session!.value!.counts.up += msg.length;
      session!.value!.socket.send(msg);
    }
    if (action === "created") void this.#decide(socket, key, rinfo);
  }

  async #decide(socket: dgram.Socket, key: string, rinfo: dgram.RemoteInfo): Promise<void> {
    const t0 = performance.now();
    const id = this.#deps.flows.nextId();
    const caller: Caller = { addr: key, proto: "udp" };
    const auth = await authorize(this.#deps.resolver, caller, {
      request: { layer: "l4", listener: this.spec.name },
      shadow: this.spec.shadow,
    });
    const { decision, identity } = auth;
    if (!admit(this.spec.name, auth, { telemetry: this.#deps.telemetry, id, caller, t0 })) {
      this.#table.deny(key);
      log.info("refused on {listener}: {why}", {
        listener: this.spec.name,
        why: formatExplanation(decision),
        caller: key,
        user: identity?.login,
      });
      return;
    }
    try {
      const backend = await this.#openBackend(socket, { key, id, rinfo, caller, identity });
      for (const packet of this.#table.open(key, backend)) {
        backend.counts.up += packet.length;
        backend.socket.send(packet);
      }
    } catch (err) {
      this.#table.deny(key);
      log.warn("backend {backend} for {listener} unusable: {error}", {
        backend: this.spec.backend,
        listener: this.spec.name,
        error: String(err),
      });
    }
  }

  async #openBackend(
    socket: dgram.Socket,
    session: { key: string; id: number; rinfo: dgram.RemoteInfo; caller: Caller; identity?: Identity },
  ): Promise<Backend> {
    const { key, id, rinfo, caller, identity } = session;
    const { ip, port } = splitAddr(this.spec.backend);
    const upstream = dgram.createSocket(ip.includes(":") ? "udp6" : "udp4");
    await new Promise<void>((resolve, reject) => {
      upstream.once("error", reject);
      upstream.connect(port!, ip, () => {
        upstream.off("error", reject);
        resolve();
      });
    });
    upstream.on("error", () => {/* e.g. ICMP port unreachable: keep the session, drop the packet */});
    upstream.on("message", (reply: Uint8Array) => {
      this.#table.touch(key);
      socket.send(reply, rinfo.port, rinfo.address);
    });
    const abort = new AbortController();
    const counts = { up: 0, down: 0 };
    upstream.on("message", (reply: Uint8Array) => counts.down += reply.length);
    const { flow, remove } = this.#deps.flows.add({
      id,
      listener: this.spec.name,
      protocol: "udp",
      caller,
      identity,
      recheck: true,
      shadow: this.spec.shadow,
      abort,
      bytes: () => ({ ...counts }),
    });
    const telemetry = this.#deps.telemetry;
    telemetry?.openFlows.inc({ listener: this.spec.name });
    const backend: Backend = {
      socket: upstream,
      abort,
      counts,
      remove: () => {
        remove();
        telemetry?.openFlows.dec({ listener: this.spec.name });
        telemetry?.flowClosed({
          listener: this.spec.name,
          requestId: `flow-${id}`,
          caller: key,
          identity,
          bytesUp: counts.up,
          bytesDown: counts.down,
          durationMs: performance.now() - flow.openedAt,
          end: abort.signal.aborted ? "aborted" : "idle",
        });
      },
    };
    abort.signal.addEventListener("abort", () => {
      // Revoked: drop the peer's packets for a while, then it is looked up afresh.
      this.#table.deny(key);
      this.#closeBackend(backend);
    }, { once: true });
    log.info("udp session open on {listener} from {caller} ({user})", {
      listener: this.spec.name,
      caller: key,
      user: identity?.login ?? identity?.tags.join(","),
    });
    return backend;
  }

  #closeBackend(backend?: Backend): void {
    if (!backend) return;
    backend.remove();
    closeQuietly(backend.socket);
  }
}
