// Tests for lib/policy: tailvoy's README tables and multi-team matrix, rule semantics, malformed
// rules, explanations, and a no-bypass path/host canonicalisation matrix.

import assert from "node:assert/strict";
import {
  canonicalizeHost,
  canonicalizePath,
  type CapMap,
  decideL4,
  decideL7,
  type Decision,
  formatExplanation,
  matchHostname,
  matchRoute,
  parseCapRules,
  type ParsedRule,
} from "../../lib/policy/mod.ts";
import { DEFAULT_CAPABILITY } from "../../lib/config/mod.ts";

const CAP = DEFAULT_CAPABILITY;

/** Parses rules that must all be valid. */
function rules(...values: unknown[]): ParsedRule[] {
  const parsed = parseCapRules({ [CAP]: values });
  assert.deepEqual(parsed.malformed, [], "test rules should be valid");
  return parsed.rules;
}

function get(
  r: readonly ParsedRule[],
  path: string,
  listener = "web",
  host = "app.example.com",
  method = "GET",
) {
  return decideL7(r, { listener, host, path, method });
}

// ---------------------------------------------------------------------------------------------
// README tables
// ---------------------------------------------------------------------------------------------

Deno.test("README route table: every row", async (t) => {
  const table: [pattern: string, path: string, want: boolean][] = [
    ["/*", "/", true],
    ["/*", "/anything/at/all", true],
    ["/api/*", "/api/users", true],
    ["/api/*", "/api/v1/foo", true],
    ["/api/*", "/apiv2", false],
    ["/health", "/health", true],
    ["/health", "/health/", false],
    ["/health", "/healthz", false],
    ["/grpc.health.v1.Health/*", "/grpc.health.v1.Health/Check", true],
    ["/grpc.health.v1.Health/*", "/grpc.other.Service/Method", false],
  ];
  for (const [pattern, path, want] of table) {
    await t.step(`${pattern} ${want ? "matches" : "does not match"} ${path}`, () => {
      assert.equal(matchRoute(pattern, path), want);
      assert.equal(get(rules({ routes: [pattern] }), path).allow, want);
    });
  }
});

Deno.test("README hostname table: every row", async (t) => {
  const table: [pattern: string, host: string, want: boolean][] = [
    ["app.example.com", "app.example.com", true],
    ["app.example.com", "other.example.com", false],
    ["*.example.com", "app.example.com", true],
    ["*.example.com", "sub.app.example.com", true],
    ["*.example.com", "example.com", false],
  ];
  for (const [pattern, host, want] of table) {
    await t.step(`${pattern} ${want ? "matches" : "does not match"} ${host}`, () => {
      const r = rules({ hostnames: [pattern] });
      assert.equal(matchHostname(pattern, host), want);
      assert.equal(decideL4(r, { listener: "tls", sni: host }).allow, want, "L4 (SNI)");
      assert.equal(get(r, "/", "web", host).allow, want, "L7 (Host)");
    });
  }
});

// ---------------------------------------------------------------------------------------------
// README multi-team example: grants -> per-destination cap maps -> the access matrix
// ---------------------------------------------------------------------------------------------

interface Grant {
  src: string[];
  dst: string[];
  app?: Record<string, unknown[]>;
}

const MULTI_TEAM_GRANTS: Grant[] = [
  // Frontend: HTTP + gRPC health only
  {
    src: ["tag:frontend"],
    dst: ["svc:http", "svc:grpc"],
    app: { [CAP]: [{ routes: ["/api/*", "/grpc.health.v1.Health/*"] }] },
  },
  // DBA: postgres only (no app block in the README)
  { src: ["tag:dba"], dst: ["svc:postgres"] },
  // Engineers: TLS to app.example.com only
  { src: ["group:engineers"], dst: ["svc:tls"], app: { [CAP]: [{ hostnames: ["app.example.com"] }] } },
  // Ops: all services
  { src: ["group:ops"], dst: ["svc:http", "svc:grpc", "svc:postgres", "svc:tls"], app: { [CAP]: [{}] } },
];

/**
 * The CapMap a service-scoped WhoIs (`whois?addr=…&svc_name=…`) returns for a caller: the app caps
 * of every grant whose src covers the caller and whose dst is the service, concatenated per cap
 * name. `null` when no grant reaches the service (the packet filter drops the connection).
 */
function capMapFor(grants: Grant[], memberships: string[], svc: string): CapMap | null {
  const matching = grants.filter((g) => g.src.some((s) => memberships.includes(s)) && g.dst.includes(svc));
  if (matching.length === 0) return null;
  const caps: Record<string, unknown[]> = {};
  for (const g of matching) {
    for (const [name, values] of Object.entries(g.app ?? {})) (caps[name] ??= []).push(...values);
  }
  return caps;
}

type Column = "http" | "grpc" | "postgres" | "tls";

function decideColumn(grants: Grant[], memberships: string[], column: Column): Decision {
  const { rules: r, malformed } = parseCapRules(capMapFor(grants, memberships, `svc:${column}`));
  assert.deepEqual(malformed, []);
  switch (column) {
    case "http": // L7 listener "http": HTTP /api/users
      return decideL7(r, {
        listener: "http",
        host: "http.tail1234.ts.net",
        path: "/api/users",
        method: "GET",
      });
    case "grpc": // L7 listener "grpc": gRPC Health/Check
      return decideL7(r, {
        listener: "grpc",
        host: "grpc.tail1234.ts.net:50051",
        path: "/grpc.health.v1.Health/Check",
        method: "POST",
      });
    case "postgres": // L4 listener "postgres": plain TCP, no SNI
      return decideL4(r, { listener: "postgres" });
    case "tls": // L4 listener "tls": TLS passthrough with SNI app.example.com
      return decideL4(r, { listener: "tls", sni: "app.example.com" });
  }
}

