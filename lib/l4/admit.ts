/**
 * Records an L4 authorization (metrics and decision log). Whether to let the caller through is
 * {@link authorize}'s to say (`lib/access/mod.ts`, which owns the shadow rule).
 *
 * @module
 */

import type { Authorization, Caller } from "../access/mod.ts";
import type { Telemetry } from "../telemetry/mod.ts";

/** Records `auth` for `listener`; returns whether to let the caller through. */
export function admit(
  listener: string,
  auth: Authorization,
  options: { telemetry?: Telemetry; id: number; caller: Caller; t0: number; host?: string },
): boolean {
  options.telemetry?.decision({
    layer: "l4",
    listener,
    requestId: `flow-${options.id}`,
    caller: options.caller.addr,
    identity: auth.identity,
    host: options.host,
    decision: auth.decision,
    shadow: auth.shadow,
    latencyMs: performance.now() - options.t0,
  });
  return auth.allow;
}
