/**
 * Access checks for one caller: identity through the resolver, then the policy engine, then the shadow
 * rule ({@link authorize}, the one place it is decided). Every failure to establish the caller's identity
 * is a deny (fail closed) with a log line that says why and what to do.
 *
 * @module
 */

import type { Identity, IdentityResolver, ResolveOptions } from "../identity/mod.ts";
import { LocalApiError } from "../localapi/mod.ts";
import { getLogger } from "../log.ts";
import {
  decideL4,
  decideL7,
  type Decision,
  type L4Request,
  type L7Request,
  unknownCallerDecision,
} from "../policy/mod.ts";
import { errorMessage } from "../util/error.ts";

/** A decision and, when it could be established, who asked. */
export interface AccessResult {
  decision: Decision;
  identity?: Identity;
}

/** Where a caller came from. */
export interface Caller extends ResolveOptions {
  /** Source address as `IP:port` (or `[v6]:port`). */
  addr: string;
}

const log = getLogger("access");

async function identify(
  resolver: IdentityResolver,
  caller: Caller,
  fallback: { layer: "l4" | "l7"; listener: string; host?: string },
): Promise<AccessResult | Identity> {
  try {
    return await resolver.resolve(caller.addr, { proto: caller.proto, svcName: caller.svcName });
  } catch (err) {
    const reason = err instanceof LocalApiError
      ? err.message
      : `identity lookup failed: ${errorMessage(err)}`;
    log.warn("deny {listener} from {addr}: {reason}", {
      listener: fallback.listener,
      addr: caller.addr,
      reason,
      kind: err instanceof LocalApiError ? err.kind : "error",
    });
    return { decision: unknownCallerDecision(fallback.layer, fallback, { reason }) };
  }
}

function isResult(v: AccessResult | Identity): v is AccessResult {
  return "decision" in v;
}

/** Decides a connection (tcp, tls passthrough, udp session) from `caller`. Never rejects. */
export async function checkL4(
  resolver: IdentityResolver,
  caller: Caller,
  request: L4Request,
): Promise<AccessResult> {
  const who = await identify(resolver, caller, {
    layer: "l4",
    listener: request.listener,
    host: request.sni,
  });
  if (isResult(who)) return who;
  return { decision: decideL4(who.rules, request), identity: who };
}

/** Decides one HTTP request from `caller`. Never rejects. */
export async function checkL7(
  resolver: IdentityResolver,
  caller: Caller,
  request: L7Request,
): Promise<AccessResult> {
  const who = await identify(resolver, caller, {
    layer: "l7",
    listener: request.listener,
    host: request.host,
  });
  if (isResult(who)) return who;
  return { decision: decideL7(who.rules, request), identity: who };
}

/** A request to {@link authorize}: an L4 connection or session, or one HTTP request. */
export type AuthzRequest = ({ layer: "l4" } & L4Request) | ({ layer: "l7" } & L7Request);

/** What {@link authorize} decided: let through or not, and why. */
export interface Authorization extends AccessResult {
  /** Let the caller through. */
  allow: boolean;
  /** Let through only because the listener is audit-only (shadow): the policy denies it. */
  shadow: boolean;
}

/**
 * Decides whether `caller` may make `request`. On an audit-only (`shadow`) listener a policy deny is let
 * through, loudly — but never an unknown caller: shadow mode audits the policy, not who is calling.
 * Never rejects.
 */
export async function authorize(
  resolver: IdentityResolver,
  caller: Caller,
  options: { request: AuthzRequest; shadow?: boolean },
): Promise<Authorization> {
  const { request } = options;
  const access = request.layer === "l4"
    ? await checkL4(resolver, caller, request)
    : await checkL7(resolver, caller, request);
  const shadow = Boolean(options.shadow) && !access.decision.allow && access.identity !== undefined;
  return { ...access, allow: access.decision.allow || shadow, shadow };
}
