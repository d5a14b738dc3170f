/**
 * Live flows (TCP connections, TLS passthrough connections, UDP sessions): registered while open,
 * re-authorized on an interval so a revoked grant closes them, and drained on shutdown.
 *
 * @module
 */

import { type Caller, checkL4 } from "../access/mod.ts";
import type { Identity, IdentityResolver } from "../identity/mod.ts";
import { getLogger } from "../log.ts";
import { formatExplanation } from "../policy/mod.ts";

/** One open flow. */
export interface Flow {
  id: number;
  listener: string;
  protocol: string;
  caller: Caller;
  identity?: Identity;
  /** SNI of a TLS passthrough flow. */
  sni?: string;
  /**
   * What is re-checked: `true` the L4 policy; `"grant"` only that the caller still holds some tailvoy
   * grant (discovery-mode HTTP flows, whose requests ext_authz judges); `false` nothing (our own L7
   * flows: ext_authz judges every request).
   */
  recheck: boolean | "grant";
  openedAt: number;
  /** Aborting closes the flow. */
  abort: AbortController;
  /** Live byte counts. */
  bytes: () => { up: number; down: number };
}

const log = getLogger("flow");

/** The set of open flows, with the re-check loop. */
export class FlowTable {
  readonly #flows = new Map<number, Flow>();
  readonly #resolver: IdentityResolver;
  #nextId = 1;
  #timer?: ReturnType<typeof setInterval>;
  #rechecking = false;
  /** Flows closed because a re-check denied them, for metrics and tests. */
  revoked = 0;

  readonly #onRevoked?: (flow: Flow) => void;

  /** Creates a table whose re-checks resolve identities through `resolver`. */
  constructor(resolver: IdentityResolver, options: { onRevoked?: (flow: Flow) => void } = {}) {
    this.#resolver = resolver;
    this.#onRevoked = options.onRevoked;
  }

  /** A new flow id (also used as the decision's request id before the flow exists). */
  nextId(): number {
    return this.#nextId++;
  }

  /** Registers a flow; call the returned function when it ends. */
  add(flow: Omit<Flow, "id" | "openedAt"> & { id?: number }): { flow: Flow; remove: () => void } {
    const full: Flow = { ...flow, id: flow.id ?? this.nextId(), openedAt: performance.now() };
    this.#flows.set(full.id, full);
    return { flow: full, remove: () => this.#flows.delete(full.id) };
  }

  /** Open flows. */
  get size(): number {
    return this.#flows.size;
  }

  /** Open flows per listener. */
  countBy(listener: string): number {
    let n = 0;
    for (const f of this.#flows.values()) if (f.listener === listener) n++;
    return n;
  }

  /** Starts re-checking every `intervalMs` (0 = never). */
  startRecheck(intervalMs: number): void {
    this.stopRecheck();
    if (intervalMs > 0) this.#timer = setInterval(() => void this.recheck(), intervalMs);
  }

  /** Stops the re-check loop. */
  stopRecheck(): void {
    if (this.#timer !== undefined) clearInterval(this.#timer);
    this.#timer = undefined;
  }

  /** Re-authorizes every L4 flow now (fresh identity within the resolver's TTL); closes the denied. */
  async recheck(): Promise<number> {
    if (this.#rechecking) return 0;
    this.#rechecking = true;
    let closed = 0;
    try {
      const flows = [...this.#flows.values()].filter((f) => f.recheck && !f.abort.signal.aborted);
      await Promise.all(flows.map(async (flow) => {
        const { allow, explanation } = flow.recheck === "grant"
          ? await this.#holdsGrant(flow)
          : await checkL4(this.#resolver, flow.caller, { listener: flow.listener, sni: flow.sni })
            .then(({ decision }) => ({ allow: decision.allow, explanation: formatExplanation(decision) }));
        if (allow || flow.abort.signal.aborted) return;
        closed++;
        this.revoked++;
        this.#onRevoked?.(flow);
        log.warn("closing flow {id} on {listener} from {caller}: no longer allowed ({explanation})", {
          id: flow.id,
          listener: flow.listener,
          caller: flow.caller.addr,
          user: flow.identity?.login ?? flow.identity?.tags.join(","),
          explanation,
        });
        flow.abort.abort("access revoked");
      }));
    } finally {
      this.#rechecking = false;
    }
    return closed;
  }

  async #holdsGrant(flow: Flow): Promise<{ allow: boolean; explanation: string }> {
    try {
      const identity = await this.#resolver.resolve(flow.caller.addr, {
        proto: flow.caller.proto,
        svcName: flow.caller.svcName,
      });
      return { allow: identity.rules.length > 0, explanation: "caller holds no tailvoy grant any more" };
    } catch (err) {
      return {
        allow: false,
        explanation: `identity lookup failed: ${err instanceof Error ? err.message : err}`,
      };
    }
  }

  /** Waits up to `timeoutMs` for flows to end by themselves, then closes the rest. */
  async drain(timeoutMs: number): Promise<void> {
    const deadline = performance.now() + timeoutMs;
    while (this.#flows.size && performance.now() < deadline) await new Promise((r) => setTimeout(r, 50));
    for (const flow of this.#flows.values()) flow.abort.abort("shutting down");
    while (this.#flows.size) await new Promise((r) => setTimeout(r, 10));
  }
}
