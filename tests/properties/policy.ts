/**
 * Properties of path canonicalisation and rule decisions (`lib/policy/`):
 * - canonicalisation is idempotent;
 * - a raw request path is decided exactly like its canonical form (and a refused one is a
 *   `bad_request` deny, whatever the rules);
 * - `/p/*` admits exactly `/p` and the paths below it (never `/pq`);
 * - AND inside a rule, OR across rules, an omitted dimension is unrestricted: decisions agree with a
 *   small reference model written here, at L4 and L7, under both readings of an empty list;
 * - parsing any CapMap and deciding any request never throws, and every decision is well formed.
 *
 * @module
 */

import assert from "node:assert/strict";
import fc from "fast-check";
import {
  canonicalizePath,
  type CapMap,
  decideL4,
  decideL7,
  type Decision,
  type EmptyListMode,
  formatExplanation,
  matchRoute,
  parseCapRules,
  type ParsedRule,
} from "../../lib/policy/mod.ts";
import { DEFAULT_CAPABILITY } from "../../lib/config/mod.ts";
import type { Target } from "./mod.ts";

const CAP = DEFAULT_CAPABILITY;

const PROTOTYPE_KEYS = ["valueOf", "toString", "constructor", "__proto__", "hasOwnProperty", "isPrototypeOf"];

/** Parses rules that must all be valid. */
function validRules(values: unknown[], emptyList?: EmptyListMode): ParsedRule[] {
  const parsed = parseCapRules({ [CAP]: values }, { emptyList });
  assert.deepEqual(parsed.malformed, [], "the generated rules should all be valid");
  return parsed.rules;
}

// --- Strings and request paths ---

const codeUnit = fc.integer({ min: 0, max: 0xffff }).map((c) => String.fromCharCode(c)); // lone surrogates too
const anyString = fc.oneof(
  fc.string({ maxLength: 20 }),
  fc.string({ unit: codeUnit, maxLength: 12 }),
  fc.string({ unit: "binary", maxLength: 12 }),
);

const PATH_TOKENS = [
  "/",
  "/",
  "/",
  "/",
  ".",
  "..",
  "%2e",
  "%2E",
  "%2e%2e",
  "a",
  "b",
  "api",
  "apiv2",
  "admin",
  "public",
  "%2f",
  "%2F",
  "%5c",
  "\\",
  "%",
  "%zz",
  "%2",
  ";",
  ";x",
  "%3b",
  "?",
  "#",
  "?a=/..",
  "&",
  " ",
  "é",
  "😀",
  "%41",
  "%61",
  "%7e",
  "%7E",
  "~",
  "%c0%ae",
  "%C3%A9",
  "%c3%a9",
  "%e2%82",
  "%80",
  "%ff",
  "%00",
  "\0",
  "\t",
  "\x7f",
  "%7f",
  "%1f",
  "%20",
  "*",
  ":",
  "@",
  "+",
  "'",
  "[",
  "]",
  "{",
  "|",
  "^",
  "`",
  "<",
  '"',
  "\ud800",
  "\udc00",
  "\u{10ffff}",
];

const pathToken = fc.oneof({ weight: 8, arbitrary: fc.constantFrom(...PATH_TOKENS) }, anyString);

const rawPath = fc.oneof(
  { weight: 6, arbitrary: fc.array(pathToken, { maxLength: 12 }).map((tokens) => `/${tokens.join("")}`) },
  anyString,
  anyString.map((s) => `/${s}`),
);

// --- A tiny reference model of the rule semantics ---

const LISTENERS = ["web", "db", "grpc", "Web"];
const HOST_PATTERNS = [
  "app.example.com",
  "*.example.com",
  "example.com",
  "API.Example.com",
  "*.a.example.com",
  "app.example.com.",
];
const ROUTES = ["/*", "/api/*", "/api", "/public/*", "/a/b", "/api/v1/*", "/%C3%A9/*", "/~u/*"];
const METHODS = ["GET", "post", "HEAD", "DELETE"];

