/**
 * Properties of configuration parsing (`lib/config/` `parseConfig(text, { env })`):
 * - only {@link ConfigError} is ever thrown, for arbitrary YAML-ish text and for structured random
 *   configs (schema keys with plausible or random values, stray keys such as `valueOf`,
 *   `constructor`, `__proto__`, random environments);
 * - every issue has a non-empty message and is shown on its own line, starting with the path it is
 *   about (or `config`/the source for the whole file), with no `undefined`, `[object …]` or
 *   `[native code]` leaking in.
 *
 * @module
 */

import assert from "node:assert/strict";
import fc from "fast-check";
import { ConfigError, formatPath, parseConfig, type ParseConfigOptions } from "../../lib/config/mod.ts";
import type { Target } from "./mod.ts";

// --- A YAML tree kept as key/value pairs, so that any key (even "__proto__") is just a key ---

type Scalar = null | boolean | number | string;
type Node = Scalar | Node[] | { map: [string, Node][] };

const isMap = (node: Node): node is { map: [string, Node][] } =>
  typeof node === "object" && node !== null && !Array.isArray(node);

const PLAIN = /^[A-Za-z_][A-Za-z0-9_-]*$/;
const RESERVED = /^(?:true|false|null|yes|no|on|off|y|n)$/i;

function scalarText(value: Scalar): string {
  if (value === null) return "null";
  if (typeof value === "number") {
    if (Number.isNaN(value)) return ".nan";
    if (!Number.isFinite(value)) return value > 0 ? ".inf" : "-.inf";
    return String(value);
  }
  if (typeof value === "string" && (!PLAIN.test(value) || RESERVED.test(value))) return JSON.stringify(value);
  return String(value);
}

/** Block-style YAML; nested collections in a sequence go on their own lines under `-`. */
function blockYaml(node: Node, indent = 0): string {
  const pad = " ".repeat(indent);
  const nested = (child: Node) =>
    isMap(child)
      ? (child.map.length === 0 ? " {}" : `\n${blockYaml(child, indent + 2)}`)
      : Array.isArray(child)
      ? (child.length === 0 ? " []" : `\n${blockYaml(child, indent + 2)}`)
      : ` ${scalarText(child)}`;
  if (isMap(node)) {
    return node.map.map(([key, value]) => `${pad}${scalarText(key)}:${nested(value)}`).join("\n");
  }
  if (Array.isArray(node)) return node.map((item) => `${pad}-${nested(item)}`).join("\n");
  return `${pad}${scalarText(node)}`;
}

/** Flow-style YAML (JSON-like, plain keys where possible). */
function flowYaml(node: Node): string {
  if (isMap(node)) return `{${node.map.map(([k, v]) => `${scalarText(k)}: ${flowYaml(v)}`).join(", ")}}`;
  if (Array.isArray(node)) return `[${node.map(flowYaml).join(", ")}]`;
  return scalarText(node);
}

// --- Structured configs: schema keys with plausible or random values, plus stray keys ---

const PROTOTYPE_KEYS = [
  "valueOf",
  "toString",
  "constructor",
  "__proto__",
  "hasOwnProperty",
  "isPrototypeOf",
  "propertyIsEnumerable",
  "toLocaleString",
  "__defineGetter__",
  "__lookupGetter__",
];

const STRINGS = [
  "",
  " ",
  "${VAR}",
  "${valueOf}",
  "${constructor}",
  "${__proto__}",
  "$${VAR}",
  "${",
  "${}",
  "pre${VAR}post",
  "${VAR}${BACKEND}",
  "127.0.0.1:8080",
  "[::1]:80",
  "::1:80",
  "localhost:0",
  ":9002",
  "http://127.0.0.1:19000",
  "*.example.com",
  "app.example.com",
  "/api/*",
  "tag:gw",
  "1s",
  "500ms",
  "0s",
  "-1s",
  ".*",
  "[",
  "(?<x>a)",
  "é",
  "\u0000",
  ...PROTOTYPE_KEYS,
];

const scalar: fc.Arbitrary<Scalar> = fc.oneof(
  fc.constant(null),
  fc.boolean(),
  fc.integer({ min: -100_000, max: 100_000 }),
  fc.double(),
  fc.constantFrom(...STRINGS),
  fc.string({ maxLength: 10 }),
);

const strayKey = fc.oneof(
  { weight: 3, arbitrary: fc.constantFrom(...PROTOTYPE_KEYS) },
  fc.constantFrom("Listeners", "port ", "", "0", "true", "null", "a b", "é", "-", "<<"),
  fc.string({ maxLength: 8 }),
);

