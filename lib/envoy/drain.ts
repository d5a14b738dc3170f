/**
 * Draining a running Envoy before it is stopped: fail its health check, drain its listeners, then wait
 * until nothing we must protect is in flight, read from its statistics.
 *
 * @module
 */

import type { Logger } from "@logtape/logtape";
import type { EnvoyAdminClient } from "./admin.ts";
import { delay } from "../util/async.ts";

// Per-listener open connections and per-HCM requests in flight (admin's are ours, and skipped).
const ACTIVE_STATS = "^(listener\\.[^.]+\\.downstream_cx_active|http\\.[^.]+\\.downstream_rq_active)$";

/** Open connections and requests in flight on Envoy's listeners. */
export interface ActiveCounts {
  connections: number;
  requests: number;
}

/**
 * Open connections and requests in flight on Envoy's listeners, not counting the admin listener's;
 * `undefined` when Envoy does not answer or answers something else than its statistics.
 */
export async function activeCounts(admin: EnvoyAdminClient): Promise<ActiveCounts | undefined> {
  try {
    const parsed = await admin.stats(ACTIVE_STATS) as { stats?: { name?: string; value?: number }[] };
    const counts = { connections: 0, requests: 0 };
    for (const { name = "", value = 0 } of parsed.stats ?? []) {
      const [kind, prefix] = name.split(".");
      if (prefix === "admin") continue;
      if (kind === "listener") counts.connections += Number(value);
      else if (kind === "http") counts.requests += Number(value);
    }
    return counts;
  } catch {
    return undefined;
  }
}

/**
 * Fails the health check, drains the listeners, and waits until no request is in flight (or no
 * connection is open) on Envoy's listeners, or `drainMs` has passed, or `until` settles (Envoy exited).
 *
 * Why requests and not only connections: a drained Envoy answers the next HTTP/1.1 request with
 * `connection: close` and sends HTTP/2 a GOAWAY, but it never closes an *idle* keep-alive connection
 * itself (envoyproxy/envoy#42305), so waiting for zero connections would always take `drainMs`.
 * Closing an idle HTTP connection is ordinary HTTP; a request in flight, a gRPC stream or a
 * WebSocket (each an active request) is what the drain protects.
 */
export async function drainEnvoy(
  admin: EnvoyAdminClient,
  options: { drainMs: number; until?: Promise<unknown>; log: Logger },
): Promise<void> {
  const { drainMs } = options;
  const deadline = performance.now() + drainMs;
  // Failures show in the statistics read next: Envoy gone or not answering ends the drain.
  await admin.failHealthcheck().catch(() => {});
  await admin.drainListeners().catch(() => {});
  let idlePolls = 0;
  while (true) {
    const counts = await activeCounts(admin);
    if (!counts) return; // Envoy is gone or not answering: SIGTERM next
    // Twice in a row, so a request racing the drain on an idle connection gets its answer.
    idlePolls = counts.connections === 0 || counts.requests === 0 ? idlePolls + 1 : 0;
    if (counts.connections === 0 || idlePolls >= 2) return;
    if (performance.now() >= deadline) {
      options.log.warn("Envoy drain ended after {drainMs} ms with {requests} requests still in flight", {
        drainMs,
        ...counts,
      });
      return;
    }
    await delay(Math.min(100, Math.max(0, deadline - performance.now())), { until: options.until });
  }
}
