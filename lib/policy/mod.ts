/**
 * tailvoy policy engine: who may reach which listener, hostname, path and method, decided from
 * the `rajsingh.info/cap/tailvoy` app-capability rules a WhoIs returns for the caller.
 *
 * Pure: no I/O, no Deno APIs, no logging. Parse a CapMap once per identity with
 * {@link parseCapRules}, then call {@link decideL4} per connection or {@link decideL7} per request.
 *
 * Semantics (the Go tailvoy's README): AND within a rule, OR across rules, an omitted dimension is
 * unrestricted, `{}` allows everything, no valid rule denies everything.
 *
 * @example
 * ```ts
 * const { rules, malformed } = parseCapRules(whois.CapMap);
 * const d = decideL7(rules, { listener: "web", host: "app.example.com", path: "/api/x", method: "GET" });
 * if (!d.allow) console.log(formatExplanation(d));
 * ```
 *
 * @module
 */

export { canonicalizePath, type PathResult } from "./path.ts";
export {
  canonicalizeHost,
  type HostPattern,
  type HostResult,
  matchHostname,
  matchRoute,
  type RoutePattern,
} from "./match.ts";
export {
  type CapMap,
  type CapRule,
  CapRuleSchema,
  type EmptyListMode,
  parseCapRules,
  type ParsedRule,
  type ParseOptions,
  type ParseResult,
  type RuleIssue,
  type RuleMatcher,
  type RuleRef,
} from "./rules.ts";
export {
  decideL4,
  decideL7,
  type Decision,
  type DecisionCode,
  formatExplanation,
  type L4Request,
  type L7Request,
  listenerGrants,
  unknownCallerDecision,
} from "./decide.ts";
