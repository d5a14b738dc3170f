/**
 * Identity resolver: who is at a source address, through LocalAPI WhoIs, with a short-lived cache.
 *
 * - The cache key is what the answer depends on: the caller's IP (or, for the `127.0.0.1:port` end of a
 *   connection userspace tailscaled forwarded, that exact address and protocol) plus the Tailscale
 *   Service name when the connection came through one.
 * - Concurrent misses for one key share one WhoIs call; the cache is bounded; errors are never cached.
 * - Userspace tailscaled registers a forwarded connection's mapping just after dialing us, so a 404 for a
 *   loopback address is retried for a short window before it becomes a deny.
 *
 * @module
 */

import { LocalApiError, type WhoIsOptions, type WhoIsResponse } from "../localapi/mod.ts";
import { parseCapRules, type ParsedRule, type RuleIssue } from "../policy/mod.ts";

/** Who a caller is, as tailvoy uses it for decisions, headers and logs. */
export interface Identity {
  /** Login name of the user; absent for tagged nodes (their "user" is not who they are). */
  login?: string;
  /** Display name of the user; absent for tagged nodes. */
  displayName?: string;
  /** The user's numeric ID, as text; absent for tagged nodes (and when WhoIs gives none). */
  userId?: string;
  /** Node MagicDNS name without the trailing dot. */
  node: string;
  /** Node stable ID (never reused, unlike IPs). */
  nodeId: string;
  /** Tags of a tag-owned node; empty for a user's node. */
  tags: string[];
  /** The node's tailnet IPs. */
  ips: string[];
  /** The raw app-capability map WhoIs returned (towards this node, or the service). */
  capMap: Record<string, unknown[]>;
  /** The valid tailvoy rules in {@link capMap}, parsed once. */
  rules: ParsedRule[];
  /** Rules that were present but malformed (they grant nothing). */
  malformed: RuleIssue[];
}

/** The one LocalAPI call the resolver needs (the LocalAPI client, or a fake in unit tests). */
export interface WhoIsSource {
  /** WhoIs for `addr`. */
  whois(addr: string, options?: WhoIsOptions): Promise<WhoIsResponse>;
}

/** Options of an {@link IdentityResolver}. */
export interface ResolverOptions {
  /** Capability names carrying tailvoy rules. */
  capNames?: readonly string[];
  /** How long an answer is reused, in ms; 0 disables the cache. Default 1000. */
  ttlMs?: number;
  /** Most entries kept; the oldest go first. Default 10000. */
  maxEntries?: number;
  /** How long a 404 for a loopback address is retried, in ms. Default 500. */
  loopbackRetryMs?: number;
  /** Called once per identity and malformed rule, so bad grants are reported without flooding logs. */
  onMalformed?: (identity: Identity, issue: RuleIssue) => void;
  /** Told about every cache hit and every WhoIs call (for metrics). */
  observer?: { hit(): void; call(ms: number, error?: unknown): void };
  /** Clock, for tests. */
  now?: () => number;
}

/** How a caller reached us. */
export interface ResolveOptions {
  /** Transport of the connection, for loopback mappings. */
  proto?: "tcp" | "udp";
  /** Tailscale Service (`svc:name`) the connection arrived through. */
  svcName?: string;
}

/** Builds an {@link Identity} from a WhoIs answer. */
export function identityFromWhoIs(
  res: WhoIsResponse,
  options: { capNames?: readonly string[] } = {},
): Identity {
  const tagged = res.Node.Tags.length > 0;
  const { rules, malformed } = parseCapRules(res.CapMap, { capNames: options.capNames });
  return {
    login: tagged ? undefined : res.UserProfile?.LoginName || undefined,
    displayName: tagged ? undefined : res.UserProfile?.DisplayName || undefined,
    userId: tagged || res.UserProfile?.ID === undefined ? undefined : String(res.UserProfile.ID),
    node: res.Node.Name.replace(/\.$/, ""),
    nodeId: res.Node.StableID,
    tags: res.Node.Tags,
    ips: res.Node.Addresses.map((a) => a.replace(/\/\d+$/, "")),
    capMap: res.CapMap,
    rules,
    malformed,
  };
}

/** Splits `IP`, `IP:port` or `[v6]:port` into the IP and the optional port; `:port` gives IP `""`. */
export function splitAddr(addr: string): { ip: string; port?: number } {
  const v6 = /^\[([^\]]+)\](?::(\d+))?$/.exec(addr);
  if (v6) return { ip: v6[1], port: v6[2] ? Number(v6[2]) : undefined };
  const v4 = /^([^:]*):(\d+)$/.exec(addr);
  if (v4) return { ip: v4[1], port: Number(v4[2]) };
  return { ip: addr };
}

function isLoopback(ip: string): boolean {
  return ip.startsWith("127.") || ip === "::1" || ip.startsWith("::ffff:127.");
}

