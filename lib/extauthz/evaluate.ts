/**
 * One ext_authz check, whatever the transport: {@link judge} takes a {@link CheckInput} (built from
 * Envoy's HTTP check by `http.ts`, or from a gRPC CheckRequest by {@link checkInputFromRequest}) and
 * decides, failing closed at every step.
 *
 * Who may name the caller: in standalone mode only our relay can open a connection to our Envoy (its
 * RBAC filter checks the relay secret before any HTTP, see `lib/wire.ts`), and only Envoy can reach our
 * authz socket; in discovery mode (Envoy Gateway) the PROXY source is believed as Envoy reports it.
 *
 * Order of checks, each a deny on failure:
 * 1. the check is well formed and is an HTTP request;
 * 2. the source (from the connection, never a client header) is a tailnet address;
 * 3. the listener (set per listener by our Envoy, `context_extensions.listener` under Envoy Gateway, or
 *    in discovery mode the listener on the connection's local port) is a known http/https/grpc listener;
 * 4. tailscaled says who the caller is (`authorize`, through the identity resolver and its short cache, so
 *    grant changes are seen within its TTL even on a long keep-alive connection);
 * 5. the policy allows the listener, host, canonical path and method.
 *
 * A shadow listener turns a deny of step 5 (only) into an allow, loudly: steps 1-4 establish who is
 * calling, which shadow mode must not skip.
 *
 * An allowed request of a listener with `identityToken` also carries a signed identity token
 * (`lib/identity_token/`); failing to produce one is a deny.
 *
 * @module
 */

import { z } from "zod";
import { authorize } from "../access/mod.ts";
import type { ListenerConfig } from "../config/mod.ts";
import { DEFAULT_CAPABILITY, L7_PROTOCOLS } from "../config/mod.ts";
import type { Identity, IdentityResolver } from "../identity/mod.ts";
import type { TokenSigner } from "../identity_token/mod.ts";
import { getLogger } from "../log.ts";
import { own } from "../util/own.ts";
import { type Decision, type DecisionCode, formatExplanation, unknownCallerDecision } from "../policy/mod.ts";
import type { DecisionEvent } from "../telemetry/mod.ts";
import { type AddressKind, classifyAddress, joinHostPort } from "../net/address.ts";
import { forwardingHeaders, identityHeaders, identityTokenHeader, spoofedHeaders } from "./headers.ts";
import { CheckRequestSchema, type CheckResponse, type HeaderValueOption } from "./schema.ts";
import { errorMessage } from "../util/error.ts";

/** What evaluation needs to know about a listener. */
export type ListenerSettings = Pick<ListenerConfig, "protocol" | "acceptAppCaps" | "shadow"> & {
  /** Override headers this listener lets through (see `OVERRIDE_HEADERS`); none when absent. */
  keepHeaders?: readonly string[];
  /** Send a signed identity token (audience: this setting's, else the listener's name); none when absent. */
  identityToken?: ListenerConfig["identityToken"];
};

/** Looks a listener up by its name; `undefined` for a name that is not configured. */
export type ListenerLookup = (name: string) => ListenerSettings | undefined;

/**
 * A {@link ListenerLookup} over a parsed config's listeners. Own keys only, so a name such as
 * "constructor" is not found on the object's prototype.
 */
export function listenersFromConfig(
  config: { listeners: Readonly<Record<string, ListenerSettings>> },
): ListenerLookup {
  return (name) => own(config.listeners, name);
}

/**
 * Why a request was allowed or denied: the policy engine's codes, plus the checks made before it.
 * `bad_source`: the source is loopback or not a tailnet address; `bad_service`: the connection names
 * a Service our relay never sent; `no_listener`: no listener (a route without our per-route
 * settings); `unknown_listener`: not a configured http/https/grpc listener; `malformed`: not an HTTP
 * check; `internal_error`: a bug, denied.
 */
export type AuthzCode =
  | DecisionCode
  | "bad_source"
  | "bad_service"
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