Deno.test("README multi-team matrix: every cell", async (t) => {
  // true = 200 / OK / allowed; false = conn reset (or 403).
  const matrix: [caller: string, memberships: string[], cells: Record<Column, boolean>][] = [
    ["tag:frontend", ["tag:frontend"], { http: true, grpc: true, postgres: false, tls: false }],
    // README says tag:dba is "allowed" on postgres, but its grant carries no tailvoy cap and
    // tailvoy's HasAccess denies an identity with no rules (engine.go:21-23). We deny too.
    ["tag:dba", ["tag:dba"], { http: false, grpc: false, postgres: false, tls: false }],
    ["group:engineers", ["group:engineers"], { http: false, grpc: false, postgres: false, tls: true }],
    ["group:ops", ["group:ops"], { http: true, grpc: true, postgres: true, tls: true }],
    // "if alice is in both tag:frontend and group:engineers, she gets HTTP + gRPC + TLS access"
    ["alice", ["tag:frontend", "group:engineers"], { http: true, grpc: true, postgres: false, tls: true }],
  ];
  for (const [caller, memberships, cells] of matrix) {
    for (const column of ["http", "grpc", "postgres", "tls"] as const) {
      await t.step(`${caller} × ${column} → ${cells[column] ? "allow" : "deny"}`, () => {
        const d = decideColumn(MULTI_TEAM_GRANTS, memberships, column);
        assert.equal(d.allow, cells[column], formatExplanation(d));
      });
    }
  }
});

Deno.test("README multi-team: the DBA cell becomes 'allowed' once its grant carries a tailvoy cap", () => {
  const grants = MULTI_TEAM_GRANTS.map((g) =>
    g.src.includes("tag:dba") ? { ...g, app: { [CAP]: [{ listeners: ["postgres"] }] } } : g
  );
  assert.equal(decideColumn(grants, ["tag:dba"], "postgres").allow, true);
  assert.equal(decideColumn(grants, ["tag:dba"], "tls").allow, false);
  const d = decideColumn(MULTI_TEAM_GRANTS, ["tag:dba"], "postgres");
  assert.equal(d.code, "no_rules");
});

Deno.test("README multi-team: why each deny happened", () => {
  // Engineers' hostname rule against the wrong SNI, and against no SNI at all.
  const r = parseCapRules(capMapFor(MULTI_TEAM_GRANTS, ["group:engineers"], "svc:tls")).rules;
  const wrong = decideL4(r, { listener: "tls", sni: "admin.example.com" });
  assert.equal(wrong.allow, false);
  assert.deepEqual(wrong.reasons, ['rule 0: SNI "admin.example.com" matches none of ["app.example.com"]']);
  const none = decideL4(r, { listener: "tls" });
  assert.deepEqual(none.reasons, ['rule 0: no SNI, but rule restricts hostnames to ["app.example.com"]']);
  // Frontend on an HTTP path outside its routes.
  const f = parseCapRules(capMapFor(MULTI_TEAM_GRANTS, ["tag:frontend"], "svc:http")).rules;
  const admin = get(f, "/admin", "http");
  assert.deepEqual(admin.reasons, [
    'rule 0: path "/admin" matches none of ["/api/*","/grpc.health.v1.Health/*"]',
  ]);
});

// ---------------------------------------------------------------------------------------------
// Rule semantics
// ---------------------------------------------------------------------------------------------

Deno.test("AND within a rule, OR across rules, omitted dimensions unrestricted", async (t) => {
  const and = rules({
    listeners: ["web"],
    hostnames: ["app.example.com"],
    routes: ["/api/*"],
    methods: ["GET"],
  });
  const or = rules({ listeners: ["web"], routes: ["/api/*"] }, { listeners: ["grpc"], routes: ["/rpc/*"] });
  const table: [name: string, r: ParsedRule[], req: Parameters<typeof decideL7>[1], want: boolean][] = [
    [
      "all four match",
      and,
      { listener: "web", host: "app.example.com", path: "/api/v1", method: "GET" },
      true,
    ],
    [
      "listener differs",
      and,
      { listener: "grpc", host: "app.example.com", path: "/api/v1", method: "GET" },
      false,
    ],
    ["host differs", and, { listener: "web", host: "x.example.com", path: "/api/v1", method: "GET" }, false],
    ["path differs", and, { listener: "web", host: "app.example.com", path: "/admin", method: "GET" }, false],
    [
      "method differs",
      and,
      { listener: "web", host: "app.example.com", path: "/api/v1", method: "POST" },
      false,
    ],
    ["first rule", or, { listener: "web", path: "/api/v1", method: "GET" }, true],
    ["second rule", or, { listener: "grpc", path: "/rpc/m", method: "POST" }, true],
    ["dimensions mixed across rules", or, { listener: "web", path: "/rpc/m", method: "GET" }, false],
    ["listener-only rule, any path", rules({ listeners: ["web"] }), {
      listener: "web",
      path: "/x/y",
      method: "DELETE",
    }, true],
    ["routes-only rule, any listener and host", rules({ routes: ["/api/*"] }), {
      listener: "anything",
      host: "z.example.org",
      path: "/api",
      method: "GET",
    }, true],
    ["{} allows everything", rules({}), { listener: "x", host: "y.z", path: "/a/b", method: "PATCH" }, true],
    ["{} allows with no host", rules({}), { listener: "x", path: "/", method: "GET" }, true],
    ["no rules deny", [], { listener: "web", path: "/", method: "GET" }, false],
  ];
  for (const [name, r, req, want] of table) {
    await t.step(name, () => assert.equal(decideL7(r, req).allow, want));
  }
});