const { node: anyNode } = fc.letrec<{ node: Node }>((tie) => ({
  node: fc.oneof(
    { depthSize: "small", withCrossShrink: true },
    scalar,
    fc.array(tie("node"), { maxLength: 3 }),
    // Unique keys: a duplicate is a YAML syntax error, which would stop parsing before the schema.
    fc.uniqueArray(fc.tuple(strayKey, tie("node")), { maxLength: 3, selector: ([k]) => k }).map((map) => ({
      map,
    })),
  ),
}));

const NAMES = ["web", "db", "dns", "tls", "grpc", ...PROTOTYPE_KEYS];
const DURATIONS = ["1s", "500ms", "1h30m", "0s", "0", "5", "-1s", "1x"];
const TIMEOUTS = ["whois", "whoisCacheTtl", "dial", "tlsHello", "drain", "recheck", "unadvertiseGrace"];

/**
 * Random configs as YAML text (block or flow style). Clean ones keep to the schema's keys, with
 * required keys present and mostly valid values, so that some parse and the cross-field rules see
 * near-valid input; noisy ones also get stray keys and random values anywhere.
 */
function configText(noisy: boolean): fc.Arbitrary<string> {
  const value = (plausible: fc.Arbitrary<Node>) =>
    noisy ? fc.oneof({ weight: 5, arbitrary: plausible }, anyNode) : plausible;
  // The first of `values` is valid; the others are mistakes worth making.
  const text = (...values: string[]) =>
    fc.oneof(
      { weight: noisy ? 4 : 12, arbitrary: fc.constant(values[0]) },
      { weight: 2, arbitrary: fc.constantFrom(...values) },
      ...noisy ? [scalar] : [],
    );
  const listOf = (item: fc.Arbitrary<Node>) => fc.array(item, { maxLength: 3 });
  const name = noisy
    ? fc.oneof({ weight: 4, arbitrary: fc.constantFrom(...NAMES) }, strayKey)
    : fc.constantFrom(...NAMES);

  /** Some of the `known` keys (all of `required` when clean), plus (when noisy) a stray key or two. */
  const mapping = (
    known: Record<string, fc.Arbitrary<Node>>,
    required: string[] = [],
  ): fc.Arbitrary<Node> => {
    const entries = Object.entries(known).map(([key, v]) => {
      const entry = value(v).map((node): [string, Node] => [key, node]);
      return !noisy && required.includes(key) ? entry : fc.option(entry, { freq: 2 });
    });
    const strays = noisy ? fc.array(fc.tuple(strayKey, anyNode), { maxLength: 2 }) : fc.constant([]);
    return fc.tuple(fc.tuple(...entries), strays).map(([picked, stray]) => {
      const seen = new Set<string>();
      const map = [...picked.filter((e) => e !== null), ...stray].filter(([k]) =>
        !seen.has(k) && !!seen.add(k)
      );
      return { map };
    });
  };
  /** A mapping from names (listener, Service, path) to `item`. */
  const named = (names: fc.Arbitrary<string>, item: fc.Arbitrary<Node>): fc.Arbitrary<Node> =>
    fc.uniqueArray(fc.tuple(names, item), { maxLength: 3, selector: ([k]) => k }).map((map) => ({ map }));

  const backend = text(
    "127.0.0.1:8080",
    "[::1]:8080",
    "db:5432",
    "${BACKEND}",
    "host",
    "http://x:1",
    "[x]:1",
  );
  const duration = noisy
    ? fc.oneof(text(...DURATIONS), fc.integer({ min: -2, max: 10 }))
    : text(...DURATIONS);
  const flag = noisy ? fc.oneof(fc.boolean(), scalar) : fc.boolean();
  const tls = mapping({ cert: text("cert.pem", ""), key: text("key.pem", "") }, ["cert", "key"]);
  const route = mapping({
    hostname: text("app.example.com", "*.example.com", "*", "a..b", "-x", "APP.example.com"),
    paths: named(
      fc.oneof(fc.constantFrom("/*", "/api/*", "/api", "api", "/a/*/b", "/%zz", "/constructor"), name),
      backend,
    ),
    backend,
    tls,
  });
  const listener = mapping({
    port: fc.oneof(
      { weight: 3, arbitrary: fc.integer({ min: 1, max: 65535 }) },
      fc.constantFrom<Scalar>(80, 443, 0, -1, 65535, 65536, 1.5, "80"),
    ),
    protocol: fc.oneof(
      { weight: 4, arbitrary: fc.constantFrom("tcp", "udp", "http", "https", "grpc", "tls") },
      text("http", "HTTP", "ftp"),
    ),
    backend,
    routes: listOf(route),
    tls,
    acceptAppCaps: flag,
    shadow: flag,
    ingress: text("serve", "direct", "other"),
  }, ["port", "protocol", "backend"]);
  const tailscale = mapping({
    serviceMappings: named(
      fc.oneof(fc.constantFrom("gw", "svc:gw", "Bad_Name"), name),
      listOf(fc.oneof(fc.constantFrom("web", ".*", "[", "db|dns"), name)),
    ),
    tags: listOf(text("tag:gw", "gw", "tag:", "tag:valueOf")),
    serviceTags: listOf(text("tag:gw", "tag:x")),
    hostname: text("gw", "-bad-", "a.b"),
    // Removed by tailvoy, so always an error: noisy configs only.
    ...noisy ? { service: text("web") } : {},
  });
  const discovery = mapping({
    envoyAdmin: text("http://127.0.0.1:19000", "ftp://x", "not a url"),
    envoyAddress: text("127.0.0.1", "::1", "a b"),
    pollInterval: duration,
    proxyProtocol: text("v2", "v1", ""),
    listenerFilter: text(".*", "[", "(?<x>a)", "a{1000}"),
    healthPolicy: text("any", "all", "some", ""),
    unhealthyThreshold: fc.constantFrom<Scalar>(3, 0, 1, -1, 1.5),
  }, ["envoyAdmin", "envoyAddress"]);
  const tailvoy = mapping({
    localApiSocket: text("/run/ts.sock", ""),
    capabilities: listOf(text("rajsingh.info/cap/tailvoy", "x", "")),
    ingress: text("direct", "serve", "x"),
    envoyBinary: text("envoy", ""),
    adminAddress: text("127.0.0.1:9002", ":0", "9002"),
    timeouts: mapping(Object.fromEntries(TIMEOUTS.map((k) => [k, duration]))),
    controlUrl: text("https://hs.example.com", "hs"),
    apiBaseUrl: text("https://api.tailscale.com", "x"),
    decisionLog: mapping({ allows: flag }),
  });
  // listeners and discovery exclude each other: clean configs pick one, noisy ones may have both.
  const config = noisy
    ? mapping({ tailscale, listeners: named(name, listener), discovery, tailvoy })
    : fc.oneof(
      {
        weight: 3,
        arbitrary: mapping({ tailscale, listeners: named(name, listener), tailvoy }, ["listeners"]),
      },
      mapping({ tailscale, discovery, tailvoy }, ["discovery"]),
    );
  return fc.tuple(config, fc.boolean()).map(([tree, flow]) => flow ? flowYaml(tree) : blockYaml(tree));
}