/** Everything {@link judge} depends on. */
export interface AuthzDeps {
  /** Caller identities (WhoIs with a short cache). */
  resolver: IdentityResolver;
  /** The configured listeners. */
  listeners: ListenerLookup;
  /**
   * Discovery mode: the listener name for a request whose route sets no `context_extensions.listener`,
   * from the port the connection reached (the discovered Envoy listener's).
   */
  listenerForPort?: (port: number) => string | undefined;
  /** Capabilities forwarded on `acceptAppCaps: true` listeners (default {@link DEFAULT_CAPABILITY}); a list names its own. */
  appCapNames?: readonly string[];
  /** Signs identity tokens for `identityToken` listeners; without it their requests are denied. */
  tokens?: TokenSigner;
  /** Called once per check with the decision (must not throw; errors are logged and ignored). */
  onDecision?: (record: DecisionRecord) => void;
  /** Monotonic clock in ms, for latency (default `performance.now`). */
  now?: () => number;
}

/** One request to judge, as the transport adapters hand it over (and the gRPC bridge sends as JSON). */
export const CheckInputSchema = z.object({
  /** Envoy's `x-request-id` (also returned on a deny). */
  requestId: z.string(),
  /** The listener name; `""` when the check named none. */
  listener: z.string(),
  /** Caller IP from the connection (`""` when absent). */
  callerIp: z.string(),
  /** Caller port from the connection. */
  callerPort: z.number().int().optional(),
  /** Port of the connection's local end (the PROXY header's destination). */
  localPort: z.number().int().optional(),
  /** The Tailscale Service (`svc:NAME`) the connection came through; WhoIs is scoped to it. */
  svcName: z.string().optional(),
  /** HTTP method, as received. */
  method: z.string(),
  /** Host or `:authority`, as received. */
  host: z.string(),
  /** Request target after Envoy's normalisation, query included. */
  path: z.string(),
  /** Whether the request is gRPC (a deny is then PERMISSION_DENIED with a plain message). */
  grpc: z.boolean(),
  /**
   * The request's headers, when the check carries them all (gRPC from an Envoy we do not configure):
   * client copies of identity headers are then removed too.
   */
  headers: z.record(z.string(), z.string()).optional(),
  /** Set by an adapter that could not read the check: denied with this reason, before anything else. */
  refuse: z.object({ code: z.string(), reason: z.string() }).optional(),
});

/** One request to judge. */
export type CheckInput = Omit<z.infer<typeof CheckInputSchema>, "refuse"> & {
  refuse?: { code: AuthzCode; reason: string };
};

/** The answer to one check, as any transport sends it back. */
export interface CheckAnswer {
  /** Whether Envoy lets the request through. */
  allow: boolean;
  /** Allow: request headers to set upstream (identity). */
  set: HeaderValueOption[];
  /** Allow: client headers to remove upstream. */
  remove: string[];
  /** The request id, repeated on a deny. */
  requestId: string;
}

/** A {@link CheckAnswer} and the decision behind it. */
export interface Verdict extends CheckAnswer {
  /** What was decided and why, as logged. */
  record: DecisionRecord;
}

/** Body of a denied HTTP request, as the Go tailvoy sends it. */
export const DENY_BODY = '{"error":"forbidden","message":"access denied by tailvoy policy"}';

/** Message of a denied gRPC request (Envoy sends the body as `grpc-message`). */
export const DENY_MESSAGE = "access denied by tailvoy policy";

/** gRPC status code of a deny (`google.rpc.Code.PERMISSION_DENIED`). */
export const PERMISSION_DENIED = 7;

const log = getLogger("extauthz");
const EMPTY_HEADERS: Readonly<Record<string, string>> = Object.freeze({});

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

function sourceProblem(kind: AddressKind, ip: string): string {
  const source = `source ${JSON.stringify(ip)}`;
  if (kind === "loopback") return `${source} is loopback: no PROXY header named the caller`;
  if (kind === "other") return `${source} is not a tailnet address (100.64.0.0/10, fd7a:115c:a1e0::/48)`;
  return `${source} (or its port) is missing or invalid`;
}