Deno.test("L4: listener + SNI only; routes and methods are not checked (as in the Go tailvoy)", async (t) => {
  const table: [name: string, r: ParsedRule[], listener: string, sni: string | undefined, want: boolean][] = [
    ["{} with no SNI", rules({}), "tcp", undefined, true],
    ["listener match", rules({ listeners: ["https"] }), "https", "", true],
    ["listener mismatch", rules({ listeners: ["https"] }), "http", "", false],
    ["hostname exact", rules({ hostnames: ["app.example.com"] }), "tls", "app.example.com", true],
    [
      "hostname case and trailing dot",
      rules({ hostnames: ["app.example.com"] }),
      "tls",
      "APP.Example.com.",
      true,
    ],
    ["hostname mismatch", rules({ hostnames: ["app.example.com"] }), "tls", "other.example.com", false],
    ["hostname rule, plain TCP (no SNI)", rules({ hostnames: ["app.example.com"] }), "tcp", undefined, false],
    ["hostname rule, empty SNI", rules({ hostnames: ["app.example.com"] }), "tcp", "", false],
    ["routes-only rule passes L4", rules({ routes: ["/api/*"] }), "postgres", undefined, true],
    ["methods-only rule passes L4", rules({ methods: ["GET"] }), "postgres", undefined, true],
    [
      "routes + listener: listener still checked",
      rules({ routes: ["/a"], listeners: ["web"] }),
      "db",
      "",
      false,
    ],
    ["no rules", [], "tcp", undefined, false],
  ];
  for (const [name, r, listener, sni, want] of table) {
    await t.step(name, () => assert.equal(decideL4(r, { listener, sni }).allow, want));
  }
  await t.step("the L4 caveat is reported", () => {
    const d = decideL4(rules({ routes: ["/api/*"], methods: ["GET"] }), { listener: "postgres" });
    assert.deepEqual(d.reasons, [
      'rule 0: matched {"routes":["/api/*"],"methods":["GET"]}',
      "rule 0: its routes and methods restriction is not checked at L4 (as in the Go tailvoy)",
    ]);
  });
});

Deno.test("methods: case-insensitive, L7 only", async (t) => {
  const r = rules({ methods: ["GET", "head"] });
  const table: [method: string, want: boolean][] = [
    ["GET", true],
    ["get", true],
    ["HEAD", true],
    ["Head", true],
    ["POST", false],
    ["", false],
    ["GET POST", false],
  ];
  for (const [method, want] of table) {
    await t.step(`${JSON.stringify(method)} → ${want}`, () => {
      assert.equal(decideL7(r, { listener: "web", path: "/", method }).allow, want);
    });
  }
  await t.step("reason names the methods", () => {
    const d = decideL7(r, { listener: "web", path: "/", method: "post" });
    assert.equal(d.method, "POST");
    assert.deepEqual(d.reasons, ['rule 0: method "POST" not in ["GET","HEAD"]']);
  });
});

Deno.test("hostname patterns: case, trailing dot, port, wildcard depth and apex", async (t) => {
  const table: [pattern: string, host: string, want: boolean][] = [
    ["api.example.com", "API.Example.COM.", true],
    ["api.example.com", "api.example.com:443", true],
    ["api.example.com", "API.EXAMPLE.COM.:8443", true],
    ["API.Example.com.", "api.example.com", true], // patterns are normalised too
    ["*.example.com", "a.b.c.example.com", true],
    ["*.example.com", "example.com", false],
    ["*.example.com", "EXAMPLE.COM.", false],
    ["*.example.com", "notexample.com", false],
    ["*.example.com", "example.com.evil.org", false],
    ["*.com", "example.com", true],
    ["*.com", "com", false],
    ["fd7a::1", "[fd7a::1]:80", true],
    ["[fd7a::1]", "[FD7A::1]", true],
    ["100.64.0.1", "100.64.0.1:80", true],
    ["app.example.com", "", false],
    ["app.example.com", "app.example.com@evil.org", false],
    ["app.example.com", "app.example.com/x", false],
    ["app.example.com", "app..example.com", false],
  ];
  for (const [pattern, host, want] of table) {
    await t.step(`${pattern} vs ${JSON.stringify(host)} → ${want}`, () => {
      assert.equal(matchHostname(pattern, host), want);
      assert.equal(get(rules({ hostnames: [pattern] }), "/", "web", host).allow, want);
    });
  }
});

Deno.test("canonicalizeHost", async (t) => {
  const table: [raw: string, want: string | null][] = [
    ["API.Example.COM.", "api.example.com"],
    ["api.example.com:443", "api.example.com"],
    ["api.example.com.:443", "api.example.com"],
    ["api.example.com:", "api.example.com"],
    ["[fd7a::1]:80", "fd7a::1"],
    ["[FD7A:115C:A1E0::1]", "fd7a:115c:a1e0::1"],
    ["fd7a::1", "fd7a::1"],
    ["100.64.0.1:8080", "100.64.0.1"],
    ["", ""],
    ["a b", null],
    [":443", null],
    ["app.example.com:https", null],
    ["app.example.com:123456", null],
    ["a..b", null],
    ["x.com..", null],
    ["evil@x.com", null],
    ["[fd7a::1", null],
    ["[fd7a::1]x", null],
    ["exämple.com", null],
    ["a\u0000.com", null],
  ];
  for (const [raw, want] of table) {
    await t.step(`${JSON.stringify(raw)} → ${want ?? "invalid"}`, () => {
      const h = canonicalizeHost(raw);
      if (want === null) assert.equal(h.ok, false);
      else assert.deepEqual(h, { ok: true, host: want });
    });
  }
  await t.step("an invalid Host fails only hostname-restricted rules", () => {
    const d = get(rules({ hostnames: ["x.com"] }, { listeners: ["other"] }), "/", "web", "x.com@evil");
    assert.equal(d.allow, false);
    assert.match(
      d.reasons[0],
      /^rule 0: host "x.com@evil" is not a valid hostname; rule restricts hostnames/,
    );
    assert.equal(get(rules({}), "/", "web", "x.com@evil").allow, true);
  });
});

