/**
 * Serve-mode ingress: tailscaled forwards each configured tailnet port to one of our loopback listeners
 * with a PROXY v2 header (`TCPForward` + `ProxyProtocol: 2`). Our entries live under the foreground
 * session of our IPN bus connection, so tailscaled drops them by itself if we die; entries written by
 * anyone else are never touched.
 *
 * @module
 */

import { type LocalApiClient, LocalApiError, NOTIFY, type ServeConfig } from "../localapi/mod.ts";
import { getLogger } from "../log.ts";

/** One forward: tailnet port → our loopback listener. */
export interface Forward {
  /** Port on the node's tailnet address. */
  port: number;
  /** Our listener, `127.0.0.1:PORT`. */
  target: string;
}

/** The serve config with our foreground entries set to exactly `forwards` (pure, for tests). */
export function withForwards(
  config: ServeConfig,
  sessionId: string,
  forwards: readonly Forward[],
): ServeConfig {
  const ours = Object.fromEntries(
    forwards.map((f) => [String(f.port), { TCPForward: f.target, ProxyProtocol: 2 }]),
  );
  const foreground = { ...(config.Foreground ?? {}) };
  if (forwards.length) foreground[sessionId] = { ...(foreground[sessionId] ?? {}), TCP: ours };
  else delete foreground[sessionId];
  return { ...config, Foreground: Object.keys(foreground).length ? foreground : undefined };
}

/** Ports in `forwards` that someone else already serves on this node, with who. */
export function conflicts(config: ServeConfig, sessionId: string, forwards: readonly Forward[]): string[] {
  const found: string[] = [];
  for (const { port } of forwards) {
    const key = String(port);
    if (config.TCP?.[key]) {
      found.push(`port ${port} is served by a background entry (\`tailscale serve status\`)`);
    }
    for (const [sid, fg] of Object.entries(config.Foreground ?? {})) {
      if (sid !== sessionId && fg.TCP?.[key]) {
        found.push(`port ${port} is served by another foreground session`);
      }
    }
  }
  return found;
}

/** Our foreground serve session. Open with {@link ServeSession.open}; close to remove our entries. */
export class ServeSession {
  /** The IPN bus session ID owning our entries. */
  readonly sessionId: string;
  /** Resolves when tailscaled ends the bus stream (e.g. it restarted): our entries are gone then. */
  readonly lost: Promise<void>;
  /** Serve-config writes made, for metrics. */
  writes = 0;
  readonly #api: LocalApiClient;
  readonly #abort: AbortController;
  #forwards: Forward[] = [];
  /** Called after each successful serve-config write (metrics). */
  onWrite?: () => void;

  private constructor(api: LocalApiClient, sessionId: string, abort: AbortController, lost: Promise<void>) {
    this.#api = api;
    this.sessionId = sessionId;
    this.#abort = abort;
    this.lost = lost;
  }

  /** Opens the IPN bus and waits for the session ID. */
  static async open(
    api: LocalApiClient,
    options: { timeoutMs?: number; onWrite?: () => void } = {},
  ): Promise<ServeSession> {
    const abort = new AbortController();
    const bus = api.watchIpnBus(NOTIFY.initialState, { signal: abort.signal });
    const timer = setTimeout(() => abort.abort(), options.timeoutMs ?? 5000);
    let first: IteratorResult<{ SessionID?: string }>;
    try {
      first = await bus.next();
    } catch (err) {
      if (abort.signal.aborted) {
        throw new LocalApiError(
          "timeout",
          "watch-ipn-bus: tailscaled sent no session ID in time; is it overloaded?",
        );
      }
      throw err;
    } finally {
      clearTimeout(timer);
    }
    const sessionId = first.done ? undefined : first.value.SessionID;
    if (!sessionId) {
      abort.abort();
      throw new LocalApiError("bad-response", "watch-ipn-bus: the first notification had no SessionID");
    }
    // Keep reading so tailscaled does not drop us as a slow consumer; the end of the stream is `lost`.
    const lost = (async () => {
      try {
        for await (const _ of bus) { /* drained */ }
      } catch { /* aborted or broken: lost either way */ }
    })();
    const session = new ServeSession(api, sessionId, abort, lost);
    session.onWrite = options.onWrite;
    return session;
  }

  /**
   * Makes our entries exactly `forwards`, read-modify-write with the ETag, retried when someone else
   * wrote in between. Throws if a port is already served by someone else.
   */
  async setForwards(forwards: readonly Forward[], options: { retries?: number } = {}): Promise<void> {
    const retries = options.retries ?? 10;
    for (let attempt = 0;; attempt++) {
      const { config, etag } = await this.#api.getServeConfig();
      const taken = conflicts(config, this.sessionId, forwards);
      if (taken.length) {
        throw new Error(
          `Cannot serve on the tailnet: ${
            taken.join("; ")
          }. Remove that entry (\`tailscale serve reset\`) or change the listener port`,
        );
      }
      try {
        await this.#api.setServeConfig(withForwards(config, this.sessionId, forwards), { etag });
        this.writes++;
        this.onWrite?.();
        this.#forwards = [...forwards];
        getLogger("serve").info("serve config: {count} tailnet ports forwarded to us ({ports})", {
          count: forwards.length,
          ports: forwards.map((f) => `${f.port}→${f.target}`).join(", "),
        });
        return;
      } catch (err) {
        const raced = err instanceof LocalApiError && err.kind === "precondition-failed";
        if (!raced || attempt >= retries) throw err;
        await new Promise((r) => setTimeout(r, 10 * (attempt + 1)));
      }
    }
  }

  /** The forwards currently written. */
  get forwards(): readonly Forward[] {
    return this.#forwards;
  }

  /** Removes our entries (best effort: they vanish with the session anyway) and ends the session. */
  async close(): Promise<void> {
    try {
      if (this.#forwards.length) await this.setForwards([]);
    } catch (err) {
      getLogger("serve").warn("could not remove our serve entries: {error}; they go with the session", {
        error: String(err),
      });
    } finally {
      this.#abort.abort();
      await this.lost;
    }
  }
}
