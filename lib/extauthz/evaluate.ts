/**
 * One ext_authz Check, without gRPC: from a decoded CheckRequest to the CheckResponse, failing closed
 * at every step.
 *
 * Order of checks, each a deny on failure:
 * 1. the request has the expected shape and is an HTTP request;
 * 2. the connection carries our per-process secret (so its PROXY header came from our relay, and
 *    the source address can be believed); skipped in discovery mode (`secret: null`), see
 *    {@link AuthzDeps.secret};
 * 3. the source (`attributes.source.address.socket_address`, never a header) is a tailnet address;
 * 4. `context_extensions.listener` (or, in discovery mode when it is absent, the listener on the
 *    connection's local port) names a known http/https/grpc listener;
 * 5. tailscaled says who the caller is (`checkL7`, through the identity resolver and its short cache,
 *    so grant changes are seen within its TTL even on a long keep-alive connection);
 * 6. the policy allows the listener, host, canonical path and method.
 *
 * A shadow listener turns a deny of step 6 (only) into an allow, loudly: steps 1-5 establish who is
 * calling, which shadow mode must not skip.
 *
 * @module
 */

import { checkL7 } from "../access/mod.ts";
import type { ListenerConfig } from "../config/mod.ts";
import { L7_PROTOCOLS } from "../config/mod.ts";
import type { Identity, IdentityResolver } from "../identity/mod.ts";
import { getLogger } from "../log.ts";
import { type Decision, type DecisionCode, DEFAULT_CAP_NAMES, formatExplanation } from "../policy/mod.ts";
import { type AddressKind, classifyAddress, joinHostPort } from "./address.ts";
import { type IdentityHeaderOptions, identityHeaders, spoofedHeaders } from "./headers.ts";
import { type CheckRequest, CheckRequestSchema, type CheckResponse } from "./schema.ts";
import {
  DEFAULT_SECRET_KEY,
  SECRET_METADATA_NAMESPACE,
  secretMatches,
  secretProblem,
  SERVICE_KEY,
} from "./secret.ts";

/** What evaluation needs to know about a listener. */
export type ListenerSettings = Pick<ListenerConfig, "protocol" | "acceptAppCaps" | "shadow">;

/** Looks a listener up by its name; `undefined` for a name that is not configured. */
export type ListenerLookup = (name: string) => ListenerSettings | undefined;

/**
 * A {@link ListenerLookup} over a parsed config's listeners. Own keys only, so a name such as
 * "constructor" is not found on the object's prototype.
 */
export function listenersFromConfig(
  config: { listeners: Readonly<Record<string, ListenerSettings>> },
): ListenerLookup {
  const listeners = config.listeners;
  return (name) => Object.hasOwn(listeners, name) ? listeners[name] : undefined;
}

/**
 * Why a request was allowed or denied: the policy engine's codes, plus the checks made before it.
 * `bad_secret`: no or wrong relay secret; `bad_source`: the source is loopback or not a tailnet
 * address; `no_listener`: no `context_extensions.listener` (a route without our per-route settings);
 * `unknown_listener`: not a configured http/https/grpc listener; `malformed`: not an HTTP CheckRequest;
 * `internal_error`: a bug, denied.
 */
export type AuthzCode =
  | DecisionCode
  | "bad_secret"
  | "bad_source"
  | "no_listener"
  | "unknown_listener"
  | "malformed"
  | "internal_error";

/** One decision, for the decision log and metrics. */
export interface DecisionRecord {
  /** When the Check arrived. */
  time: Date;
  /** Envoy's `x-request-id` (also returned on a deny). */
  requestId: string;
  /** `context_extensions.listener`; `""` when absent. */
  listener: string;
  /** Caller IP from the connection (`""` when absent). */
  callerIp: string;
  /** Caller port from the connection. */
  callerPort?: number;
  /** Who the caller is, once established. */
  identity?: Identity;
  /** Canonical host when the policy ran, otherwise as received. */
  host: string;
  /** HTTP method, as received. */
  method: string;
  /** Canonical path when the policy ran and accepted it, otherwise the request target as received. */
  path: string;
  /** What Envoy was told. */
  allow: boolean;
  /** True when a shadow listener allowed a request the policy denies. */
  shadow: boolean;
  /** Outcome class. */
  code: AuthzCode;
  /** The policy decision, when the policy (or the identity step) produced one. */
  decision?: Decision;
  /** Human-readable why (multi-line for policy denies). */
  explanation: string;
  /** Time spent in this evaluation, in milliseconds. */
  latencyMs: number;
}

