/**
 * Cap rules: the JSON schema of one `rajsingh.info/cap/tailvoy` value, and parsing a WhoIs CapMap
 * into rules compiled once per identity (decisions then do only set lookups and string compares).
 *
 * @module
 */

import { z } from "zod";
import {
  compileHostPattern,
  compileRoutePattern,
  type HostPattern,
  methodError,
  type RoutePattern,
} from "./match.ts";
import { DEFAULT_CAPABILITY } from "../config/constants.ts";
import { safeJson } from "./text.ts";

// Element validators report why a pattern could never match, so the rule is reported as
// malformed instead of silently granting less (or, for a typo'd key, more) than intended.
const routePattern = z.string().superRefine((value, ctx) => {
  const compiled = compileRoutePattern(value);
  if (typeof compiled === "string") ctx.addIssue({ code: "custom", message: compiled });
});
const hostnamePattern = z.string().superRefine((value, ctx) => {
  const compiled = compileHostPattern(value);
  if (typeof compiled === "string") ctx.addIssue({ code: "custom", message: compiled });
});
const methodName = z.string().superRefine((value, ctx) => {
  const error = methodError(value);
  if (error) ctx.addIssue({ code: "custom", message: error });
});

/**
 * One tailvoy cap rule. AND within a rule, OR across rules; an omitted dimension is unrestricted.
 * `methods` is ours (the Go tailvoy has no method dimension), compared case-insensitively. Unknown keys
 * are an error: the Go tailvoy (`encoding/json`) ignores them, so a typo such as `"route"` would
 * silently widen a grant.
 */
export const CapRuleSchema = z.object({
  /** Listener names (exact, case-sensitive), as in the config or Envoy discovery. */
  listeners: z.array(z.string().min(1, "listener name must not be empty")).optional(),
  /** Route patterns: `/*`, `/prefix/*` or an exact canonical path. L7 only. */
  routes: z.array(routePattern).optional(),
  /** Hostname patterns: exact or `*.domain`, case-insensitive. Matched against SNI (L4) or Host (L7). */
  hostnames: z.array(hostnamePattern).optional(),
  /** HTTP methods, case-insensitive, e.g. `["GET", "HEAD"]`. L7 only. */
  methods: z.array(methodName).optional(),
}).strict();

/** One tailvoy cap rule, as validated by {@link CapRuleSchema}. */
export type CapRule = z.infer<typeof CapRuleSchema>;

/** A WhoIs `CapMap`: capability name → list of JSON values (one rule each). */
export type CapMap = Readonly<Record<string, readonly unknown[] | null | undefined>>;

/** Where a rule came from: its capability name, its position in that capability's list, its JSON. */
export interface RuleRef {
  /** Capability name the rule was found under. */
  readonly capName: string;
  /** Position in `capMap[capName]`; -1 when the capability value itself was not a list. */
  readonly index: number;
  /** The rule's JSON as received (cut at 2000 characters). */
  readonly json: string;
}

/** A rule that was refused (malformed) or accepted with a caveat (warning). */
export interface RuleIssue extends RuleRef {
  /** Human-readable reason. */
  readonly reason: string;
}

/** Compiled form of one dimension: `undefined` means unrestricted. */
export interface RuleMatcher {
  /** Allowed listener names. */
  readonly listeners?: ReadonlySet<string>;
  /** Hostname patterns, lower-cased. */
  readonly hostnames?: readonly HostPattern[];
  /** Route patterns. */
  readonly routes?: readonly RoutePattern[];
  /** Allowed methods, upper-cased. */
  readonly methods?: ReadonlySet<string>;
  /** Strings for reasons, computed once so decisions do not build them per request. */
  readonly text: {
    /** `rule 3`, or `rule 3 (other/cap)` for a non-default capability name. */
    readonly label: string;
    /** Allow reason: `rule 3: matched {…}`. */
    readonly matched: string;
    /** Caveat added to an L4 allow when the rule restricts routes or methods, which L4 cannot check. */
    readonly l4Caveat?: string;
    /** Each dimension's values as a JSON list. */
    readonly listeners: string;
    readonly hostnames: string;
    readonly routes: string;
    readonly methods: string;
  };
}

/** A valid rule ready for `decideL4`/`decideL7`. */
export interface ParsedRule extends RuleRef {
  /** The rule as validated. */
  readonly rule: CapRule;
  /** A plain copy of the rule's origin, shared by every decision it grants. */
  readonly ref: RuleRef;
  /** Precompiled matchers. */
  readonly matcher: RuleMatcher;
}

/** How a dimension given as an empty list (`"listeners": []`) is read. */
export type EmptyListMode = "unrestricted" | "nothing";

