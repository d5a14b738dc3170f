/**
 * Live flows (TCP connections, TLS passthrough connections, UDP sessions): registered while open,
 * re-authorized on an interval so a revoked grant closes them, and drained on shutdown.
 *
 * @module
 */

import { authorize, type Caller } from "../access/mod.ts";
import type { Identity, IdentityResolver } from "../identity/mod.ts";
import { getLogger } from "../log.ts";
import { formatExplanation, listenerGrants } from "../policy/mod.ts";
import { delay } from "../util/async.ts";
import { errorMessage } from "../util/error.ts";

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
   * What is re-checked: `true` the L4 policy; an {@link L7Recheck} for a connection handed to Envoy
   * (ext_authz judges each request as it starts, so a connection that outlives a grant change — keep-alive,
   * a WebSocket, a stream — is closed when the caller's grants for it change or are gone); `false` nothing.
   */
  recheck: boolean | L7Recheck;
  /** Admitted on an audit-only listener: a policy deny at re-check keeps it open too. */
  shadow?: boolean;
  openedAt: number;
  /** Aborting closes the flow. */
  abort: AbortController;
  /** Live byte counts. */
  bytes: () => { up: number; down: number };
}

/** How an L7 hand-off is re-checked. */
export interface L7Recheck {
  /** The listener whose grants count; `undefined` for every grant (Envoy Gateway names listeners its way). */
  listener?: string;
  /** {@link listenerGrants} when the connection was admitted. */
  grants: string[];
}

/** The {@link L7Recheck} of a connection from `identity` admitted on `listener` now. */
export function l7Recheck(identity: Identity, listener: string | undefined): L7Recheck {
  return { listener, grants: listenerGrants(identity.rules, listener) };
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
        const { allow, explanation } = typeof flow.recheck === "object"
          ? await this.#sameGrants(flow, flow.recheck)
          : await authorize(this.#resolver, flow.caller, {
            request: { layer: "l4", listener: flow.listener, sni: flow.sni },
            shadow: flow.shadow,
          }).then(({ allow, decision }) => ({ allow, explanation: formatExplanation(decision) }));
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
        flow.abort.abort(`access revoked: ${explanation}`);
      }));
    } finally {
      this.#rechecking = false;
    }
    return closed;
  }

  async #sameGrants(flow: Flow, admitted: L7Recheck): Promise<{ allow: boolean; explanation: string }> {
    try {
      const identity = await this.#resolver.resolve(flow.caller.addr, {
        proto: flow.caller.proto,
        svcName: flow.caller.svcName,
      });
      const now = listenerGrants(identity.rules, admitted.listener);
      // Unchanged (also "none, as when admitted": a shadow listener lets such callers through).
      if (now.length === admitted.grants.length && now.every((g, i) => g === admitted.grants[i])) {
        return { allow: true, explanation: "" };
      }
      return {
        allow: false,
        explanation: now.length > 0
          ? "caller's grants changed since the connection was admitted; a new connection is judged afresh"
          : admitted.listener === undefined
          ? "caller holds no tailvoy grant any more"
          : `caller holds no tailvoy grant for listener ${JSON.stringify(admitted.listener)} any more`,
      };
    } catch (err) {
      return {
        allow: false,
        explanation: `identity lookup failed: ${errorMessage(err)}`,
      };
    }
  }

  /** Waits up to `timeoutMs` for flows to end by themselves, then closes the rest. */
  async drain(timeoutMs: number): Promise<void> {
    const deadline = performance.now() + timeoutMs;
    while (this.#flows.size && performance.now() < deadline) await delay(50);
    for (const flow of this.#flows.values()) flow.abort.abort("shutting down");
    while (this.#flows.size) await delay(10);
  }
}