/** Everything {@link evaluateCheck} depends on. */
export interface AuthzDeps {
  /** Caller identities (WhoIs with a short cache). */
  resolver: IdentityResolver;
  /** The configured listeners. */
  listeners: ListenerLookup;
  /**
   * The per-process secret the relay sends in its PROXY v2 TLV. `null` in discovery mode (Envoy
   * Gateway), whose listeners cannot check our TLV: the PROXY source is then believed as Envoy reports
   * it, which is only sound when Envoy's listeners are reachable through tailvoy alone.
   */
  secret: string | null;
  /**
   * Discovery mode: the listener name for a request whose route sets no `context_extensions.listener`,
   * from the port the connection reached (the discovered Envoy listener's).
   */
  listenerForPort?: (port: number) => string | undefined;
  /** Metadata key of the secret (default `tailvoy_secret`). */
  secretKey?: string;
  /** Metadata namespace of the secret (default `envoy.filters.listener.proxy_protocol`). */
  secretNamespace?: string;
  /** Capabilities forwarded in `Tailscale-App-Capabilities` on `acceptAppCaps` listeners (default tailvoy's). */
  appCapNames?: readonly string[];
  /**
   * The Tailscale Service (`svc:name`) a listener is published as, so WhoIs returns the caps granted
   * towards the Service rather than the node. TODO: wire from `tailscale.serviceMappings` once the
   * resolver's service-scoped WhoIs is used for L7.
   */
  svcNameFor?: (listener: string) => string | undefined;
  /** Called once per Check with the decision (must not throw; errors are logged and ignored). */
  onDecision?: (record: DecisionRecord) => void;
  /** Monotonic clock in ms, for latency (default `performance.now`). */
  now?: () => number;
}

/** Body of a denied HTTP request, as tailvoy sends it. */
export const DENY_BODY = '{"error":"forbidden","message":"access denied by tailvoy policy"}';

/** Message of a denied gRPC request (Envoy sends the body as `grpc-message`). */
export const DENY_MESSAGE = "access denied by tailvoy policy";

/** gRPC status code of a deny (`google.rpc.Code.PERMISSION_DENIED`). */
export const PERMISSION_DENIED = 7;

const log = getLogger("extauthz");
const encoder = new TextEncoder();
const EMPTY_HEADERS: Readonly<Record<string, string>> = Object.freeze({});

function own<T>(map: Readonly<Record<string, T>> | undefined, key: string): T | undefined {
  return map && Object.hasOwn(map, key) ? map[key] : undefined;
}

type Http = NonNullable<NonNullable<NonNullable<CheckRequest["attributes"]>["request"]>["http"]>;

interface Outcome {
  allow: boolean;
  code: AuthzCode;
  explanation: string;
  shadow?: boolean;
  decision?: Decision;
  identity?: Identity;
  settings?: ListenerSettings;
}

function refuse(code: AuthzCode, reason: string, listener = ""): Outcome {
  const where = listener === "" ? "" : ` listener ${JSON.stringify(listener)}`;
  return { allow: false, code, explanation: `DENY L7${where}: ${reason}` };
}

interface Context {
  http: Http;
  headers: Readonly<Record<string, string>>;
  listener: string;
  callerIp: string;
  callerPort?: number;
  /** Port of the connection's local end (the PROXY header's destination). */
  localPort?: number;
  host: string;
  path: string;
}

function sourceProblem(kind: AddressKind, ip: string): string {
  const source = `source ${JSON.stringify(ip)}`;
  if (kind === "loopback") return `${source} is loopback: no PROXY header named the caller`;
  if (kind === "other") return `${source} is not a tailnet address (100.64.0.0/10, fd7a:115c:a1e0::/48)`;
  return `${source} (or its port) is missing or invalid`;
}