interface Entry {
  identity: Identity;
  expires: number;
}

/** Resolves and caches caller identities. */
export class IdentityResolver {
  readonly #source: WhoIsSource;
  readonly #ttlMs: number;
  readonly #maxEntries: number;
  readonly #loopbackRetryMs: number;
  readonly #capNames?: readonly string[];
  readonly #onMalformed?: (identity: Identity, issue: RuleIssue) => void;
  readonly #now: () => number;
  readonly #observer?: ResolverOptions["observer"];
  readonly #cache = new Map<string, Entry>();
  readonly #inflight = new Map<string, Promise<Identity>>();
  readonly #reported = new Set<string>();
  /** Counters, for metrics and tests. */
  readonly stats = { hits: 0, misses: 0, calls: 0, errors: 0 };

  /** Creates a resolver over `source` (usually the LocalAPI client). */
  constructor(source: WhoIsSource, options: ResolverOptions = {}) {
    this.#source = source;
    this.#ttlMs = options.ttlMs ?? 1000;
    this.#maxEntries = options.maxEntries ?? 10_000;
    this.#loopbackRetryMs = options.loopbackRetryMs ?? 500;
    this.#capNames = options.capNames;
    this.#onMalformed = options.onMalformed;
    this.#now = options.now ?? (() => performance.now());
    this.#observer = options.observer;
  }

  /**
   * The identity at `addr` (`IP`, `IP:port`, `[v6]:port`). Rejects with a {@link LocalApiError} when
   * tailscaled cannot say; callers deny on any rejection.
   */
  resolve(addr: string, options: ResolveOptions = {}): Promise<Identity> {
    const { ip } = splitAddr(addr);
    // Only a loopback address needs its port (and protocol): for a tailnet IP the answer is per node.
    const lookup = isLoopback(ip) ? addr : ip;
    const key = `${options.svcName ?? ""}|${isLoopback(ip) ? options.proto ?? "" : ""}|${lookup}`;
    const now = this.#now();
    const hit = this.#cache.get(key);
    if (hit && hit.expires > now) {
      this.stats.hits++;
      this.#observer?.hit();
      return Promise.resolve(hit.identity);
    }
    if (hit) this.#cache.delete(key);
    const pending = this.#inflight.get(key);
    if (pending) {
      this.stats.hits++;
      this.#observer?.hit();
      return pending;
    }
    this.stats.misses++;
    const call = this.#lookup(lookup, isLoopback(ip), options).then((identity) => {
      if (this.#ttlMs > 0) this.#store(key, identity);
      return identity;
    }, (err) => {
      this.stats.errors++;
      throw err;
    }).finally(() => this.#inflight.delete(key));
    this.#inflight.set(key, call);
    return call;
  }

  /** Drops every cached answer (e.g. on a netmap change), so the next lookups are fresh. */
  invalidate(): void {
    this.#cache.clear();
  }

  /** Number of cached answers. */
  get size(): number {
    return this.#cache.size;
  }

  async #lookup(addr: string, loopback: boolean, options: ResolveOptions): Promise<Identity> {
    const deadline = this.#now() + (loopback ? this.#loopbackRetryMs : 0);
    let delay = 5;
    while (true) {
      this.stats.calls++;
      const t0 = performance.now();
      try {
        const res = await this.#source.whois(addr, { proto: options.proto, svcName: options.svcName });
        this.#observer?.call(performance.now() - t0);
        const identity = identityFromWhoIs(res, { capNames: this.#capNames });
        this.#report(identity);
        return identity;
      } catch (err) {
        this.#observer?.call(performance.now() - t0, err);
        const retry = err instanceof LocalApiError && err.kind === "not-found" &&
          this.#now() + delay < deadline;
        if (!retry) throw err;
        await new Promise((r) => setTimeout(r, delay));
        delay = Math.min(delay * 2, 50);
      }
    }
  }

  #store(key: string, identity: Identity): void {
    this.#cache.set(key, { identity, expires: this.#now() + this.#ttlMs });
    if (this.#cache.size <= this.#maxEntries) return;
    const now = this.#now();
    for (const [k, e] of this.#cache) {
      if (e.expires <= now) this.#cache.delete(k);
    }
    // Map iteration is insertion order: drop the oldest until back under the bound.
    for (const k of this.#cache.keys()) {
      if (this.#cache.size <= this.#maxEntries) break;
      this.#cache.delete(k);
    }
  }

  #report(identity: Identity): void {
    if (!this.#onMalformed) return;
    for (const issue of identity.malformed) {
      const key = `${identity.nodeId}|${issue.capName}|${issue.json}`;
      if (this.#reported.has(key)) continue;
      if (this.#reported.size > 10_000) this.#reported.clear();
      this.#reported.add(key);
      this.#onMalformed(identity, issue);
    }
  }
}