/** Options of {@link parseCapRules}. */
export interface ParseOptions {
  /** Capability names to read, in order (default the one {@link DEFAULT_CAPABILITY}). */
  capNames?: readonly string[];
  /**
   * `"unrestricted"` (default): an empty list is the same as an omitted dimension, exactly as
   * the Go tailvoy (`engine.go` checks `len(values) == 0`), and a warning is reported. `"nothing"`: an
   * empty list matches nothing (fail closed).
   */
  emptyList?: EmptyListMode;
}

/** Result of {@link parseCapRules}. */
export interface ParseResult {
  /** Valid rules, in capability-name order then list order. */
  rules: ParsedRule[];
  /** Rules that grant nothing because they are not valid, with the reason. Report once per identity. */
  malformed: RuleIssue[];
  /** Valid rules with a caveat (an empty list read as unrestricted). Report once per identity. */
  warnings: RuleIssue[];
}

type Dimension = "listeners" | "hostnames" | "routes" | "methods";

function describeIssues(error: z.ZodError): string {
  return error.issues
    .map((issue) => issue.path.length > 0 ? `${issue.path.join(".")}: ${issue.message}` : issue.message)
    .join("; ");
}

function ruleLabel(capName: string, index: number): string {
  return capName === DEFAULT_CAPABILITY ? `rule ${index}` : `rule ${index} (${capName})`;
}

function compile(
  ref: RuleRef,
  rule: CapRule,
  emptyList: EmptyListMode,
  onEmpty: (d: Dimension) => void,
): RuleMatcher {
  // An empty list becomes `undefined` (unrestricted) or an empty matcher (matches nothing).
  const use = <T>(
    d: Dimension,
    values: readonly string[] | undefined,
    build: (v: readonly string[]) => T,
  ) => {
    if (values === undefined) return undefined;
    if (values.length === 0) {
      onEmpty(d);
      if (emptyList === "unrestricted") return undefined;
    }
    return build(values);
  };
  const label = ruleLabel(ref.capName, ref.index);
  const routes = use("routes", rule.routes, (v) => v.map((p) => compileRoutePattern(p) as RoutePattern));
  const methods = use("methods", rule.methods, (v) => new Set(v.map((m) => m.toUpperCase())));
  const skippedAtL4 = [routes && "routes", methods && "methods"].filter(Boolean);
  return {
    listeners: use("listeners", rule.listeners, (v) => new Set(v)),
    hostnames: use("hostnames", rule.hostnames, (v) => v.map((p) => compileHostPattern(p) as HostPattern)),
    routes,
    methods,
    text: {
      label,
      matched: `${label}: matched ${ref.json}`,
      l4Caveat: skippedAtL4.length > 0
        ? `${label}: its ${skippedAtL4.join(" and ")} restriction is not checked at L4 (as in the Go tailvoy)`
        : undefined,
      listeners: JSON.stringify(rule.listeners ?? []),
      hostnames: JSON.stringify(rule.hostnames ?? []),
      routes: JSON.stringify(rule.routes ?? []),
      methods: JSON.stringify(rule.methods?.map((m) => m.toUpperCase()) ?? []),
    },
  };
}

/**
 * Reads the tailvoy rules out of a WhoIs CapMap. Each list element is validated on its own: a
 * malformed one (not an object, wrong types, unknown keys, a pattern that can never match) grants
 * nothing and is returned in `malformed`; the others stay valid. A missing or `null` capability
 * contributes no rules, and no rules at all means every decision denies.
 */
export function parseCapRules(capMap: CapMap | null | undefined, options: ParseOptions = {}): ParseResult {
  const result: ParseResult = { rules: [], malformed: [], warnings: [] };
  if (capMap == null) return result;
  const emptyList = options.emptyList ?? "unrestricted";
  for (const capName of new Set(options.capNames ?? [DEFAULT_CAPABILITY])) {
    if (!Object.hasOwn(capMap, capName)) continue;
    const values = capMap[capName];
    if (values == null) continue; // a capability with no values carries no rules
    if (!Array.isArray(values)) {
      result.malformed.push({
        capName,
        index: -1,
        json: safeJson(values),
        reason: "capability value is not a list of rules",
      });
      continue;
    }
    values.forEach((value: unknown, index: number) => {
      const json = safeJson(value);
      const parsed = CapRuleSchema.safeParse(value);
      if (!parsed.success) {
        result.malformed.push({ capName, index, json, reason: describeIssues(parsed.error) });
        return;
      }
      const ref: RuleRef = { capName, index, json };
      const matcher = compile(ref, parsed.data, emptyList, (d) =>
        result.warnings.push({
          capName,
          index,
          json,
          reason: emptyList === "unrestricted"
            ? `"${d}": [] is treated as unrestricted (as in the Go tailvoy); omit it, or list values`
            : `"${d}": [] matches nothing, so this rule never grants`,
        }));
      result.rules.push({ capName, index, json, rule: parsed.data, ref, matcher });
    });
  }
  return result;
}