// ---------------------------------------------------------------------------------------------
// tailvoy's engine_test.go matchPath tables (same string semantics), and where decisions differ
// ---------------------------------------------------------------------------------------------

Deno.test("matchRoute: tailvoy TestMatchPath + TestMatchPath_EdgeCases", async (t) => {
  const table: [pattern: string, path: string, want: boolean][] = [
    ["/*", "/", true],
    ["/*", "/foo", true],
    ["/*", "/foo/bar", true],
    ["/admin/*", "/admin/", true],
    ["/admin/*", "/admin/settings", true],
    ["/admin/*", "/admin/deep/nested", true],
    ["/admin/*", "/admin", true],
    ["/admin/*", "/admins", false],
    ["/admin/*", "/other", false],
    ["/api/*", "/api/v1", true],
    ["/api/*", "/api/", true],
    ["/api/*", "/api", true],
    ["/api/*", "/apiary", false],
    ["/health", "/health", true],
    ["/health", "/health/", false],
    ["/health", "/healthz", false],
    ["/health", "/", false],
    ["/", "/", true],
    ["/", "/foo", false],
    ["/", "", false],
    ["/admin", "/admin/", false],
    ["/admin/", "/admin/", true],
    ["/admin/", "/admin", false],
    ["/*", "/" + "a".repeat(1500), true],
    ["/prefix/*", "/prefix/" + "x/".repeat(500), true],
    ["/a/b/*", "/a/b/c/d/e", true],
    ["/a/b/*", "/a/b/", true],
    ["/a/b/*", "/a/b", true],
    ["/a/b/*", "/a/bc", false],
    ["/a/b/*", "/a/", false],
  ];
  for (const [pattern, path, want] of table) {
    await t.step(
      `${pattern} vs ${JSON.stringify(path)}`,
      () => assert.equal(matchRoute(pattern, path), want),
    );
  }
});

Deno.test("decisions differ from tailvoy where it matched the raw :path", async (t) => {
  // [grant, raw path, tailvoy's answer (engine_test.go), ours]
  const table: [route: string, raw: string, tailvoy: boolean, ours: boolean][] = [
    ["/public/*", "/public/../admin/secret", true, false], // dot-segments resolved
    ["/admin/*", "/public/../admin/secret", false, true],
    ["/admin/*", "//admin", false, true], // slashes merged
    ["/public/*", "/public/page?foo=bar", true, true],
    ["/public/page", "/public/page?foo=bar", false, true], // query stripped
    ["/health", "/health?x", false, true],
    ["/public/*", "/public/hello%20world", true, true],
    ["/*", "", true, false], // an empty target is refused
  ];
  for (const [route, raw, tailvoy, ours] of table) {
    await t.step(`${route} vs ${JSON.stringify(raw)}: tailvoy ${tailvoy}, ours ${ours}`, () => {
      assert.equal(matchRoute(route, raw), tailvoy);
      assert.equal(get(rules({ routes: [route] }), raw).allow, ours);
    });
  }
});

// ---------------------------------------------------------------------------------------------
// Path canonicalisation
// ---------------------------------------------------------------------------------------------