/** Request hosts (Host or SNI) with the canonical host the model compares; `""` is none or invalid. */
const HOSTS: [raw: string | undefined, canonical: string][] = [
  [undefined, ""],
  ["", ""],
  ["app.example.com", "app.example.com"],
  ["APP.Example.COM:8443", "app.example.com"],
  ["app.example.com.", "app.example.com"],
  ["example.com", "example.com"],
  ["Example.com.:443", "example.com"],
  ["api.example.com", "api.example.com"],
  ["a.example.com", "a.example.com"],
  ["x.a.example.com", "x.a.example.com"],
  ["deep.x.a.example.com", "deep.x.a.example.com"],
  ["evil.com", "evil.com"],
  ["app.example.com.evil.com", "app.example.com.evil.com"],
  ["notexample.com", "notexample.com"],
  ["bad host", ""],
  ["app.example.com:abc", ""],
  ["app..example.com", ""],
  ["[::1]:443", "::1"],
];
const PATHS = [
  "/",
  "/api",
  "/api/",
  "/api/v1",
  "/api/v1/",
  "/api/v1/x",
  "/apiv2",
  "/public",
  "/public/x/y",
  "/a/b",
  "/a/b/",
  "/a",
  "/admin",
  "/%C3%A9",
  "/%C3%A9/x",
  "/~u",
];
const REQUEST_METHODS = ["GET", "get", "POST", "HEAD", "PUT", "delete"];

interface ModelRule {
  listeners?: string[];
  hostnames?: string[];
  routes?: string[];
  methods?: string[];
}

const values = (pool: string[]) => fc.array(fc.constantFrom(...pool), { maxLength: 3 });
const modelRule: fc.Arbitrary<ModelRule> = fc.record({
  listeners: values(LISTENERS),
  hostnames: values(HOST_PATTERNS),
  routes: values(ROUTES),
  methods: values(METHODS),
}, { requiredKeys: [] });
const modelRules = fc.array(modelRule, { maxLength: 4 });
const emptyListMode = fc.constantFrom<EmptyListMode>("unrestricted", "nothing");

function hostMatches(pattern: string, host: string): boolean {
  if (host === "") return false;
  let p = pattern.toLowerCase();
  if (p.endsWith(".")) p = p.slice(0, -1);
  if (p.startsWith("*.")) return host.endsWith(p.slice(1)) && host.length > p.length - 1;
  return host === p;
}

function routeMatches(pattern: string, path: string): boolean {
  if (pattern === "/*") return true;
  if (!pattern.endsWith("/*")) return path === pattern;
  const base = pattern.slice(0, -2);
  return path === base || path.startsWith(`${base}/`);
}

/** An omitted dimension is unrestricted; an empty one is unrestricted or matches nothing, by mode. */
function dimension(list: string[] | undefined, mode: EmptyListMode, matches: (value: string) => boolean) {
  if (list === undefined) return true;
  if (list.length === 0) return mode === "unrestricted";
  return list.some(matches);
}

/** Index of the first rule that grants (AND inside a rule, OR across rules), or -1. */
function modelDecide(
  rules: ModelRule[],
  mode: EmptyListMode,
  request: { listener: string; host: string; path?: string; method?: string },
): number {
  return rules.findIndex((rule) =>
    dimension(rule.listeners, mode, (l) => l === request.listener) &&
    dimension(rule.hostnames, mode, (p) => hostMatches(p, request.host)) &&
    // L4 has no path or method: those dimensions are not checked there.
    (request.path === undefined || dimension(rule.routes, mode, (p) => routeMatches(p, request.path!))) &&
    (request.method === undefined ||
      dimension(rule.methods, mode, (m) => m.toUpperCase() === request.method!.toUpperCase()))
  );
}

function assertAgrees(decision: Decision, rules: ModelRule[], want: number): void {
  assert.equal(decision.allow, want >= 0, formatExplanation(decision));
  assert.equal(decision.code, rules.length === 0 ? "no_rules" : want >= 0 ? "allow" : "no_match");
  assert.equal(decision.matched?.index, want >= 0 ? want : undefined, "first matching rule");
}

// --- Arbitrary CapMaps and requests, for "never throws" ---