const structuredText = fc.oneof(configText(true), configText(false));

// --- YAML-ish text: token soup, edited structured configs, and raw strings ---

const YAML_TOKENS = [
  "\n",
  "\n",
  "\n  ",
  "\n    ",
  "  ",
  "- ",
  ": ",
  ":",
  "? ",
  ", ",
  "{",
  "}",
  "[",
  "]",
  "'",
  '"',
  "#",
  "&a ",
  "*a",
  "<<: *a",
  "<<: ",
  "!!str ",
  "!!binary ",
  "!!set ",
  "!!omap ",
  "!!timestamp ",
  "!local ",
  "|",
  ">-",
  "---\n",
  "...\n",
  "%YAML 1.2\n",
  "\t",
  "null",
  "~",
  "true",
  "0x1F",
  "1e3",
  "-1",
  ".inf",
  ".nan",
  "tailscale",
  "serviceMappings",
  "listeners",
  "web",
  "port",
  "80",
  "protocol",
  "http",
  "tcp",
  "tls",
  "backend",
  "routes",
  "paths",
  "hostname",
  "discovery",
  "tailvoy",
  "timeouts",
  ...STRINGS.filter((s) => s !== ""),
];

const tokenSoup = fc.array(
  fc.oneof({ weight: 6, arbitrary: fc.constantFrom(...YAML_TOKENS) }, fc.string({ maxLength: 3 })),
  { maxLength: 40 },
).map((tokens) => tokens.join(""));