// [raw, canonical path] or [raw, { deny: part of the reason }]
const CANONICAL_MATRIX: [raw: string, want: string | { deny: string }][] = [
  // already canonical
  ["/", "/"],
  ["/api/users", "/api/users"],
  ["/grpc.health.v1.Health/Check", "/grpc.health.v1.Health/Check"],
  ["/a/b/", "/a/b/"],
  ["/a;b=c/d", "/a;b=c/d"],
  ["/...", "/..."],
  ["/.hidden/x", "/.hidden/x"],
  // traversal
  ["/public/../admin", "/admin"],
  ["/public/%2e%2e/admin", "/admin"],
  ["/public/%2E%2E/admin", "/admin"],
  ["/public/.%2e/admin", "/admin"],
  ["/public/%2e./admin", "/admin"],
  ["/public/./admin", "/public/admin"],
  ["/public/%2e/admin", "/public/admin"],
  ["/a/b/..", "/a/"],
  ["/a/b/.", "/a/b/"],
  ["/a/./b/../../c/", "/c/"],
  ["/..", "/"], // above the root clamps, as Envoy
  ["/../../admin", "/admin"],
  ["/public/../../admin", "/admin"],
  ["/a/..%2e/b", "/a/.../b"],
  // double slashes
  ["//admin", "/admin"],
  ["///a//b//", "/a/b/"],
  ["/public//admin", "/public/admin"],
  ["/public//../admin", { deny: "ambiguous" }],
  ["/a/.//../b", { deny: "ambiguous" }],
  // query and fragment
  ["/admin?/public/x", "/admin"],
  ["/public?x=../admin", "/public"],
  ["/admin#/public", "/admin"],
  ["/a#b?c", "/a"],
  ["/public/%2e%2e/admin?x=1", "/admin"],
  // escapes
  ["/%61dmin", "/admin"],
  ["/%7Euser/%2D%5F", "/~user/-_"],
  ["/a%3fb", "/a%3Fb"], // reserved: kept, hex upper-cased
  ["/a%3Fb", "/a%3Fb"],
  ["/caf%c3%a9", "/caf%C3%A9"],
  ["/%E2%82%AC", "/%E2%82%AC"],
  ["/a%25b", "/a%25b"],
  ["/a b", "/a%20b"], // characters Envoy escapes
  ['/"<>^`{|}', "/%22%3C%3E%5E%60%7B%7C%7D"],
  ["/café", "/caf%C3%A9"],
  ["/a%20b", "/a%20b"],
  // refused
  ["/public%2fadmin", { deny: "encoded slash" }],
  ["/public%2Fadmin", { deny: "encoded slash" }],
  ["/public%5cadmin", { deny: "encoded backslash" }],
  ["/public%5Cadmin", { deny: "encoded backslash" }],
  ["/public\\admin", { deny: "backslash" }],
  ["/public\\..\\admin", { deny: "backslash" }],
  ["/a\u0000b", { deny: "NUL" }],
  ["/a%00b", { deny: "NUL" }],
  ["/a\nb", { deny: "control character %0A" }],
  ["/a?\r\nX-Injected: 1", { deny: "control character %0D" }],
  ["/a%0d%0ab", { deny: "encoded control character %0D" }],
  ["/a\u007fb", { deny: "control character %7F" }],
  ["/%zz", { deny: "invalid percent-encoding" }],
  ["/%2", { deny: "invalid percent-encoding" }],
  ["/a%", { deny: "invalid percent-encoding" }],
  ["/%%32%65", { deny: "invalid percent-encoding" }],
  ["/%c0%ae%c0%ae/admin", { deny: "not valid UTF-8" }],
  ["/%ff", { deny: "not valid UTF-8" }],
  ["/public/..;/admin", { deny: "dot-segment with parameters" }],
  ["/public/.;x/admin", { deny: "dot-segment with parameters" }],
  ["/public/..%3b/admin", { deny: "dot-segment with parameters" }],
  ["/public/%2e%2e;/admin", { deny: "dot-segment with parameters" }],
  ["", { deny: "empty" }],
  ["*", { deny: "asterisk-form" }],
  ["http://app.example.com/admin", { deny: "absolute-form" }],
  ["admin", { deny: 'does not start with "/"' }],
  ["/a\ud800b", { deny: "surrogate" }],
];

Deno.test("canonicalizePath matrix", async (t) => {
  for (const [raw, want] of CANONICAL_MATRIX) {
    await t.step(
      `${JSON.stringify(raw)} → ${typeof want === "string" ? want : `deny (${want.deny})`}`,
      () => {
        const r = canonicalizePath(raw);
        if (typeof want === "string") {
          assert.deepEqual(r, { ok: true, path: want });
          assert.deepEqual(canonicalizePath(want), { ok: true, path: want }, "idempotent");
        } else {
          assert.equal(r.ok, false);
          assert.ok(!r.ok && r.reason.includes(want.deny), !r.ok ? r.reason : "");
        }
      },
    );
  }
});

Deno.test("no bypass: a grant of only /public/* never reaches /admin", async (t) => {
  const publicOnly = rules({ routes: ["/public/*"] });
  const attempts = [
    "/admin",
    "/public/../admin",
    "/public/%2e%2e/admin",
    "/public/%2E%2E/admin",
    "/public/.%2e/admin",
    "/public/%2e./admin",
    "/public/..%2fadmin",
    "/public%2fadmin",
    "/public%2F..%2Fadmin",
    "/public%5cadmin",
    "/public%5C..%5Cadmin",
    "/public\\admin",
    "/public\\..\\admin",
    "//admin",
    "/public//../admin",
    "/public/..//admin",
    "/public/./../admin",
    "/public/../../admin",
    "/admin?/public/x",
    "/public?x=../admin",
    "/admin#/public",
    "/admin;/public/",
    "/public/..;/admin",
    "/public/..%3B/admin",
    "/public/%00/../admin",
    "/public/%zz/../admin",
    "/public/%c0%ae%c0%ae/admin",
    "/%61dmin",
    "/%2e%2e/admin",
    "/PUBLIC/../admin",
    "/publicadmin",
    "/public.admin",
    "http://app.example.com/public/../admin",
    "*",
  ];
  for (const raw of attempts) {
    await t.step(JSON.stringify(raw), () => {
      const d = get(publicOnly, raw);
      if (d.allow) {
        assert.ok(
          d.canonicalPath !== undefined && matchRoute("/public/*", d.canonicalPath),
          formatExplanation(d),
        );
        assert.ok(!d.canonicalPath!.includes("admin") || d.canonicalPath!.startsWith("/public/"));
      }
      assert.equal(d.allow, raw === "/public?x=../admin", formatExplanation(d)); // that one is just /public
      // And the path a /admin/* grantee would see is never mistaken for /public.
      if (d.canonicalPath?.startsWith("/admin")) assert.equal(d.allow, false);
    });
  }
  await t.step("legitimate spellings of /admin still reach an /admin/* grant", () => {
    const adminOnly = rules({ routes: ["/admin/*"] });
    for (const raw of ["/admin", "/%61dmin/x", "/public/../admin/x", "//admin//x", "/admin/?q=1"]) {
      assert.equal(get(adminOnly, raw).allow, true, raw);
    }
  });
});