const strayEntries = fc.array(fc.tuple(fc.constantFrom(...PROTOTYPE_KEYS), fc.anything()), { maxLength: 2 });
const anythingAtAll = fc.anything({
  key: fc.oneof(fc.constantFrom("listeners", "routes", "hostnames", "methods", ...PROTOTYPE_KEYS), anyString),
  withBoxedValues: true,
  withMap: true,
  withSet: true,
  withObjectString: true,
  withNullPrototype: true,
  withBigInt: true,
  withDate: true,
  withTypedArray: true,
  withSparseArray: true,
  withUnicodeString: true,
});
const stringsOr = (item: fc.Arbitrary<string>) =>
  fc.oneof({ weight: 4, arbitrary: fc.array(fc.oneof(item, anyString), { maxLength: 3 }) }, anythingAtAll);
const ruleLike = fc.tuple(
  fc.record({
    listeners: stringsOr(fc.constantFrom(...LISTENERS, "")),
    hostnames: stringsOr(fc.constantFrom(...HOST_PATTERNS, "*", "*.", "a:1")),
    routes: stringsOr(fc.oneof(fc.constantFrom(...ROUTES, "/a/../b", "/x*"), rawPath)),
    methods: stringsOr(fc.constantFrom(...METHODS, "G T", "")),
  }, { requiredKeys: [] }),
  strayEntries,
).map(([rule, stray]) => Object.fromEntries([...Object.entries(rule), ...stray]));
const anyRules = fc.oneof(
  {
    weight: 4,
    arbitrary: fc.array(fc.oneof({ weight: 3, arbitrary: ruleLike }, anythingAtAll), { maxLength: 4 }),
  },
  anythingAtAll,
);
const capName = fc.oneof(fc.constantFrom(CAP, "other/cap", ...PROTOTYPE_KEYS), anyString);
const capMap = fc.oneof(
  fc.constantFrom(null, undefined),
  fc.tuple(anyRules, fc.array(fc.tuple(capName, anyRules), { maxLength: 2 }), fc.boolean()).map(
    ([rules, extra, bare]) => {
      const map = Object.fromEntries([[CAP, rules], ...extra]);
      return bare ? Object.assign(Object.create(null), map) : map;
    },
  ),
) as fc.Arbitrary<CapMap | null | undefined>;
const parseOptions = fc.record({
  capNames: fc.array(capName, { maxLength: 3 }),
  emptyList: emptyListMode,
}, { requiredKeys: [] });
const anyHost = fc.option(fc.oneof(fc.constantFrom(...HOSTS.map(([raw]) => raw ?? "")), anyString), {
  nil: undefined,
});

function assertWellFormed(decision: Decision): void {
  assert.equal(typeof decision.allow, "boolean");
  assert.equal(decision.allow, decision.code === "allow");
  assert.ok(decision.reasons.length > 0 && decision.reasons.every((r) => typeof r === "string" && r !== ""));
  assert.equal(typeof formatExplanation(decision), "string");
}

// --- Prefix routes ---

const segment = fc.oneof(
  fc.constantFrom("api", "v1", "public", "a", "x-y", "~u", "%C3%A9", "a.b", "...", "a;b"),
  fc.stringMatching(/^[a-z0-9._~-]{1,6}$/).filter((s) => s !== "." && s !== ".."),
);
const base = fc.array(segment, { minLength: 1, maxLength: 3 }).map((segments) => `/${segments.join("/")}`);
const SUFFIXES = [
  "",
  "/",
  "x",
  "v2",
  "/x",
  "/x/y",
  "/..",
  "/../x",
  "/./",
  "//x",
  "%2f",
  "/%2e%2e",
  "?q",
  "#f",
  "/.",
  ";x",
  "/x/../..",
  "/x/../../",
  "%41",
  "/%2e%2e/x",
];
const nearBase = (b: string) =>
  fc.oneof(
    {
      weight: 4,
      arbitrary: fc.array(fc.oneof(fc.constantFrom(...SUFFIXES), pathToken), { maxLength: 4 }).map((s) =>
        b + s.join("")
      ),
    },
    fc.nat(b.length).map((n) => b.slice(0, n)),
    rawPath,
  );

