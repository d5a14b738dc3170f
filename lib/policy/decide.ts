/**
 * Access decisions. The allow path stops at the first matching rule and reuses strings built when
 * the rules were parsed; only the deny path builds text, explaining rule by rule which dimension failed.
 *
 * @module
 */

import {
  canonicalizeHost,
  type HostResult,
  matchHostPattern,
  matchRoutePattern,
  methodError,
} from "./match.ts";
import { canonicalizePath } from "./path.ts";
import type { ParsedRule, RuleMatcher, RuleRef } from "./rules.ts";
import { quote } from "./text.ts";

/** Input of {@link decideL4}: a TCP/TLS-passthrough/UDP connection. */
export interface L4Request {
  /** Listener name. */
  listener: string;
  /** TLS SNI; absent or `""` for plain TCP/UDP (then a hostname-restricted rule fails). */
  sni?: string;
}

/** Input of {@link decideL7}: one HTTP request as seen by ext_authz. */
export interface L7Request {
  /** Listener name (ext_authz context extension). */
  listener: string;
  /** Host / `:authority`, port allowed; absent or `""` fails a hostname-restricted rule. */
  host?: string;
  /** Request target (`:path`), query allowed; canonicalised before matching. */
  path: string;
  /** HTTP method. */
  method: string;
}

/**
 * Outcome class of a decision: `allow`; `no_rules` (the identity has no valid rule);
 * `no_match` (no rule matched); `bad_request` (the path was refused before any rule was consulted);
 * `unknown_caller` (who is calling could not be established: fail closed).
 */
export type DecisionCode = "allow" | "no_rules" | "no_match" | "bad_request" | "unknown_caller";

/** An access decision with everything needed to explain it. */
export interface Decision {
  /** Whether access is granted. */
  allow: boolean;
  /** Which check produced it. */
  layer: "l4" | "l7";
  /** Outcome class, for metrics and logs. */
  code: DecisionCode;
  /** The first rule that granted access (rules are tried in order). */
  matched?: RuleRef;
  /**
   * Why. Allow: the matching rule, plus caveats (dimensions not checked at L4). Deny: one line per
   * rule naming every failed dimension (`rule 0: listener "db" not in ["web"]`), or the single
   * reason the request or identity was refused.
   */
  reasons: string[];
  /** Listener name as given. */
  listener: string;
  /** Canonical host (L7) or SNI (L4); `""` when absent or invalid. */
  host: string;
  /** L7: the canonical path matched against routes, when the path was acceptable. */
  canonicalPath?: string;
  /** L7: the method, upper-cased. */
  method?: string;
}

const NO_RULES =
  "no valid tailvoy rules for this identity (capability absent or empty, or every rule malformed)";

function hostMatches(m: RuleMatcher, host: string): boolean {
  if (m.hostnames === undefined) return true;
  if (host === "") return false; // no SNI / Host, or an invalid one
  for (const p of m.hostnames) if (matchHostPattern(p, host)) return true;
  return false;
}

function routeMatches(m: RuleMatcher, path: string): boolean {
  if (m.routes === undefined) return true;
  for (const p of m.routes) if (matchRoutePattern(p, path)) return true;
  return false;
}

function hostFailure(m: RuleMatcher, h: HostResult, what: string): string {
  if (!h.ok) return `${h.reason}; rule restricts hostnames to ${m.text.hostnames}`;
  if (h.host === "") return `no ${what}, but rule restricts hostnames to ${m.text.hostnames}`;
  return `${what} ${quote(h.host)} matches none of ${m.text.hostnames}`;
}

function allowed(
  layer: "l4" | "l7",
  rule: ParsedRule,
  base: Pick<Decision, "listener" | "host" | "canonicalPath" | "method">,
): Decision {
  const { matched, l4Caveat } = rule.matcher.text;
  // The Go tailvoy's L4 check ignores routes (engine.go ruleMatchesL4); say so when it mattered.
  const reasons = layer === "l4" && l4Caveat !== undefined ? [matched, l4Caveat] : [matched];
  return { allow: true, layer, code: "allow", matched: rule.ref, reasons, ...base };
}

/**
 * L4 decision for a connection (TCP, TLS passthrough, UDP): a rule matches when its listener and
 * hostname (against the SNI) dimensions match. Routes and methods are not checked, as in the Go tailvoy
 * (`internal/policy/engine.go` `ruleMatchesL4`): a connection carries no path, so a routes-only
 * rule grants L4 access to any listener its grant reaches (a caveat is added to `reasons`).
 * No rules → deny.
 */
