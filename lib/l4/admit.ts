/**
 * The one place an L4 decision is turned into "let through or not": recorded (metrics and decision
 * log) and, on an audit-only (shadow) listener, a policy deny let through — never an unknown caller.
 *
 * @module
 */

import type { AccessResult, Caller } from "../access/mod.ts";
import type { Telemetry } from "../telemetry/mod.ts";

/** Records `access` for `listener` and says whether to let the caller through. */
export function admit(
  listener: { name: string; shadow?: boolean },
  access: AccessResult,
  options: { telemetry?: Telemetry; id: number; caller: Caller; t0: number; host?: string },
): boolean {
  const { decision, identity } = access;
  const shadow = Boolean(listener.shadow) && !decision.allow && decision.code !== "unknown_caller";
  options.telemetry?.decision({
    layer: "l4",
    listener: listener.name,
    requestId: `flow-${options.id}`,
    caller: options.caller.addr,
    identity,
    host: options.host,
    decision,
    shadow,
    latencyMs: performance.now() - options.t0,
  });
  return decision.allow || shadow;
}