/** The policy targets. */
export const PROPERTIES: Target[] = [
  {
    name: "policy/canonicalization_idempotent",
    property: fc.property(rawPath, (raw) => {
      const first = canonicalizePath(raw);
      if (!first.ok) {
        assert.ok(first.reason.length > 0, "a refusal says why");
        return;
      }
      assert.ok(first.path.startsWith("/"), first.path);
      assert.deepEqual(canonicalizePath(first.path), first);
    }),
  },
  {
    name: "policy/raw_path_decided_as_canonical",
    property: fc.property(
      modelRules,
      emptyListMode,
      fc.constantFrom(...LISTENERS),
      fc.constantFrom(...HOSTS),
      fc.constantFrom(...REQUEST_METHODS),
      rawPath,
      (rules, mode, listener, [host], method, raw) => {
        const parsed = validRules(rules, mode);
        const decision = decideL7(parsed, { listener, host, path: raw, method });
        const canonical = canonicalizePath(raw);
        if (!canonical.ok) {
          assert.equal(decision.code, "bad_request");
          assert.deepEqual(decision.reasons, [canonical.reason]);
          return;
        }
        assert.deepEqual(decideL7(parsed, { listener, host, path: canonical.path, method }), decision);
      },
    ),
  },
  {
    name: "policy/prefix_route_admits_exactly_below",
    property: fc.property(base.chain((b) => fc.tuple(fc.constant(b), nearBase(b))), ([b, raw]) => {
      const pattern = `${b}/*`;
      const rules = validRules([{ routes: [pattern] }]);
      const decide = (path: string) => decideL7(rules, { listener: "web", path, method: "GET" }).allow;
      assert.ok(decide(b) && decide(`${b}/`) && decide(`${b}/x`), `${pattern} admits ${b}, ${b}/ and below`);
      assert.ok(!decide(`${b}v2`) && !decide(`${b}-x`), `${pattern} admits no sibling`);
      const canonical = canonicalizePath(raw);
      const want = canonical.ok && (canonical.path === b || canonical.path.startsWith(`${b}/`));
      assert.equal(decide(raw), want, `${pattern} vs ${JSON.stringify(raw)} → ${JSON.stringify(canonical)}`);
      if (canonical.ok) assert.equal(matchRoute(pattern, canonical.path), want, "matchRoute agrees");
    }),
  },
  {
    name: "policy/and_or_unrestricted_model",
    property: fc.property(
      modelRules,
      emptyListMode,
      fc.constantFrom(...LISTENERS, "other"),
      fc.constantFrom(...HOSTS),
      fc.constantFrom(...PATHS),
      fc.constantFrom(...REQUEST_METHODS),
      (rules, mode, listener, [raw, host], path, method) => {
        const parsed = validRules(rules, mode);
        assertAgrees(
          decideL7(parsed, { listener, host: raw, path, method }),
          rules,
          modelDecide(rules, mode, { listener, host, path, method }),
        );
        assertAgrees(
          decideL4(parsed, { listener, sni: raw }),
          rules,
          modelDecide(rules, mode, { listener, host }),
        );
      },
    ),
  },
  {
    name: "policy/decisions_never_throw",
    property: fc.property(
      capMap,
      parseOptions,
      fc.oneof(fc.constantFrom(...LISTENERS), anyString),
      anyHost,
      rawPath,
      fc.oneof(fc.constantFrom(...REQUEST_METHODS), anyString),
      (map, options, listener, host, path, method) => {
        const parsed = parseCapRules(map, options);
        for (const issue of [...parsed.malformed, ...parsed.warnings]) {
          assert.ok(typeof issue.reason === "string" && typeof issue.json === "string");
        }
        const l4 = decideL4(parsed.rules, { listener, sni: host });
        const l7 = decideL7(parsed.rules, { listener, host, path, method });
        assertWellFormed(l4);
        assertWellFormed(l7);
        if (parsed.rules.length === 0) assert.ok(!l4.allow && !l7.allow, "no rules denies");
      },
    ),
  },
];