async function decide(
  attributes: NonNullable<CheckRequest["attributes"]>,
  ctx: Context,
  deps: AuthzDeps,
): Promise<Outcome> {
  const namespace = deps.secretNamespace ?? SECRET_METADATA_NAMESPACE;
  const key = deps.secretKey ?? DEFAULT_SECRET_KEY;
  const secret = deps.secret;
  // Never compare against an empty or mangled secret (createAuthzServer refuses one at start).
  const problem = secret === null ? undefined : secretProblem(secret);
  if (problem) return refuse("internal_error", problem);
  const presented = own(own(attributes.metadata_context?.filter_metadata, namespace)?.fields, key)
    ?.stringValue;
  if (secret !== null && !secretMatches(presented, encoder.encode(secret))) {
    return refuse(
      "bad_secret",
      presented === undefined
        ? `connection carries no relay secret (metadata ${namespace}/${key}): it did not come through tailvoy's relay`
        : `connection carries a wrong relay secret (metadata ${namespace}/${key})`,
      ctx.listener,
    );
  }
  const kind = classifyAddress(ctx.callerIp);
  if (kind !== "tailnet" || ctx.callerPort === undefined) {
    return refuse("bad_source", sourceProblem(kind, ctx.callerIp), ctx.listener);
  }
  if (ctx.listener === "" && ctx.localPort !== undefined) {
    ctx.listener = deps.listenerForPort?.(ctx.localPort) ?? "";
  }
  if (ctx.listener === "") {
    return refuse(
      "no_listener",
      "request has no context_extensions.listener: its route lacks tailvoy's per-route ext_authz settings",
    );
  }
  const settings = deps.listeners(ctx.listener);
  if (!settings || !L7_PROTOCOLS.includes(settings.protocol)) {
    return refuse(
      "unknown_listener",
      settings
        ? `listener ${JSON.stringify(ctx.listener)} is a ${settings.protocol} listener, not http/https/grpc`
        : `listener ${JSON.stringify(ctx.listener)} is not configured`,
      ctx.listener,
    );
  }
  // The Service the relay saw the connection arrive through (same authenticated header as the secret).
  const fromRelay = secret === null
    ? undefined
    : own(own(attributes.metadata_context?.filter_metadata, namespace)?.fields, SERVICE_KEY)?.stringValue;
  const svcName = (fromRelay?.startsWith("svc:") ? fromRelay : undefined) ?? deps.svcNameFor?.(ctx.listener);
  const { decision, identity } = await checkL7(
    deps.resolver,
    { addr: joinHostPort(ctx.callerIp, ctx.callerPort), ...(svcName ? { svcName } : {}) },
    { listener: ctx.listener, host: ctx.host, path: ctx.path, method: ctx.http.method ?? "" },
  );
  const explanation = formatExplanation(decision);
  const outcome = { code: decision.code, explanation, decision, identity, settings };
  if (decision.allow) return { ...outcome, allow: true };
  // Shadow mode audits the policy only: an unknown caller is denied like anywhere else.
  if (settings.shadow && identity) return { ...outcome, allow: true, shadow: true };
  return { ...outcome, allow: false };
}

function denyResponse(requestId: string, grpc: boolean): CheckResponse {
  const header = (key: string, value: string) => ({
    header: { key, value },
    append: { value: false },
    append_action: "OVERWRITE_IF_EXISTS_OR_ADD" as const,
  });
  return {
    status: { code: PERMISSION_DENIED, message: DENY_MESSAGE },
    denied_response: {
      // Envoy 1.40 turns a 403 local reply to a gRPC request into grpc-status 7 (PERMISSION_DENIED)
      // with the body as grpc-message, so gRPC callers get a readable message instead of JSON.
      status: { code: "Forbidden" },
      headers: [
        ...(grpc ? [] : [header("content-type", "application/json")]),
        header("x-request-id", requestId),
        header("x-tailvoy-request-id", requestId),
      ],
      body: grpc ? DENY_MESSAGE : DENY_BODY,
    },
  };
}

function allowResponse(
  identity: Identity,
  requestHeaders: Readonly<Record<string, string>>,
  options: IdentityHeaderOptions,
): CheckResponse {
  const set = identityHeaders(identity, options);
  const remove = spoofedHeaders(requestHeaders, set);
  return {
    status: { code: 0 },
    ok_response: { headers: set, ...(remove.length > 0 ? { headers_to_remove: remove } : {}) },
  };
}

