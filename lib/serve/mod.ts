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
import { delay } from "../util/async.ts";

/** One forward: tailnet port → our loopback listener. */
export interface Forward {
  /** Port on the node's tailnet address. */
  port: number;
  /** Our listener, `127.0.0.1:PORT`. */
  target: string;
}

/** Our entries: node-level forwards (foreground) and per-Service forwards (top level). */
export interface Entries {
  node: readonly Forward[];
  /** `svc:NAME` → its forwards. */
  services: Readonly<Record<string, readonly Forward[]>>;
}

const NONE: Entries = { node: [], services: {} };

function handler(f: Forward) {
  return { TCPForward: f.target, ProxyProtocol: 2 };
}

/**
 * The serve config with our entries set to exactly `ours` (pure, for tests): node-level forwards under
 * our foreground session, Service forwards at top level (Services cannot be foreground). Service
 * entries we wrote before (`previous`) are removed first; nobody else's entry is touched.
 */
export function withEntries(
  config: ServeConfig,
  sessionId: string,
  ours: Entries,
  previous: Entries = NONE,
): ServeConfig {
  const foreground = { ...(config.Foreground ?? {}) };
  if (ours.node.length) {
    foreground[sessionId] = {
      ...(foreground[sessionId] ?? {}),
      TCP: Object.fromEntries(ours.node.map((f) => [String(f.port), handler(f)])),
    };
  } else delete foreground[sessionId];
  const services = structuredClone(config.Services ?? {});
  for (const [svc, forwards] of Object.entries(previous.services)) {
    const tcp = services[svc]?.TCP;
    if (!tcp) continue;
    for (const f of forwards) if (tcp[String(f.port)]?.TCPForward === f.target) delete tcp[String(f.port)];
    if (!Object.keys(tcp).length && !Object.keys(services[svc].Web ?? {}).length) delete services[svc];
  }
  for (const [svc, forwards] of Object.entries(ours.services)) {
    if (!forwards.length) continue;
    const entry = services[svc] ?? {};
    services[svc] = {
      ...entry,
      TCP: { ...(entry.TCP ?? {}), ...Object.fromEntries(forwards.map((f) => [String(f.port), handler(f)])) },
    };
  }
  return {
    ...config,
    Foreground: Object.keys(foreground).length ? foreground : undefined,
    Services: Object.keys(services).length ? services : undefined,
  };
}

/** Ports in `ours` that someone else already serves on this node, with who. */
export function conflicts(
  config: ServeConfig,
  sessionId: string,
  ours: Entries,
  previous: Entries = NONE,
): string[] {
  const found: string[] = [];
  for (const { port } of ours.node) {
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
  for (const [svc, forwards] of Object.entries(ours.services)) {
    const mine = new Set((previous.services[svc] ?? []).map((f) => `${f.port}|${f.target}`));
    for (const { port } of forwards) {
      const existing = config.Services?.[svc]?.TCP?.[String(port)];
      if (existing && !mine.has(`${port}|${existing.TCPForward}`)) {
        found.push(`port ${port} of ${svc} is served by an entry tailvoy did not write`);
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
  readonly #api: LocalApiClient;
  readonly #abort: AbortController;
  #entries: Entries = NONE;
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
   * Makes all our entries (node-level and Service) exactly `entries`, read-modify-write with the ETag,
   * retried when someone else wrote in between. Throws if a port is taken by someone else.
   */
  async setEntries(entries: Entries, options: { retries?: number } = {}): Promise<void> {
    const retries = options.retries ?? 10;
    for (let attempt = 0;; attempt++) {
      const { config, etag } = await this.#api.getServeConfig();
      const taken = conflicts(config, this.sessionId, entries, this.#entries);
      if (taken.length) {
        throw new Error(
          `Cannot serve on the tailnet: ${
            taken.join("; ")
          }. Remove that entry (\`tailscale serve reset\`) or change the listener port`,
        );
      }
      try {
        await this.#api.setServeConfig(withEntries(config, this.sessionId, entries, this.#entries), { etag });
        this.onWrite?.();
        this.#entries = { node: [...entries.node], services: { ...entries.services } };
        getLogger("serve").info("serve config: {count} tailnet ports forwarded to us ({ports})", {
          count: entries.node.length + Object.values(entries.services).flat().length,
          ports: [
            ...entries.node.map((f) => `${f.port}→${f.target}`),
            ...Object.entries(entries.services).flatMap(([svc, fs]) =>
              fs.map((f) => `${svc}:${f.port}→${f.target}`)
            ),
          ].join(", "),
        });
        return;
      } catch (err) {
        const raced = err instanceof LocalApiError && err.kind === "precondition-failed";
        if (!raced || attempt >= retries) throw err;
        await delay(10 * (attempt + 1));
      }
    }
  }

  /** The node-level forwards currently written. */
  get forwards(): readonly Forward[] {
    return this.#entries.node;
  }

  /** Removes our entries (best effort: they vanish with the session anyway) and ends the session. */
  async close(): Promise<void> {
    try {
      if (this.#entries.node.length || Object.keys(this.#entries.services).length) {
        await this.setEntries(NONE);
      }
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