async function decide(input: CheckInput, deps: AuthzDeps): Promise<Outcome> {
  if (input.refuse) return refuse(input.refuse.code, input.refuse.reason, input.listener);
  const kind = classifyAddress(input.callerIp);
  if (kind !== "tailnet" || input.callerPort === undefined) {
    return refuse("bad_source", sourceProblem(kind, input.callerIp), input.listener);
  }
  if (input.listener === "" && input.localPort !== undefined) {
    input.listener = deps.listenerForPort?.(input.localPort) ?? "";
  }
  if (input.listener === "") {
    return refuse("no_listener", "request names no listener: its route lacks tailvoy's ext_authz settings");
  }
  const settings = deps.listeners(input.listener);
  if (!settings || !L7_PROTOCOLS.includes(settings.protocol)) {
    return refuse(
      "unknown_listener",
      settings
        ? `listener ${JSON.stringify(input.listener)} is a ${settings.protocol} listener, not http/https/grpc`
        : `listener ${JSON.stringify(input.listener)} is not configured`,
      input.listener,
    );
  }
  const { decision, identity, allow, shadow } = await authorize(
    deps.resolver,
    {
      addr: joinHostPort(input.callerIp, input.callerPort),
      ...(input.svcName ? { svcName: input.svcName } : {}),
    },
    {
      request: {
        layer: "l7",
        listener: input.listener,
        host: input.host,
        path: input.path,
        method: input.method,
      },
      shadow: settings.shadow,
    },
  );
  return {
    code: decision.code,
    explanation: formatExplanation(decision),
    decision,
    identity,
    settings,
    allow,
    shadow,
  };
}

function logOutcome(record: DecisionRecord): void {
  if (record.allow && !record.shadow) {
    // The common case: skip building the properties when debug is off.
    log.debug((l) => l`allow ${record.method} ${record.host}${record.path} on ${record.listener}`);
    return;
  }
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
  } else {
    log.info("deny {method} {host}{path} on {listener} for {caller} ({code}): {explanation}", props);
  }
}

/** The capabilities a listener forwards: its own list, ours for `true`, none for `false`. */
function acceptedCaps(
  accept: ListenerSettings["acceptAppCaps"],
  ours: readonly string[] | undefined,
): readonly string[] | undefined {
  if (Array.isArray(accept)) return accept;
  return accept ? ours ?? [DEFAULT_CAPABILITY] : undefined;
}

function internalError(error: unknown): Outcome {
  return refuse(
    "internal_error",
    `internal error: ${errorMessage(error)}`,
  );
}

/**
 * Judges one check. Never rejects: anything unexpected is a deny. Calls `deps.onDecision` with the
 * record.
 */