/** Independent RFC 3986 §5.2.4 remove_dot_segments (string-buffer version) for differential testing. */
function rfcRemoveDotSegments(input: string): string {
  let inp = input;
  let out = "";
  while (inp.length > 0) {
    if (inp.startsWith("../")) inp = inp.slice(3);
    else if (inp.startsWith("./")) inp = inp.slice(2);
    else if (inp.startsWith("/./")) inp = inp.slice(2);
    else if (inp === "/.") inp = "/";
    else if (inp.startsWith("/../")) {
      inp = inp.slice(3);
      out = out.slice(0, Math.max(0, out.lastIndexOf("/")));
    } else if (inp === "/..") {
      inp = "/";
      out = out.slice(0, Math.max(0, out.lastIndexOf("/")));
    } else if (inp === "." || inp === "..") inp = "";
    else {
      const next = inp.indexOf("/", inp.startsWith("/") ? 1 : 0);
      const seg = next < 0 ? inp : inp.slice(0, next);
      out += seg;
      inp = inp.slice(seg.length);
    }
  }
  return out;
}

function prng(seed: number): () => number {
  let s = seed >>> 0;
  return () => { // mulberry32
    s = (s + 0x6d2b79f5) >>> 0;
    let x = s;
    x = Math.imul(x ^ (x >>> 15), x | 1);
    x ^= x + Math.imul(x ^ (x >>> 7), x | 61);
    return ((x ^ (x >>> 14)) >>> 0) / 4294967296;
  };
}