const editedText = fc.tuple(
  structuredText,
  fc.array(fc.tuple(fc.nat(), fc.nat(3), fc.constantFrom(...YAML_TOKENS)), { minLength: 1, maxLength: 4 }),
).map(([source, edits]) => {
  let out = source;
  for (const [at, remove, insert] of edits) {
    const i = at % (out.length + 1);
    out = out.slice(0, i) + insert + out.slice(i + remove);
  }
  return out;
});

const yamlishText = fc.oneof(
  tokenSoup,
  editedText,
  fc.string({ maxLength: 60 }),
  fc.string({ unit: "binary" }),
);

const env = fc.tuple(
  fc.array(
    fc.tuple(
      fc.oneof(fc.constantFrom("VAR", "BACKEND", "HOME", ...PROTOTYPE_KEYS), fc.string({ maxLength: 6 })),
      fc.oneof(
        fc.constantFrom("127.0.0.1:8080", "${VAR}", "a: b", "[", "\n", "80"),
        fc.string({ maxLength: 10 }),
      ),
    ),
    { maxLength: 4 },
  ),
  fc.boolean(),
).map(([entries, bare]): Record<string, string> =>
  // Object.fromEntries defines "__proto__" as an own key; a null-prototype object has no inherited ones.
  bare ? Object.assign(Object.create(null), Object.fromEntries(entries)) : Object.fromEntries(entries)
);

const options: fc.Arbitrary<ParseConfigOptions> = fc.record({
  env,
  source: fc.option(fc.constantFrom("fuzz.yaml", "dir/config.yaml"), { nil: undefined }),
});

// --- The checks ---

/** Parses; anything thrown but a ConfigError fails. Returns the ConfigError, if any. */
function parseOrConfigError(input: string, opts: ParseConfigOptions): ConfigError | undefined {
  try {
    parseConfig(input, opts);
    return undefined;
  } catch (error) {
    if (error instanceof ConfigError) return error;
    assert.fail(`expected only ConfigError, got ${error instanceof Error ? error.stack : String(error)}`);
  }
}

// Text that only shows up when a value was looked up where there was none, or on Object.prototype.
const LEAKS = [/\bundefined\b/, /\[object \w+\]/, /\[native code\]/];

function assertWellFormed(error: ConfigError, input: string, opts: ParseConfigOptions): void {
  const inputs = `${input}\n${JSON.stringify(Object.entries(opts.env ?? {}))}`;
  assert.ok(error.issues.length > 0, "a ConfigError with no issues");
  const lines = error.message.split("\n");
  assert.equal(lines.length, error.issues.length, `one issue per line:\n${error.message}`);
  error.issues.forEach((issue, i) => {
    const what = `issue ${i} ${JSON.stringify(issue)}`;
    assert.ok(
      Array.isArray(issue.path) &&
        issue.path.every((s) => typeof s === "string" || (Number.isInteger(s) && s >= 0)),
      `${what}: path must be strings and indices`,
    );
    assert.ok(typeof issue.message === "string" && issue.message.trim() !== "", `${what}: empty message`);
    if (issue.hint !== undefined) {
      assert.ok(typeof issue.hint === "string" && issue.hint.trim() !== "", `${what}: empty hint`);
    }
    for (const part of [issue.message, issue.hint ?? ""]) {
      for (const leak of LEAKS) {
        if (leak.test(part) && !leak.test(inputs)) assert.fail(`${what}: ${leak} in ${JSON.stringify(part)}`);
      }
    }
    for (const n of [issue.line, issue.column]) {
      assert.ok(n === undefined || (Number.isInteger(n) && n >= 1), `${what}: position ${n}`);
    }
    const subject = issue.path.length > 0 ? formatPath(issue.path) : issue.source ?? "config";
    assert.ok(subject.trim() !== "", `${what}: no subject`);
    assert.ok(
      lines[i].startsWith(`${subject}: `),
      `${what}: line ${JSON.stringify(lines[i])} does not name its path`,
    );
  });
}

/** The configuration targets. */
export const PROPERTIES: Target[] = [
  {
    name: "config/text_only_config_error",
    property: fc.property(yamlishText, options, (input, opts) => {
      parseOrConfigError(input, opts);
    }),
  },
  {
    name: "config/structured_only_config_error",
    property: fc.property(structuredText, options, (input, opts) => {
      parseOrConfigError(input, opts);
    }),
  },
  {
    name: "config/error_messages_name_a_path",
    property: fc.property(fc.oneof(structuredText, yamlishText), options, (input, opts) => {
      const error = parseOrConfigError(input, opts);
      if (error) assertWellFormed(error, input, opts);
    }),
  },
];