export async function judge(input: CheckInput, deps: AuthzDeps): Promise<Verdict> {
  const now = deps.now ?? (() => performance.now());
  const started = now();
  const time = new Date();
  let outcome: Outcome;
  try {
    outcome = await decide(input, deps);
  } catch (error) {
    outcome = internalError(error);
  }
  let set: HeaderValueOption[] = [];
  let remove: string[] = [];
  if (outcome.allow && outcome.identity && outcome.settings) {
    try {
      set = [
        ...identityHeaders(outcome.identity, {
          callerIp: input.callerIp,
          appCapNames: acceptedCaps(outcome.settings.acceptAppCaps, deps.appCapNames),
        }),
        ...forwardingHeaders(input.callerIp, outcome.decision?.host ?? input.host),
      ];
      const token = outcome.settings.identityToken;
      if (token) {
        if (!deps.tokens) throw new Error("identity tokens are on for this listener, but nothing signs them");
        const signed = deps.tokens.token({
          identity: outcome.identity,
          audience: token.audience ?? input.listener,
          lifetimeMs: token.lifetime,
          rule: outcome.decision?.matched,
          shadow: outcome.shadow,
        });
        // A cached token is a string: no await, so the allow path takes no extra turn.
        set.push(identityTokenHeader(typeof signed === "string" ? signed : await signed));
      }
      remove = spoofedHeaders(input.headers, set, { keep: outcome.settings.keepHeaders });
    } catch (error) {
      outcome = internalError(error);
    }
  } else if (outcome.allow) {
    outcome = refuse("internal_error", "allow without an identity");
  }
  const record: DecisionRecord = {
    time,
    requestId: input.requestId,
    listener: input.listener,
    callerIp: input.callerIp,
    ...(input.callerPort === undefined ? {} : { callerPort: input.callerPort }),
    ...(outcome.identity ? { identity: outcome.identity } : {}),
    host: outcome.decision?.host ?? input.host,
    method: input.method,
    path: outcome.decision?.canonicalPath ?? input.path,
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
  const requestId = input.requestId;
  return outcome.allow
    ? { allow: true, set, remove, requestId, record }
    : { allow: false, set: [], remove: [], requestId, record };
}

function malformed(issue: { path: PropertyKey[]; message: string } | undefined): string {
  const at = issue?.path.length ? ` at ${issue.path.map(String).join(".")}` : "";
  return `malformed CheckRequest${at}: ${issue?.message ?? "unknown problem"}`;
}

/**
 * A gRPC CheckRequest (as decoded by proto-loader) as a {@link CheckInput}: the caller from
 * `attributes.source`, the listener from `context_extensions.listener`, the local port from
 * `attributes.destination`. Metadata is not read: a gRPC check comes from Envoy Gateway's Envoy, whose
 * connections carry no relay secret.
 */
export function checkInputFromRequest(request: unknown): CheckInput {
  const parsed = CheckRequestSchema.safeParse(request);
  const attributes = parsed.success ? parsed.data.attributes : undefined;
  const http = attributes?.request?.http;
  const headers = http?.headers ?? EMPTY_HEADERS;
  const socket = attributes?.source?.address?.socket_address;
  // Envoy sets x-request-id itself (a client's is replaced at the edge); the stream id is a fallback.
  const input: CheckInput = {
    requestId: own(headers, "x-request-id") || http?.id || crypto.randomUUID(),
    listener: own(attributes?.context_extensions, "listener") ?? "",
    callerIp: socket?.address ?? "",
    method: http?.method ?? "",
    host: http?.host ?? "",
    path: http?.path ?? "",
    grpc: (own(headers, "content-type") ?? "").startsWith("application/grpc"),
    headers,
  };
  if (socket?.port_value !== undefined) input.callerPort = socket.port_value;
  const localPort = attributes?.destination?.address?.socket_address?.port_value;
  if (localPort !== undefined) input.localPort = localPort;
  if (!attributes || !http) {
    input.refuse = {
      code: "malformed",
      reason: parsed.success ? "not an HTTP request" : malformed(parsed.error.issues[0]),
    };
  }
  return input;
}

function header(key: string, value: string): HeaderValueOption {
  return { header: { key, value }, append: { value: false }, append_action: "OVERWRITE_IF_EXISTS_OR_ADD" };
}

/** The headers of a deny response (content type for HTTP, the request id twice). */
export function denyHeaders(requestId: string, grpc: boolean): [string, string][] {
  return [
    ...(grpc ? [] : [["content-type", "application/json"] as [string, string]]),
    ["x-request-id", requestId],
    ["x-tailvoy-request-id", requestId],
  ];
}

/** A {@link CheckAnswer} as a gRPC CheckResponse. */
export function toCheckResponse(verdict: CheckAnswer, input: Pick<CheckInput, "grpc">): CheckResponse {
  if (verdict.allow) {
    return {
      status: { code: 0 },
      ok_response: {
        headers: verdict.set,
        ...(verdict.remove.length > 0 ? { headers_to_remove: verdict.remove } : {}),
      },
    };
  }
  return {
    status: { code: PERMISSION_DENIED, message: DENY_MESSAGE },
    denied_response: {
      // Envoy turns a 403 local reply to a gRPC request into grpc-status 7 (PERMISSION_DENIED) with the
      // body as grpc-message, so gRPC callers get a readable message instead of JSON.
      status: { code: "Forbidden" },
      headers: denyHeaders(verdict.requestId, input.grpc).map(([k, v]) => header(k, v)),
      body: input.grpc ? DENY_MESSAGE : DENY_BODY,
    },
  };
}

/** Evaluates one gRPC CheckRequest and returns the CheckResponse. Never rejects. */
export async function evaluateCheck(request: unknown, deps: AuthzDeps): Promise<CheckResponse> {
  const input = checkInputFromRequest(request);
  return toCheckResponse(await judge(input, deps), input);
}

/** An ext_authz decision record as a telemetry event (metrics and decision log). */
export function decisionEvent(record: DecisionRecord): DecisionEvent {
  return {
    layer: "l7",
    listener: record.listener,
    requestId: record.requestId,
    caller: record.callerPort === undefined ? record.callerIp : `${record.callerIp}:${record.callerPort}`,
    identity: record.identity,
    host: record.host,
    method: record.method,
    path: record.path,
    // Refused before the policy ran (bad secret, bad source, unknown listener): still a deny to count.
    decision: record.decision ??
      unknownCallerDecision("l7", { listener: record.listener, host: record.host }, {
        reason: record.explanation,
      }),
    shadow: record.shadow,
    code: record.code,
    latencyMs: record.latencyMs,
  };
}