function malformed(issue: { path: PropertyKey[]; message: string } | undefined): string {
  const at = issue?.path.length ? ` at ${issue.path.map(String).join(".")}` : "";
  return `malformed CheckRequest${at}: ${issue?.message ?? "unknown problem"}`;
}

function logOutcome(record: DecisionRecord): void {
  const props = {
    requestId: record.requestId,
    listener: record.listener,
    caller: record.callerIp,
    node: record.identity?.node,
    user: record.identity?.login,
    method: record.method,
    host: record.host,
    path: record.path,
    code: record.code,
    explanation: record.explanation,
    latencyMs: record.latencyMs,
  };
  if (record.shadow) {
    log.warn("SHADOW MODE: allowing a request the policy DENIES on {listener}: {explanation}", props);
  } else if (record.allow) {
    log.debug("allow {method} {host}{path} on {listener} for {caller}", props);
  } else {
    log.info("deny {method} {host}{path} on {listener} for {caller} ({code}): {explanation}", props);
  }
}

/**
 * Evaluates one CheckRequest (as decoded by proto-loader) and returns the CheckResponse. Never
 * rejects: anything unexpected is a deny. Calls `deps.onDecision` with the record.
 */
export async function evaluateCheck(request: unknown, deps: AuthzDeps): Promise<CheckResponse> {
  const now = deps.now ?? (() => performance.now());
  const started = now();
  const time = new Date();
  const parsed = CheckRequestSchema.safeParse(request);
  const attributes = parsed.success ? parsed.data.attributes : undefined;
  const http = attributes?.request?.http;
  const headers = http?.headers ?? EMPTY_HEADERS;
  const socket = attributes?.source?.address?.socket_address;
  const local = attributes?.destination?.address?.socket_address;
  const ctx: Context = {
    http: http ?? {},
    headers,
    listener: own(attributes?.context_extensions, "listener") ?? "",
    callerIp: socket?.address ?? "",
    callerPort: socket?.port_value,
    localPort: local?.port_value,
    host: http?.host ?? "",
    path: http?.path ?? "",
  };
  // Envoy sets x-request-id itself (a client's is replaced at the edge); the stream id is a fallback.
  const requestId = own(headers, "x-request-id") || http?.id || crypto.randomUUID();
  const grpc = (own(headers, "content-type") ?? "").startsWith("application/grpc");
  let outcome: Outcome;
  try {
    outcome = !attributes || !http
      ? refuse(
        "malformed",
        parsed.success ? "not an HTTP request" : malformed(parsed.error.issues[0]),
      )
      : await decide(attributes, ctx, deps);
  } catch (error) {
    outcome = refuse(
      "internal_error",
      `internal error: ${error instanceof Error ? error.message : String(error)}`,
    );
  }
  let response = denyResponse(requestId, grpc);
  if (outcome.allow && outcome.identity && outcome.settings) {
    try {
      response = allowResponse(outcome.identity, headers, {
        callerIp: ctx.callerIp,
        appCapNames: outcome.settings.acceptAppCaps ? deps.appCapNames ?? DEFAULT_CAP_NAMES : undefined,
      });
    } catch (error) {
      outcome = refuse(
        "internal_error",
        `internal error: ${error instanceof Error ? error.message : String(error)}`,
      );
    }
  } else if (outcome.allow) {
    outcome = refuse("internal_error", "allow without an identity");
  }
  const record: DecisionRecord = {
    time,
    requestId,
    listener: ctx.listener,
    callerIp: ctx.callerIp,
    ...(ctx.callerPort === undefined ? {} : { callerPort: ctx.callerPort }),
    ...(outcome.identity ? { identity: outcome.identity } : {}),
    host: outcome.decision?.host ?? ctx.host,
    method: ctx.http.method ?? "",
    path: outcome.decision?.canonicalPath ?? ctx.path,
    allow: outcome.allow,
    shadow: outcome.shadow ?? false,
    code: outcome.code,
    ...(outcome.decision ? { decision: outcome.decision } : {}),
    explanation: outcome.explanation,
    latencyMs: now() - started,
  };
  logOutcome(record);
  try {
    deps.onDecision?.(record);
  } catch (error) {
    log.error("onDecision callback failed: {error}", { error });
  }
  return response;
}