export function decideL4(rules: readonly ParsedRule[], request: L4Request): Decision {
  const h = request.sni ? canonicalizeHost(request.sni) : { ok: true as const, host: "" };
  const host = h.ok ? h.host : "";
  const base = { listener: request.listener, host };
  if (rules.length === 0) {
    return { allow: false, layer: "l4", code: "no_rules", reasons: [NO_RULES], ...base };
  }
  for (const rule of rules) {
    const m = rule.matcher;
    if ((m.listeners === undefined || m.listeners.has(request.listener)) && hostMatches(m, host)) {
      return allowed("l4", rule, base);
    }
  }
  const reasons = rules.map((rule) => {
    const m = rule.matcher;
    const failed: string[] = [];
    if (m.listeners !== undefined && !m.listeners.has(request.listener)) {
      failed.push(`listener ${quote(request.listener)} not in ${m.text.listeners}`);
    }
    if (!hostMatches(m, host)) failed.push(hostFailure(m, h, "SNI"));
    return `${m.text.label}: ${failed.join("; ")}`;
  });
  return { allow: false, layer: "l4", code: "no_match", reasons, ...base };
}

/**
 * The rules that can grant anything on `listener` (every rule when `listener` is `undefined`): their
 * JSON, in order. An open L7 connection is re-checked against this: ext_authz judges each request as it
 * starts, so a connection that outlives a change (a WebSocket, a stream) is closed when it changes.
 */
export function listenerGrants(rules: readonly ParsedRule[], listener: string | undefined): string[] {
  return rules
    .filter((r) =>
      listener === undefined || r.matcher.listeners === undefined || r.matcher.listeners.has(listener)
    )
    .map((r) => `${r.capName}:${r.json}`);
}

/**
 * L7 decision for one HTTP request: the path is canonicalised first (a refused path denies
 * whatever the rules say, with the reason); then a rule matches when its listener, hostname
 * (against Host), route (against the canonical path) and method dimensions all match.
 * No rules → deny.
 */
export function decideL7(rules: readonly ParsedRule[], request: L7Request): Decision {
  const h = request.host ? canonicalizeHost(request.host) : { ok: true as const, host: "" };
  const host = h.ok ? h.host : "";
  const method = request.method.toUpperCase();
  const p = canonicalizePath(request.path);
  if (!p.ok) {
    return {
      allow: false,
      layer: "l7",
      code: "bad_request",
      reasons: [p.reason],
      listener: request.listener,
      host,
      method,
    };
  }
  const path = p.path;
  const base = { listener: request.listener, host, canonicalPath: path, method };
  if (rules.length === 0) {
    return { allow: false, layer: "l7", code: "no_rules", reasons: [NO_RULES], ...base };
  }
  for (const rule of rules) {
    const m = rule.matcher;
    if (
      (m.listeners === undefined || m.listeners.has(request.listener)) &&
      (m.methods === undefined || m.methods.has(method)) &&
      hostMatches(m, host) &&
      routeMatches(m, path)
    ) {
      return allowed("l7", rule, base);
    }
  }
  const badMethod = methodError(request.method);
  const reasons = rules.map((rule) => {
    const m = rule.matcher;
    const failed: string[] = [];
    if (m.listeners !== undefined && !m.listeners.has(request.listener)) {
      failed.push(`listener ${quote(request.listener)} not in ${m.text.listeners}`);
    }
    if (!hostMatches(m, host)) failed.push(hostFailure(m, h, "host"));
    if (!routeMatches(m, path)) failed.push(`path ${quote(path)} matches none of ${m.text.routes}`);
    if (m.methods !== undefined && !m.methods.has(method)) {
      failed.push(badMethod ?? `method ${quote(method)} not in ${m.text.methods}`);
    }
    return `${m.text.label}: ${failed.join("; ")}`;
  });
  return { allow: false, layer: "l7", code: "no_match", reasons, ...base };
}

/**
 * Renders a decision for humans (logs, an `explain` command), e.g.
 *
 * ```text
 * DENY L7 listener "web" host "app.example.com" GET "/admin": no rule matched
 *   rule 0: path "/admin" matches none of ["/public/*"]
 * ```
 */
export function formatExplanation(decision: Decision): string {
  const target = decision.layer === "l7"
    ? ` host ${quote(decision.host)} ${decision.method ?? ""} ${
      decision.canonicalPath === undefined ? "(path refused)" : quote(decision.canonicalPath)
    }`
    : decision.host === ""
    ? " (no SNI)"
    : ` SNI ${quote(decision.host)}`;
  const headline: Record<DecisionCode, string> = {
    allow: "allowed",
    no_rules: "identity has no tailvoy rules",
    no_match: "no rule matched",
    bad_request: "request path refused",
    unknown_caller: "caller could not be identified",
  };
  const lines = [
    `${decision.allow ? "ALLOW" : "DENY"} ${decision.layer.toUpperCase()} listener ${
      quote(decision.listener)
    }${target}: ${headline[decision.code]}`,
  ];
  for (const reason of decision.reasons) lines.push(`  ${reason}`);
  return lines.join("\n");
}

/**
 * The deny for a caller whose identity could not be established (WhoIs error or timeout, missing or
 * malformed PROXY header): fail closed, with `reason` as the explanation.
 */
export function unknownCallerDecision(
  layer: "l4" | "l7",
  request: { listener: string; host?: string },
  options: { reason: string },
): Decision {
  return {
    allow: false,
    layer,
    code: "unknown_caller",
    reasons: [`caller unknown: ${options.reason}`],
    listener: request.listener,
    host: request.host ?? "",
  };
}