Deno.test("canonicalizePath properties over random paths", () => {
  const tokens = [
    "/",
    "/",
    "/",
    ".",
    "..",
    "%2e",
    "%2E",
    "a",
    "admin",
    "public",
    "%2f",
    "%5c",
    "\\",
    "%",
    "%zz",
    ";",
    "%3b",
    "?",
    "#",
    " ",
    "é",
    "%41",
    "%c0%ae",
    "~",
    "%7e",
    "%3F",
  ];
  const rand = prng(0x7a11);
  const publicOnly = rules({ routes: ["/public/*"] });
  for (let n = 0; n < 20000; n++) {
    let raw = "/";
    const len = 1 + Math.floor(rand() * 10);
    for (let i = 0; i < len; i++) raw += tokens[Math.floor(rand() * tokens.length)];
    const r = canonicalizePath(raw);
    if (!r.ok) continue;
    const p = r.path;
    const msg = `${JSON.stringify(raw)} → ${JSON.stringify(p)}`;
    assert.ok(p.startsWith("/"), msg);
    assert.deepEqual(canonicalizePath(p), r, `idempotent: ${msg}`);
    assert.ok(!p.includes("//"), msg);
    assert.ok(!/(^|\/)\.\.?(\/|$)/.test(p), `dot-segment left: ${msg}`);
    assert.ok(!/%2F|%5C|[\\?#]/i.test(p), msg);
    assert.ok(!/%[0-9A-F]?[a-f]/.test(p), `lower-case hex: ${msg}`);
    assert.ok(
      !/%(?:4[1-9A-F]|5[0-9A]|6[1-9A-F]|7[0-9A]|3[0-9]|2D|2E|5F|7E)/.test(p),
      `undecoded unreserved: ${msg}`,
    );
    const d = get(publicOnly, raw);
    if (d.allow) assert.ok(p === "/public" || p.startsWith("/public/"), msg);
  }
});

Deno.test("dot-segment resolution agrees with RFC 3986 remove_dot_segments", () => {
  const tokens = ["a", "b", ".", "..", "/"];
  const rand = prng(42);
  let compared = 0;
  for (let n = 0; n < 20000; n++) {
    let raw = "/";
    const len = 1 + Math.floor(rand() * 12);
    for (let i = 0; i < len; i++) raw += tokens[Math.floor(rand() * tokens.length)];
    if (raw.includes("//")) continue; // empty segments: merged or refused, RFC keeps them
    const r = canonicalizePath(raw);
    assert.ok(r.ok, raw);
    const rfc = rfcRemoveDotSegments(raw);
    assert.equal(r.path, rfc === "" ? "/" : rfc, raw);
    compared++;
  }
  assert.ok(compared > 5000);
});

// ---------------------------------------------------------------------------------------------
// Parsing: malformed rules, several cap names, empty lists
// ---------------------------------------------------------------------------------------------

Deno.test("malformed rules never grant and are reported", async (t) => {
  const table: [name: string, value: unknown, reason: RegExp][] = [
    ["string instead of object", '{"listeners":["web"]}', /expected object, received string/],
    ["null", null, /expected object, received null/],
    ["number", 7, /expected object/],
    ["array", [{}], /expected object, received array/],
    ["listeners as string", { listeners: "web" }, /^listeners: .*expected array/],
    ["listeners null", { listeners: null }, /^listeners: .*expected array, received null/],
    ["route not a string", { routes: [1] }, /^routes\.0: .*expected string/],
    ["unknown key (typo)", { route: ["/api/*"] }, /Unrecognized key: "route"/],
    ["unknown key (Go's case-insensitive match)", { Listeners: ["web"] }, /Unrecognized key: "Listeners"/],
    ["unknown key next to valid ones", { listeners: ["web"], paths: ["/x"] }, /Unrecognized key: "paths"/],
    ["empty listener name", { listeners: [""] }, /listener name must not be empty/],
    ["route without leading slash", { routes: ["api/*"] }, /must start with "\/"/],
    ["route with inner star", { routes: ["/api*"] }, /only supported as a final/],
    ["route with dot-segment", { routes: ["/a/../admin/*"] }, /not in canonical form/],
    ["route with double slash", { routes: ["//admin/*"] }, /not in canonical form|empty segment/],
    ["route with query", { routes: ["/a?b"] }, /not in canonical form/],
    ["route with encoded slash", { routes: ["/a%2Fb"] }, /encoded slash/],
    ["route empty", { routes: [""] }, /must start with/],
    ["hostname with port", { hostnames: ["app.example.com:443"] }, /not a hostname/],
    ["hostname bare star", { hostnames: ["*"] }, /not a hostname/],
    ["hostname inner star", { hostnames: ["a.*.example.com"] }, /not a hostname/],
    ["hostname star without dot", { hostnames: ["*example.com"] }, /not a hostname/],
    ["method with space", { methods: ["GET POST"] }, /not an HTTP token/],
  ];
  for (const [name, value, reason] of table) {
    await t.step(name, () => {
      const parsed = parseCapRules({ [CAP]: [value] });
      assert.deepEqual(parsed.rules, []);
      assert.equal(parsed.malformed.length, 1);
      const [m] = parsed.malformed;
      assert.equal(m.capName, CAP);
      assert.equal(m.index, 0);
      assert.equal(m.json, JSON.stringify(value));
      assert.match(m.reason, reason);
      const d = decideL7(parsed.rules, {
        listener: "web",
        host: "app.example.com",
        path: "/api/x",
        method: "GET",
      });
      assert.equal(d.allow, false);
      assert.equal(d.code, "no_rules");
      assert.equal(decideL4(parsed.rules, { listener: "web" }).allow, false);
    });
  }
  await t.step("valid rules beside a malformed one keep working", () => {
    const parsed = parseCapRules({ [CAP]: [{ listeners: "web" }, { routes: ["/api/*"] }, null] });
    assert.deepEqual(parsed.malformed.map((m) => m.index), [0, 2]);
    assert.equal(parsed.rules.length, 1);
    assert.equal(parsed.rules[0].index, 1);
    const allow = get(parsed.rules, "/api/x");
    assert.equal(allow.allow, true);
    assert.deepEqual(allow.matched, { capName: CAP, index: 1, json: '{"routes":["/api/*"]}' });
    const deny = get(parsed.rules, "/other");
    assert.deepEqual(deny.reasons, ['rule 1: path "/other" matches none of ["/api/*"]']);
  });
  await t.step("a capability value that is not a list", () => {
    const parsed = parseCapRules({ [CAP]: { listeners: ["web"] } as unknown as unknown[] });
    assert.deepEqual(parsed.rules, []);
    assert.deepEqual(parsed.malformed, [{
      capName: CAP,
      index: -1,
      json: '{"listeners":["web"]}',
      reason: "capability value is not a list of rules",
    }]);
  });
  await t.step("values that are not JSON are reported without throwing", () => {
    const cyclic: Record<string, unknown> = {};
    cyclic.self = cyclic;
    const parsed = parseCapRules({ [CAP]: [cyclic, 10n, undefined] });
    assert.equal(parsed.malformed.length, 3);
    assert.deepEqual(parsed.rules, []);
    // Found by tests/properties/policy.ts: no JSON (a BigInt inside) and no toString to fall back on.
    const bare = Object.assign(Object.create(null), { "": [0n] });
    const withBadToString = { toString: 1, n: 0n };
    const odd = parseCapRules({ [CAP]: [bare, withBadToString] });
    assert.deepEqual(odd.malformed.map((m) => m.json), ["[object Object]", "[object Object]"]);
  });
});

Deno.test("no rules: null CapMap, missing cap, null or empty cap value all deny", async (t) => {
  const maps: [name: string, m: CapMap | null][] = [
    ["null CapMap", null],
    ["empty CapMap", {}],
    ["other capability only", { "tailscale.com/cap/drive": [{ shares: ["*"] }] }],
    ["cap with null value", { [CAP]: null }],
    ["cap with empty list", { [CAP]: [] }],
  ];
  for (const [name, m] of maps) {
    await t.step(name, () => {
      const parsed = parseCapRules(m);
      assert.deepEqual(parsed, { rules: [], malformed: [], warnings: [] });
      const d = decideL4(parsed.rules, { listener: "tcp" });
      assert.equal(d.allow, false);
      assert.equal(d.code, "no_rules");
      assert.equal(decideL7(parsed.rules, { listener: "web", path: "/", method: "GET" }).code, "no_rules");
    });
  }
});

Deno.test("several capability names", () => {
  const other = "example.com/cap/web";
  const m: CapMap = { [CAP]: [{ listeners: ["db"] }], [other]: [{ routes: ["/api/*"] }] };
  // Default: only tailvoy's name is read.
  assert.equal(parseCapRules(m).rules.length, 1);
  const both = parseCapRules(m, { capNames: [CAP, other, CAP] }); // duplicates ignored
  assert.deepEqual(both.rules.map((r) => [r.capName, r.index]), [[CAP, 0], [other, 0]]);
  const allow = get(both.rules, "/api/v1");
  assert.equal(allow.allow, true);
  assert.equal(allow.matched?.capName, other);
  assert.deepEqual(allow.reasons, [`rule 0 (${other}): matched {"routes":["/api/*"]}`]);
  const deny = get(both.rules, "/x");
  assert.deepEqual(deny.reasons, [
    'rule 0: listener "web" not in ["db"]',
    `rule 0 (${other}): path "/x" matches none of ["/api/*"]`,
  ]);
  const onlyOther = parseCapRules(m, { capNames: [other] });
  assert.equal(get(onlyOther.rules, "/api/v1", "db").allow, true);
  assert.equal(decideL4(onlyOther.rules, { listener: "db" }).allow, true); // routes-only at L4
});

Deno.test("empty lists: unrestricted with a warning (tailvoy), or match nothing on request", async (t) => {
  const m: CapMap = { [CAP]: [{ listeners: [], routes: ["/api/*"] }] };
  await t.step("default: unrestricted, as tailvoy's len(values) == 0", () => {
    const parsed = parseCapRules(m);
    assert.equal(parsed.rules.length, 1);
    assert.equal(parsed.warnings.length, 1);
    assert.match(parsed.warnings[0].reason, /"listeners": \[\] is treated as unrestricted/);
    assert.equal(get(parsed.rules, "/api/x", "anything").allow, true);
  });
  await t.step('emptyList: "nothing" fails closed', () => {
    const parsed = parseCapRules(m, { emptyList: "nothing" });
    assert.equal(parsed.warnings.length, 1);
    const d = get(parsed.rules, "/api/x", "anything");
    assert.equal(d.allow, false);
    assert.deepEqual(d.reasons, ['rule 0: listener "anything" not in []']);
  });
  await t.step("{} with every list empty grants everything by default", () => {
    const parsed = parseCapRules({ [CAP]: [{ listeners: [], routes: [], hostnames: [], methods: [] }] });
    assert.equal(parsed.warnings.length, 4);
    assert.equal(decideL4(parsed.rules, { listener: "x" }).allow, true);
  });
});

// ---------------------------------------------------------------------------------------------
// Decisions and explanations
// ---------------------------------------------------------------------------------------------

Deno.test("Decision fields and formatExplanation", async (t) => {
  const r = rules({
    listeners: ["web"],
    hostnames: ["*.example.com"],
    routes: ["/public/*"],
    methods: ["GET"],
  });
  await t.step("allow", () => {
    const d = decideL7(r, {
      listener: "web",
      host: "App.Example.com:443",
      path: "/public/%7Ex?q",
      method: "get",
    });
    assert.deepEqual(d, {
      allow: true,
      layer: "l7",
      code: "allow",
      matched: {
        capName: CAP,
        index: 0,
        json: '{"listeners":["web"],"hostnames":["*.example.com"],"routes":["/public/*"],"methods":["GET"]}',
      },
      reasons: [
        'rule 0: matched {"listeners":["web"],"hostnames":["*.example.com"],"routes":["/public/*"],"methods":["GET"]}',
      ],
      listener: "web",
      host: "app.example.com",
      canonicalPath: "/public/~x",
      method: "GET",
    });
    assert.equal(
      formatExplanation(d),
      'ALLOW L7 listener "web" host "app.example.com" GET "/public/~x": allowed\n' +
        '  rule 0: matched {"listeners":["web"],"hostnames":["*.example.com"],"routes":["/public/*"],"methods":["GET"]}',
    );
  });
  await t.step("deny names every failed dimension", () => {
    const d = decideL7(r, { listener: "db", host: "example.com", path: "/admin", method: "POST" });
    assert.equal(d.code, "no_match");
    assert.deepEqual(d.reasons, [
      'rule 0: listener "db" not in ["web"]; host "example.com" matches none of ["*.example.com"]; ' +
      'path "/admin" matches none of ["/public/*"]; method "POST" not in ["GET"]',
    ]);
    assert.equal(
      formatExplanation(d).split("\n")[0],
      'DENY L7 listener "db" host "example.com" POST "/admin": no rule matched',
    );
  });
  await t.step("bad request", () => {
    const d = decideL7(r, {
      listener: "web",
      host: "a.example.com",
      path: "/public%2f..%2fadmin",
      method: "GET",
    });
    assert.equal(d.code, "bad_request");
    assert.equal(d.canonicalPath, undefined);
    assert.deepEqual(d.reasons, ["encoded slash %2F in path"]);
    assert.equal(
      formatExplanation(d),
      'DENY L7 listener "web" host "a.example.com" GET (path refused): request path refused\n' +
        "  encoded slash %2F in path",
    );
  });
  await t.step("L4 and no rules", () => {
    const d = decideL4([], { listener: "postgres" });
    assert.equal(
      formatExplanation(d),
      'DENY L4 listener "postgres" (no SNI): identity has no tailvoy rules\n' +
        "  no valid tailvoy rules for this identity (capability absent or empty, or every rule malformed)",
    );
    const s = decideL4(rules({ listeners: ["web"] }), { listener: "tls", sni: "App.Example.com" });
    assert.equal(s.host, "app.example.com");
    assert.match(
      formatExplanation(s),
      /^DENY L4 listener "tls" SNI "app.example.com": no rule matched\n {2}rule 0: /,
    );
  });
  await t.step("user-controlled text is escaped and bounded in reasons", () => {
    const d = decideL7(r, { listener: 'w"\u001b[31m', path: "/" + "x".repeat(5000), method: "GET" });
    assert.ok(d.reasons[0].includes('listener "w\\"\\u001b[31m"'));
    assert.ok(d.reasons[0].length < 600);
  });
  await t.step("first matching rule wins; decisions are JSON-serialisable", () => {
    const two = rules({ routes: ["/a/*"] }, {});
    const d = get(two, "/a/b");
    assert.equal(d.matched?.index, 0);
    assert.equal(get(two, "/z").matched?.index, 1);
    assert.deepEqual(JSON.parse(JSON.stringify(d)), d);
  });
});
