/**
 * Tests of the ext_authz server (lib/extauthz): table tests of `evaluateCheck`, header encodings against
 * Go-generated golden vectors, the vendored protos (loading under read-only permissions, a CheckRequest
 * captured from a real Envoy, pinned field numbers), and end-to-end runs through a real Envoy 1.40.
 *
 * Identity comes from a fake WhoIs source behind the real IdentityResolver. It is a fake because these
 * tests are about what the authz server does with an identity and must run without a tailnet; the real
 * tailscaled path is covered by the identity e2e tests and the full-stack e2e tests.
 *
 * Regenerate tests/fixtures/extauthz/check_request.bin with `TAILVOY_UPDATE_FIXTURES=1`.
 */

import assert from "node:assert/strict";
import type { Buffer } from "node:buffer";
import { join } from "node:path";
import * as grpc from "@grpc/grpc-js";
import { IdentityResolver } from "../../lib/identity/mod.ts";
import { LocalApiError, type WhoIsOptions, type WhoIsResponse } from "../../lib/localapi/mod.ts";
import {
  type AuthzDeps,
  type CheckResponse,
  CheckResponseSchema,
  classifyAddress,
  type DecisionRecord,
  DENY_BODY,
  DENY_MESSAGE,
  encodeHeaderValue,
  evaluateCheck,
  formatAppCapabilities,
  goJson,
  type HeaderValueOption,
  httpCheckInput,
  judge,
  type ListenerSettings,
  listenersFromConfig,
  verdictResponse,
} from "../../lib/extauthz/mod.ts";
import { createAuthzServer } from "../../lib/extauthz/grpc.ts";
import { loadAuthzProtos, PROTO_DIR } from "../../lib/extauthz/protos.ts";
import {
  generateSecret,
  SECRET_KEY,
  SECRET_METADATA_NAMESPACE,
  secretProblem,
  ServiceIndex,
} from "../../lib/wire.ts";
import { PEER_BINS, PROJECT_ROOT } from "../../scripts/harness/peers.ts";
import { CACHED_ONLY } from "../../scripts/harness/cache.ts";
import { closeQuietly, delay } from "../../lib/util/async.ts";
import { concat } from "../../lib/util/bytes.ts";

const FIXTURES = join(PROJECT_ROOT, "tests", "fixtures", "extauthz");
const CAP = "rajsingh.info/cap/tailvoy";
const APP_CAP = "example.com/cap/app";
// Fixed, so the captured CheckRequest fixture can assert it.
const SECRET = "tailvoy-test-secret-0123456789abcdef";
const HOST = "app.example.ts.net";

// ---------------------------------------------------------------------------------------------
// Fake tailscaled (WhoIs) and deps

function whoisAnswer(
  name: string,
  ip: string,
  options: { tags?: string[]; caps?: Record<string, unknown[]>; displayName?: string } = {},
): WhoIsResponse {
  return {
    Node: {
      StableID: `n-${name}`,
      Name: `${name}.tail1234.ts.net.`,
      Addresses: [`${ip}/32`],
      Tags: options.tags ?? [],
    },
    UserProfile: { LoginName: `${name}@example.com`, DisplayName: options.displayName ?? name },
    CapMap: options.caps ?? {},
  };
}

const WEB_RULE = { listeners: ["web", "app", "audit", "rpc"], routes: ["/api/*", "/public/*"] };

/** Callers by IP: alice (user), ci (tagged), carol (no caps), mallory (everything), slow. */
const PEOPLE: Record<string, WhoIsResponse> = {
  "100.64.0.2": whoisAnswer("alice", "100.64.0.2", {
    caps: { [CAP]: [WEB_RULE], [APP_CAP]: [{ role: "admin" }], "example.com/cap/other": [1] },
    displayName: "Alice Zoë",
  }),
  "100.64.0.3": whoisAnswer("ci", "100.64.0.3", { tags: ["tag:ci", "tag:prod"], caps: { [CAP]: [{}] } }),
  "100.64.0.4": whoisAnswer("carol", "100.64.0.4"),
  "100.64.0.9": whoisAnswer("mallory", "100.64.0.9", { caps: { [CAP]: [{}] } }),
  "100.64.0.10": whoisAnswer("slow", "100.64.0.10", { caps: { [CAP]: [{}] } }),
  "fd7a:115c:a1e0::2": whoisAnswer("alice6", "fd7a:115c:a1e0::2", { caps: { [CAP]: [WEB_RULE] } }),
};

class FakeWhoIs {
  calls: { addr: string; options?: WhoIsOptions }[] = [];
  slowMs = 400;
  whois(addr: string, options?: WhoIsOptions): Promise<WhoIsResponse> {
    this.calls.push({ addr, options });
    const answer = PEOPLE[addr];
    if (!answer) return Promise.reject(new LocalApiError("not-found", `no peer at ${addr}`, { status: 404 }));
    const delay = addr === "100.64.0.10" ? this.slowMs : 0;
    return new Promise((resolve) => setTimeout(() => resolve(answer), delay));
  }
}

const LISTENERS: Record<string, ListenerSettings> = {
  web: { protocol: "http", acceptAppCaps: false, shadow: false },
  app: { protocol: "https", acceptAppCaps: true, shadow: false },
  audit: { protocol: "http", acceptAppCaps: false, shadow: true },
  rpc: { protocol: "grpc", acceptAppCaps: false, shadow: false },
  db: { protocol: "tcp", acceptAppCaps: false, shadow: false },
};

function makeDeps(overrides: Partial<AuthzDeps> = {}) {
  const source = new FakeWhoIs();
  const records: DecisionRecord[] = [];
  const deps: AuthzDeps = {
    resolver: new IdentityResolver(source, { ttlMs: 0 }),
    listeners: listenersFromConfig({ listeners: LISTENERS }),
    appCapNames: [APP_CAP],
    onDecision: (r) => records.push(r),
    ...overrides,
  };
  return { deps, source, records };
}

interface RequestInit {
  ip?: string;
  port?: number;
  listener?: string | null;
  secret?: string | null;
  method?: string;
  path?: string;
  host?: string;
  headers?: Record<string, string>;
}

/** A CheckRequest shaped like the one Envoy sends (see the captured fixture). */
function checkRequest(init: RequestInit = {}) {
  const headers = {
    ":authority": init.host ?? HOST,
    ":method": init.method ?? "GET",
    ":path": init.path ?? "/api/items",
    "x-request-id": "rid-1",
    ...init.headers,
  };
  return {
    attributes: {
      source: {
        address: { socket_address: { address: init.ip ?? "100.64.0.2", port_value: init.port ?? 40000 } },
      },
      destination: { address: { socket_address: { address: "127.0.0.1", port_value: 10080 } } },
      request: {
        http: {
          id: "123",
          method: init.method ?? "GET",
          headers,
          path: init.path ?? "/api/items",
          host: init.host ?? HOST,
          scheme: "http",
          protocol: "HTTP/1.1",
        },
      },
      ...(init.listener === null ? {} : { context_extensions: { listener: init.listener ?? "web" } }),
      metadata_context: init.secret === null ? {} : {
        filter_metadata: {
          [SECRET_METADATA_NAMESPACE]: {
            fields: { [SECRET_KEY]: { stringValue: init.secret ?? SECRET } },
          },
        },
      },
    },
  };
}

function headerMap(options: readonly HeaderValueOption[] | undefined): Record<string, string> {
  return Object.fromEntries((options ?? []).map((o) => [o.header.key, o.header.value]));
}

function assertDenied(response: CheckResponse, what: string): void {
  assert.equal(response.status.code, 7, `${what}: status`);
  assert.equal(response.ok_response, undefined, `${what}: no ok_response`);
  assert.equal(response.denied_response?.status.code, "Forbidden", `${what}: HTTP status`);
  CheckResponseSchema.parse(response);
}

function assertAllowed(response: CheckResponse, what: string): Record<string, string> {
  assert.equal(response.status.code, 0, `${what}: status`);
  assert.equal(response.denied_response, undefined, `${what}: no denied_response`);
  CheckResponseSchema.parse(response);
  return headerMap(response.ok_response?.headers);
}

// ---------------------------------------------------------------------------------------------
// evaluateCheck

Deno.test("allow: identity headers for a user node, each set to overwrite", async () => {
  const { deps, records } = makeDeps();
  const response = await evaluateCheck(checkRequest(), deps);
  assert.deepEqual(
    response.ok_response?.headers,
    [
      ["x-tailscale-user", "alice@example.com"],
      ["x-tailscale-node", "alice.tail1234.ts.net"],
      ["x-tailscale-ip", "100.64.0.2"],
      ["x-tailscale-tags", ""],
      ["tailscale-user-login", "alice@example.com"],
      ["tailscale-user-name", "=?utf-8?q?Alice_Zo=C3=AB?="],
      // Forwarding headers, overwritten with what the connection says (as tailscale serve does).
      ["x-forwarded-for", "100.64.0.2"],
      ["x-real-ip", "100.64.0.2"],
      ["x-forwarded-host", HOST],
    ].map(([key, value]) => ({
      header: { key, value },
      append: { value: false },
      append_action: "OVERWRITE_IF_EXISTS_OR_ADD",
      keep_empty_value: true,
    })),
  );
  assert.equal(response.ok_response?.headers_to_remove, undefined);
  assert.equal(records.length, 1);
  const r = records[0];
  assert.equal(r.allow, true);
  assert.equal(r.code, "allow");
  assert.equal(r.requestId, "rid-1");
  assert.equal(r.listener, "web");
  assert.equal(r.callerIp, "100.64.0.2");
  assert.equal(r.callerPort, 40000);
  assert.equal(r.identity?.login, "alice@example.com");
  assert.equal(r.host, HOST);
  assert.equal(r.method, "GET");
  assert.equal(r.path, "/api/items");
  assert.equal(r.shadow, false);
  assert.match(r.explanation, /^ALLOW L7 listener "web"/);
  assert.ok(r.latencyMs >= 0 && r.time instanceof Date);
});

Deno.test("allow: Forwarded and override headers are removed unless the listener keeps them (gRPC checks carry all headers)", async () => {
  const { deps } = makeDeps({
    listeners: listenersFromConfig({
      listeners: {
        ...LISTENERS,
        rpc: {
          protocol: "grpc",
          acceptAppCaps: false,
          shadow: false,
          keepHeaders: ["x-http-method-override"],
        },
      },
    }),
  });
  const headers = {
    forwarded: "for=100.64.0.9",
    "x-forwarded-for": "100.64.0.9",
    "x-original-url": "/admin",
    "x-rewrite-url": "/admin",
    "x-http-method-override": "DELETE",
    "x-http-method": "DELETE",
    "x-method-override": "DELETE",
  };
  const removed = (listener: string) =>
    evaluateCheck(checkRequest({ listener, headers }), deps).then((r) =>
      r.ok_response?.headers_to_remove?.sort()
    );
  assert.deepEqual(await removed("web"), [
    "forwarded",
    "x-http-method",
    "x-http-method-override",
    "x-method-override",
    "x-original-url",
    "x-rewrite-url",
  ]);
  assert.deepEqual(await removed("rpc"), [
    "forwarded",
    "x-http-method",
    "x-method-override",
    "x-original-url",
    "x-rewrite-url",
  ]);
});

Deno.test("allow: a tagged node gets an empty user, its tags, and no serve user headers", async () => {
  const { deps } = makeDeps();
  const response = await evaluateCheck(
    checkRequest({ ip: "100.64.0.3", headers: { "tailscale-user-login": "evil@example.com" } }),
    deps,
  );
  const h = assertAllowed(response, "tagged");
  assert.equal(h["x-tailscale-user"], "");
  assert.equal(h["x-tailscale-tags"], "tag:ci,tag:prod");
  assert.equal(h["tailscale-user-login"], undefined);
  assert.equal(h["tailscale-user-name"], undefined);
  // A client copy of a header we do not set this time is removed, not passed on.
  assert.deepEqual(response.ok_response?.headers_to_remove, ["tailscale-user-login"]);
});

Deno.test("allow: client x-tailscale-*/tailscale-* headers are removed or overwritten", async () => {
  const { deps } = makeDeps();
  const response = await evaluateCheck(
    checkRequest({
      headers: {
        "x-tailscale-user": "evil@example.com",
        "x-tailscale-admin": "1",
        "tailscale-app-capabilities": "{}",
        "x-other": "kept",
      },
    }),
    deps,
  );
  const h = assertAllowed(response, "spoof");
  assert.equal(h["x-tailscale-user"], "alice@example.com");
  assert.deepEqual(response.ok_response?.headers_to_remove, [
    "x-tailscale-admin",
    "tailscale-app-capabilities",
  ]);
});

Deno.test("allow: Tailscale-App-Capabilities only on acceptAppCaps listeners, limited to the configured caps", async () => {
  const { deps } = makeDeps();
  const web = assertAllowed(await evaluateCheck(checkRequest({ listener: "web" }), deps), "web");
  assert.equal(web["tailscale-app-capabilities"], undefined);
  const app = assertAllowed(await evaluateCheck(checkRequest({ listener: "app" }), deps), "app");
  assert.equal(app["tailscale-app-capabilities"], '{"example.com/cap/app":[{"role":"admin"}]}');
  const { deps: both } = makeDeps({ appCapNames: [APP_CAP, CAP, "example.com/cap/missing"] });
  const all = assertAllowed(await evaluateCheck(checkRequest({ listener: "app" }), both), "both");
  assert.equal(
    all["tailscale-app-capabilities"],
    '{"example.com/cap/app":[{"role":"admin"}],"rajsingh.info/cap/tailvoy":[{"listeners":["web","app","audit","rpc"],"routes":["/api/*","/public/*"]}]}',
  );
});

Deno.test("allow: an IPv6 tailnet caller is resolved with a bracketed address", async () => {
  const { deps, source } = makeDeps();
  assertAllowed(await evaluateCheck(checkRequest({ ip: "fd7a:115c:a1e0::2", port: 5555 }), deps), "v6");
  assert.equal(source.calls[0].addr, "fd7a:115c:a1e0::2");
});

Deno.test("deny table: every fail-closed rule", async () => {
  const cases: { name: string; request: unknown; code: DecisionRecord["code"]; why: RegExp }[] = [
    {
      name: "loopback source",
      request: checkRequest({ ip: "127.0.0.1" }),
      code: "bad_source",
      why: /loopback/,
    },
    { name: "v6 loopback source", request: checkRequest({ ip: "::1" }), code: "bad_source", why: /loopback/ },
    {
      name: "LAN source",
      request: checkRequest({ ip: "192.168.1.5" }),
      code: "bad_source",
      why: /not a tailnet/,
    },
    {
      name: "CGNAT outside /10",
      request: checkRequest({ ip: "100.128.0.1" }),
      code: "bad_source",
      why: /not a tailnet/,
    },
    {
      name: "v4-mapped tailnet",
      request: checkRequest({ ip: "::ffff:100.64.0.2" }),
      code: "bad_source",
      why: /not a tailnet/,
    },
    {
      name: "garbage source",
      request: checkRequest({ ip: "100.64.0.2; drop" }),
      code: "bad_source",
      why: /invalid/,
    },
    {
      name: "no listener",
      request: checkRequest({ listener: null }),
      code: "no_listener",
      why: /names no listener/,
    },
    {
      name: "empty listener",
      request: checkRequest({ listener: "" }),
      code: "no_listener",
      why: /names no listener/,
    },
    {
      name: "unknown listener",
      request: checkRequest({ listener: "nope" }),
      code: "unknown_listener",
      why: /not configured/,
    },
    {
      name: "prototype key",
      request: checkRequest({ listener: "constructor" }),
      code: "unknown_listener",
      why: /not configured/,
    },
    {
      name: "L4 listener",
      request: checkRequest({ listener: "db" }),
      code: "unknown_listener",
      why: /tcp listener/,
    },
    {
      name: "WhoIs fails",
      request: checkRequest({ ip: "100.64.0.77" }),
      code: "unknown_caller",
      why: /no peer/,
    },
    {
      name: "no rules",
      request: checkRequest({ ip: "100.64.0.4" }),
      code: "no_rules",
      why: /no valid tailvoy rules/,
    },
    {
      name: "path not granted",
      request: checkRequest({ path: "/admin" }),
      code: "no_match",
      why: /"\/admin"/,
    },
    {
      name: "dot segments",
      request: checkRequest({ path: "/api/../admin" }),
      code: "no_match",
      why: /"\/admin"/,
    },
    {
      name: "encoded slash",
      request: checkRequest({ path: "/api/x%2F..%2Fadmin" }),
      code: "bad_request",
      why: /./,
    },
    {
      name: "not HTTP",
      request: { attributes: { source: {} } },
      code: "malformed",
      why: /not an HTTP request/,
    },
    { name: "null", request: null, code: "malformed", why: /malformed CheckRequest/ },
    { name: "wrong types", request: { attributes: "x" }, code: "malformed", why: /malformed CheckRequest/ },
  ];
  for (const c of cases) {
    const { deps, records } = makeDeps();
    const response = await evaluateCheck(c.request, deps);
    assertDenied(response, c.name);
    assert.equal(records[0].code, c.code, `${c.name}: ${records[0].explanation}`);
    assert.match(records[0].explanation, c.why, c.name);
    assert.equal(records[0].allow, false, c.name);
  }
});

Deno.test("deny: 403 JSON body, request id headers, PERMISSION_DENIED", async () => {
  const { deps } = makeDeps();
  const response = await evaluateCheck(checkRequest({ path: "/admin" }), deps);
  assertDenied(response, "deny");
  assert.equal(response.denied_response?.body, DENY_BODY);
  assert.deepEqual(JSON.parse(DENY_BODY), { error: "forbidden", message: "access denied by tailvoy policy" });
  assert.deepEqual(headerMap(response.denied_response?.headers), {
    "content-type": "application/json",
    "x-request-id": "rid-1",
    "x-tailvoy-request-id": "rid-1",
  });
});

Deno.test("deny: a gRPC request gets a plain message (Envoy sends it as grpc-message)", async () => {
  const { deps } = makeDeps();
  const response = await evaluateCheck(
    checkRequest({
      listener: "rpc",
      path: "/pkg.Svc/Admin",
      headers: { "content-type": "application/grpc" },
    }),
    deps,
  );
  assertDenied(response, "grpc");
  assert.equal(response.denied_response?.body, DENY_MESSAGE);
  assert.equal(headerMap(response.denied_response?.headers)["content-type"], undefined);
});

Deno.test("X-Forwarded-For never changes who the caller is", async () => {
  const { deps, source, records } = makeDeps();
  const response = await evaluateCheck(
    checkRequest({ path: "/admin", headers: { "x-forwarded-for": "100.64.0.9", "x-real-ip": "100.64.0.9" } }),
    deps,
  );
  assertDenied(response, "xff");
  assert.deepEqual(source.calls.map((c) => c.addr), ["100.64.0.2"]);
  assert.equal(records[0].identity?.login, "alice@example.com");
});

Deno.test("shadow listener: a policy deny is allowed and flagged; identity failures still deny", async () => {
  const { deps, records } = makeDeps();
  const h = assertAllowed(
    await evaluateCheck(checkRequest({ listener: "audit", path: "/admin" }), deps),
    "shadow",
  );
  assert.equal(h["x-tailscale-user"], "alice@example.com");
  assert.equal(records[0].allow, true);
  assert.equal(records[0].shadow, true);
  assert.equal(records[0].code, "no_match");
  assert.match(records[0].explanation, /^DENY L7 listener "audit"/);
  assert.equal(records[0].decision?.allow, false);
  assertDenied(
    await evaluateCheck(checkRequest({ listener: "audit", ip: "127.0.0.1" }), deps),
    "shadow source",
  );
  assertDenied(
    await evaluateCheck(checkRequest({ listener: "audit", ip: "100.64.0.77" }), deps),
    "shadow whois",
  );
  assert.deepEqual(records.slice(1).map((r) => [r.code, r.shadow]), [["bad_source", false], [
    "unknown_caller",
    false,
  ]]);
});

/** Envoy's HTTP check as our bootstrap makes it send (see lib/wire.ts). */
function httpCheck(init: RequestInit & { local?: string | null; grpc?: boolean } = {}): Request {
  const headers = new Headers({
    host: init.host ?? HOST,
    "x-request-id": "rid-1",
    "x-tailvoy-peer": `${
      (init.ip ?? "100.64.0.2").includes(":") ? `[${init.ip}]` : init.ip ?? "100.64.0.2"
    }:${init.port ?? 40000}`,
    ...(init.local === null ? {} : { "x-tailvoy-local": init.local ?? "127.0.0.1:0" }),
    ...(init.listener === null ? {} : { "x-tailvoy-listener": init.listener ?? "web" }),
    ...(init.grpc ? { "x-tailvoy-content-type": "application/grpc" } : {}),
    ...init.headers,
  });
  return new Request(`http://${init.host ?? HOST}/check${init.path ?? "/api/items"}`, {
    method: init.method ?? "GET",
    headers,
  });
}

Deno.test("HTTP checks: caller, Service (PROXY destination port) and listener come from Envoy's headers", async () => {
  const { deps, source, records } = makeDeps();
  const services = new ServiceIndex();
  const web = services.portOf("svc:web");
  const ask = async (init: Parameters<typeof httpCheck>[0]) => {
    const input = httpCheckInput(httpCheck(init), services);
    return verdictResponse(await judge(input, deps), input);
  };
  const ok = await ask({});
  assert.equal(ok.status, 200);
  assert.equal(ok.headers.get("x-tailscale-user"), "alice@example.com");
  assert.equal(ok.headers.get("x-tailscale-ip"), "100.64.0.2");
  assert.equal((await ask({ local: `127.0.0.1:${web}` })).status, 200);
  assert.equal((await ask({ ip: "fd7a:115c:a1e0::2", local: `[::1]:${web}` })).status, 200);
  assert.deepEqual(
    source.calls.map((c) => [c.addr, c.options?.svcName]),
    [["100.64.0.2", undefined], ["100.64.0.2", "svc:web"], [
      "fd7a:115c:a1e0::2",
      "svc:web",
    ]],
    "WhoIs is scoped to the Service the relay named",
  );
  // A destination port no Service was given, no destination, no caller, no listener: denied.
  const denied = [
    [{ local: "127.0.0.1:4242" }, "bad_service"],
    [{ local: null }, "bad_service"],
    [{ ip: "127.0.0.1" }, "bad_source"],
    [{ listener: null }, "no_listener"],
    [{ listener: "db" }, "unknown_listener"],
    [{ path: "/admin" }, "no_match"],
  ] as const;
  for (const [init, code] of denied) {
    const r = await ask(init);
    assert.equal(r.status, 403, JSON.stringify(init));
    assert.equal(await r.text(), DENY_BODY);
    assert.equal(r.headers.get("content-type"), "application/json");
    assert.equal(r.headers.get("x-tailvoy-request-id"), "rid-1");
    assert.equal(records.at(-1)?.code, code, JSON.stringify(init));
  }
  const grpcDeny = await ask({ path: "/admin", grpc: true });
  assert.equal(grpcDeny.status, 403, "Envoy sends gRPC callers a 403 as PERMISSION_DENIED");
  assert.equal(await grpcDeny.text(), DENY_MESSAGE);
  // A check that is not under /check is not Envoy's: denied.
  const stray = new Request("http://x/other", { headers: httpCheck().headers });
  const strayInput = httpCheckInput(stray, services);
  assert.equal(verdictResponse(await judge(strayInput, deps), strayInput).status, 403);
  assert.equal(records.at(-1)?.code, "malformed");
});

Deno.test("ServiceIndex: 0 is the node, each Service gets a stable port, unknown ports name nothing", () => {
  const services = new ServiceIndex();
  assert.equal(services.portOf(undefined), 0);
  assert.equal(services.serviceAt(0), "");
  const a = services.portOf("svc:a");
  const b = services.portOf("svc:b");
  assert.notEqual(a, b);
  assert.equal(services.portOf("svc:a"), a);
  assert.equal(services.serviceAt(a), "svc:a");
  assert.equal(services.serviceAt(b), "svc:b");
  for (const port of [b + 1, -1, 1.5, 65536]) assert.equal(services.serviceAt(port), undefined, String(port));
});

Deno.test("gRPC checks (Envoy Gateway): metadata is never read, the listener falls back to the local port, the source must still be a tailnet address", async () => {
  const { deps, records } = makeDeps({
    listeners: (name) => name === "" ? undefined : { protocol: "http", acceptAppCaps: false, shadow: false },
    listenerForPort: (port) => port === 10080 ? "web" : undefined,
  });
  assertAllowed(
    await evaluateCheck(checkRequest({ secret: null }), deps),
    "no secret, listener from context",
  );
  assertAllowed(
    await evaluateCheck(checkRequest({ secret: null, listener: null }), deps),
    "listener from port",
  );
  assert.equal(records[1].listener, "web");
  // A secret-looking value in metadata changes nothing, and never scopes WhoIs to a Service.
  assertAllowed(await evaluateCheck(checkRequest({ secret: "whatever" }), deps), "metadata ignored");
  assertDenied(await evaluateCheck(checkRequest({ secret: null, ip: "127.0.0.1" }), deps), "loopback source");
  assertDenied(
    await evaluateCheck(checkRequest({ secret: null, ip: "10.1.2.3" }), deps),
    "non-tailnet source",
  );
  assertDenied(await evaluateCheck(checkRequest({ secret: null, path: "/admin" }), deps), "policy deny");
  const noPort = makeDeps({ ...deps, listenerForPort: () => undefined });
  assertDenied(
    await evaluateCheck(checkRequest({ secret: null, listener: null }), noPort.deps),
    "no listener",
  );
  assert.deepEqual(records.slice(3).map((r) => r.code), [
    "bad_source",
    "bad_source",
    "no_match",
    "no_listener",
  ]);
});

Deno.test("a throwing onDecision callback does not change the answer", async () => {
  const { deps } = makeDeps({
    onDecision: () => {
      throw new Error("boom");
    },
  });
  assertAllowed(await evaluateCheck(checkRequest(), deps), "callback");
});

Deno.test("request id: Envoy's x-request-id, else the stream id", async () => {
  const { deps, records } = makeDeps();
  const request = checkRequest({ path: "/admin" });
  delete (request.attributes.request.http.headers as Record<string, string>)["x-request-id"];
  const response = await evaluateCheck(request, deps);
  assert.equal(records[0].requestId, "123");
  assert.equal(headerMap(response.denied_response?.headers)["x-tailvoy-request-id"], "123");
});

// ---------------------------------------------------------------------------------------------
// Header encodings, addresses, secrets

interface Golden {
  appCapabilities: {
    name: string;
    capMap: Record<string, unknown[]>;
    accept: string[];
    header: string | null;
  }[];
  qEncoding: [string, string][];
}

Deno.test("Tailscale-App-Capabilities and Q-encoding match tailscale serve byte for byte (Go golden vectors)", async () => {
  const golden: Golden = JSON.parse(await Deno.readTextFile(join(FIXTURES, "app_caps_golden.json")));
  assert.ok(golden.appCapabilities.length >= 8 && golden.qEncoding.length >= 8);
  for (const c of golden.appCapabilities) {
    assert.equal(formatAppCapabilities(c.capMap, c.accept), c.header ?? undefined, c.name);
  }
  for (const [input, output] of golden.qEncoding) assert.equal(encodeHeaderValue(input), output, input);
});

Deno.test("goJson: Go's escapes, lone surrogates, escaped backslashes", () => {
  assert.equal(goJson({ a: "<&>\u2028" }), '{"a":"\\u003c\\u0026\\u003e\\u2028"}');
  assert.equal(goJson("\ud800x"), '"\\ufffdx"');
  assert.equal(goJson("\\ud800"), '"\\\\ud800"');
  assert.equal(goJson(undefined), "null");
  assert.equal(encodeHeaderValue("bad \ud800"), "", "not valid Unicode: empty, as serve does for bad UTF-8");
});

Deno.test("classifyAddress", () => {
  const table: [string, string][] = [
    ["100.64.0.1", "tailnet"],
    ["100.127.255.255", "tailnet"],
    ["100.63.255.255", "other"],
    ["100.128.0.0", "other"],
    ["127.0.0.1", "loopback"],
    ["127.9.9.9", "loopback"],
    ["fd7a:115c:a1e0::1", "tailnet"],
    ["fd7a:115c:a1e0:ab12:4843:cd96:6258:b240", "tailnet"],
    ["fd7a:115c:a1e1::1", "other"],
    ["::1", "loopback"],
    ["::ffff:127.0.0.1", "loopback"],
    ["::ffff:100.64.0.1", "other"],
    ["FD7A:115C:A1E0::1", "invalid"],
    ["fd7a:115c:a1e0::1%eth0", "invalid"],
    ["100.064.0.1", "invalid"],
    ["1:2:3:4:5:6:7:8:9", "invalid"],
    ["", "invalid"],
  ];
  for (const [ip, kind] of table) assert.equal(classifyAddress(ip), kind, ip);
});

Deno.test("secrets: generated ones are valid; bad ones are refused by length, never echoed", () => {
  const s = generateSecret();
  assert.match(s, /^[A-Za-z0-9_-]{43}$/);
  assert.notEqual(s, generateSecret());
  assert.equal(secretProblem(s), undefined);
  assert.match(secretProblem("abc") ?? "", /Secret of 3 characters is too short/);
  assert.doesNotMatch(secretProblem("contains a space.....") ?? "", /space/);
  assert.match(secretProblem("ünïcode-secret-ünïcode") ?? "", /not printable ASCII/);
});

// ---------------------------------------------------------------------------------------------
// Protos

Deno.test("protos load with read-only permissions, from any working directory", async () => {
  const script = join(FIXTURES, "load_protos.ts");
  const run = async (flags: string[]) => {
    const out = await new Deno.Command(Deno.execPath(), {
      args: ["run", CACHED_ONLY, "--config", join(PROJECT_ROOT, "deno.json"), ...flags, script],
      cwd: "/",
      stdout: "piped",
      stderr: "piped",
    }).output();
    const text = new TextDecoder().decode(out.stdout);
    assert.ok(out.success, `child failed: ${new TextDecoder().decode(out.stderr)}`);
    return JSON.parse(text);
  };
  const ok = await run([`--allow-read=${PROTO_DIR}`, "--allow-sys=uid"]);
  assert.equal(ok.ok, true, ok.error);
  assert.equal(ok.protoDir, PROTO_DIR);
  for (const name of ["Any", "BoolValue", "Struct", "Timestamp", "Value"]) {
    assert.ok(ok.wellKnown.includes(`google.protobuf.${name}`), name);
  }
  const denied = await run([`--allow-read=${PROTO_DIR}`]);
  assert.equal(denied.ok, false);
  assert.match(denied.error, /needs --allow-sys=uid/);
});

Deno.test("protos: a CheckRequest captured from Envoy 1.40 decodes and re-encodes byte for byte", async () => {
  const protos = loadAuthzProtos();
  const bytes = await Deno.readFile(join(FIXTURES, "check_request.bin"));
  // deno-lint-ignore no-explicit-any
  const request = protos.decodeCheckRequest(bytes) as any;
  const a = request.attributes;
  assert.deepEqual(a.source.address.socket_address, {
    address: "100.64.0.2",
    port_value: 12345,
    port_specifier: "port_value",
  });
  assert.equal(a.destination.address.socket_address.address, "127.0.0.1");
  assert.deepEqual(a.context_extensions, { listener: "web" });
  const http = a.request.http;
  assert.equal(http.method, "GET");
  assert.equal(http.path, "/api/items?x=1", "normalised by Envoy before ext_authz");
  assert.equal(http.host, HOST);
  assert.equal(http.protocol, "HTTP/1.1");
  assert.equal(http.headers[":path"], "/api/items?x=1");
  assert.equal(http.headers["x-forwarded-for"], "100.64.0.9,100.64.0.2", "Envoy appends the PROXY source");
  assert.equal(http.headers["x-tailscale-user"], undefined, "stripped by header_mutation before ext_authz");
  assert.match(http.headers["x-request-id"], /^[0-9a-f-]{36}$/);
  assert.deepEqual(a.metadata_context.filter_metadata[SECRET_METADATA_NAMESPACE].fields[SECRET_KEY], {
    stringValue: SECRET,
    kind: "stringValue",
  });
  assert.deepEqual(protos.encodeCheckRequest(request), bytes, "no field lost by the trimmed protos");
  // And the decoded request is what evaluateCheck expects.
  const { deps } = makeDeps();
  assertAllowed(await evaluateCheck(request, deps), "fixture");
});

Deno.test("protos: CheckResponse field numbers are upstream's (hand-encoded bytes)", () => {
  const protos = loadAuthzProtos();
  const bytes = protos.encodeCheckResponse({
    status: { code: 0 },
    ok_response: {
      headers: [{
        header: { key: "k", value: "v" },
        append: { value: false },
        append_action: "OVERWRITE_IF_EXISTS_OR_ADD",
        keep_empty_value: true,
      }],
      headers_to_remove: ["r"],
    },
  });
  // status=1 {code=1 0}; ok_response=3 { headers=2 { header=1 {key=1 "k", value=2 "v"},
  // append=2 {value=1 false} (present: what older Envoys check), append_action=3 2, keep_empty_value=4 1 },
  // headers_to_remove=5 "r" }
  const expected = "0a020800 1a15 1210 0a06 0a016b 120176 12020800 1802 2001 2a0172";
  assert.equal([...bytes].map((b) => b.toString(16).padStart(2, "0")).join(""), expected.replaceAll(" ", ""));
  const denied = protos.encodeCheckResponse({
    status: { code: 7 },
    denied_response: { status: { code: "Forbidden" }, body: "x" },
  });
  // status=1 {code=1 7}; denied_response=2 { status=1 {code=1 403}, body=3 "x" }
  assert.equal(
    [...denied].map((b) => b.toString(16).padStart(2, "0")).join(""),
    "0a020807" + "1208" + "0a030893031a0178",
  );
  // deno-lint-ignore no-explicit-any
  const back = protos.decodeCheckResponse(denied) as any;
  assert.equal(back.http_response, "denied_response");
  assert.equal(back.denied_response.status.code, "Forbidden");
});

// ---------------------------------------------------------------------------------------------
// The gRPC server on its own

Deno.test("createAuthzServer: grpc-js server under Deno answers a grpc-js client; bad settings throw", async () => {
  const { deps } = makeDeps();
  const server = createAuthzServer({ check: (request) => evaluateCheck(request, deps) });
  await assert.rejects(server.listen("nonsense"), /Authz address "nonsense" is not host:port/);
  const { port } = await server.listen("127.0.0.1:0");
  await assert.rejects(server.listen("127.0.0.1:0"), /already listening/);
  const protos = loadAuthzProtos();
  const Client = grpc.makeGenericClientConstructor(protos.service, "Authorization");
  const client = new Client(`127.0.0.1:${port}`, grpc.credentials.createInsecure());
  try {
    const call = (request: unknown) =>
      new Promise<CheckResponse>((resolve, reject) =>
        // deno-lint-ignore no-explicit-any
        (client as any).Check(
          request,
          (error: Error | null, response: CheckResponse) => error ? reject(error) : resolve(response),
        )
      );
    const ok = await call(checkRequest());
    assert.equal(ok.status.code, 0);
    assert.equal(ok.http_response, "ok_response");
    const denied = await call(checkRequest({ path: "/admin" }));
    assert.equal(denied.status.code, 7);
    assert.equal(denied.denied_response?.body, DENY_BODY);
  } finally {
    client.close();
    await server.close();
  }
  await assert.rejects(server.listen("127.0.0.1:0"), /closed/);
});

// ---------------------------------------------------------------------------------------------
// End to end through Envoy 1.40

const encoder = new TextEncoder();
const decoder = new TextDecoder();

/** PROXY v2 header, encoded here on purpose (independent of lib/proxy_protocol). */
function proxyV2(
  source: { ip: string; port: number },
  destination: { ip: string; port: number },
  tlvs: [number, Uint8Array][] = [],
): Uint8Array {
  const v6 = source.ip.includes(":");
  const addr = (ip: string) => {
    if (!v6) return ip.split(".").map(Number);
    const [head, tail = ""] = ip.split("::");
    const h = head ? head.split(":") : [];
    const t = tail ? tail.split(":") : [];
    const groups = [...h, ...Array(8 - h.length - t.length).fill("0"), ...t].map((g) => parseInt(g, 16));
    return groups.flatMap((g) => [g >> 8, g & 0xff]);
  };
  const tlvBytes = tlvs.flatMap(([type, value]) => [type, value.length >> 8, value.length & 0xff, ...value]);
  const body = [
    ...addr(source.ip),
    ...addr(destination.ip),
    source.port >> 8,
    source.port & 0xff,
    destination.port >> 8,
    destination.port & 0xff,
    ...tlvBytes,
  ];
  const signature = [0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a];
  return new Uint8Array([
    ...signature,
    0x21,
    v6 ? 0x21 : 0x11,
    body.length >> 8,
    body.length & 0xff,
    ...body,
  ]);
}

/**
 * Reads one HTTP/1.1 response: the head, then `content-length` bytes (or to EOF without one). Not
 * waiting for EOF matters: after a 400 Envoy holds the connection for its 1s delayed-close timeout.
 */
async function readResponse(conn: Deno.Conn): Promise<string> {
  const chunks: Uint8Array[] = [];
  const buf = new Uint8Array(16384);
  while (true) {
    const text = decoder.decode(concat(...chunks));
    const end = text.indexOf("\r\n\r\n");
    const length = /\r\ncontent-length:\s*(\d+)/i.exec(text.slice(0, end));
    if (end >= 0 && length && encoder.encode(text).length >= end + 4 + Number(length[1])) return text;
    const n = await conn.read(buf).catch(() => null);
    if (n === null) return text;
    chunks.push(buf.slice(0, n));
  }
}

interface RawResponse {
  status: number;
  headers: [string, string][];
  body: string;
}

function parseResponse(text: string): RawResponse {
  const split = text.indexOf("\r\n\r\n");
  const [statusLine, ...lines] = text.slice(0, split).split("\r\n");
  return {
    status: Number(statusLine.split(" ")[1]),
    headers: lines.map((l) => [l.slice(0, l.indexOf(":")).toLowerCase(), l.slice(l.indexOf(":") + 1).trim()]),
    body: text.slice(split + 4),
  };
}

/** What the echo backend saw: the request target and every header line, duplicates kept. */
interface Echo {
  target: string;
  headers: [string, string][];
}

/** An HTTP/1.1 backend that answers with the raw request head it received (so duplicates show). */
function startEchoBackend(): { port: number; close(): Promise<void> } {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const serving = (async () => {
    const tasks: Promise<void>[] = [];
    for await (const conn of listener) {
      tasks.push((async () => {
        let head = "";
        const buf = new Uint8Array(16384);
        while (!head.includes("\r\n\r\n")) {
          const n = await conn.read(buf).catch(() => null);
          if (n === null) break;
          head += decoder.decode(buf.subarray(0, n));
        }
        const [requestLine, ...lines] = head.slice(0, head.indexOf("\r\n\r\n")).split("\r\n");
        const echo: Echo = {
          target: requestLine?.split(" ")[1] ?? "",
          headers: lines.map((
            l,
          ) => [l.slice(0, l.indexOf(":")).toLowerCase(), l.slice(l.indexOf(":") + 1).trim()]),
        };
        const body = encoder.encode(JSON.stringify(echo));
        await conn.write(encoder.encode(
          `HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: ${body.length}\r\nconnection: close\r\n\r\n`,
        )).catch(() => {});
        await conn.write(body).catch(() => {});
        conn.close();
      })());
    }
    await Promise.all(tasks);
  })();
  return {
    port: (listener.addr as Deno.NetAddr).port,
    close: async () => {
      listener.close();
      await serving;
    },
  };
}

interface EnvoyProcess {
  ports: Record<string, number>;
  stderr: () => string;
  stop(): Promise<void>;
}

async function startEnvoy(vars: Record<string, number>): Promise<EnvoyProcess> {
  const dir = await Deno.makeTempDir({ prefix: "tailvoy-extauthz-" });
  let yaml = await Deno.readTextFile(join(FIXTURES, "envoy.yaml"));
  for (const [name, value] of Object.entries(vars)) yaml = yaml.replaceAll(`__${name}__`, String(value));
  assert.doesNotMatch(yaml, /__[A-Z_]+__/, "every placeholder filled");
  await Deno.writeTextFile(join(dir, "envoy.yaml"), yaml);
  const adminPath = join(dir, "admin");
  const child = new Deno.Command(PEER_BINS.envoy, {
    args: [
      "-c",
      join(dir, "envoy.yaml"),
      "--disable-hot-restart",
      "--admin-address-path",
      adminPath,
      "--concurrency",
      "1",
      "-l",
      "error",
    ],
    stdin: "null",
    stdout: "null",
    stderr: "piped",
  }).spawn();
  let stderr = "";
  const draining = child.stderr.pipeTo(
    new WritableStream({ write: (chunk) => void (stderr += decoder.decode(chunk)) }),
  ).catch(() => {});
  let exited = false;
  const status = child.status.then((s) => (exited = true, s));
  const stop = async () => {
    if (!exited) child.kill("SIGTERM");
    await status;
    await draining;
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  };
  try {
    const deadline = Date.now() + 10_000;
    while (true) {
      if (exited) throw new Error(`Envoy exited during start-up:\n${stderr}`);
      if (Date.now() > deadline) throw new Error(`Envoy not ready within 10s:\n${stderr}`);
      const admin = (await Deno.readTextFile(adminPath).catch(() => "")).trim();
      if (admin) {
        const ready = await fetch(`http://${admin}/ready`).catch(() => undefined);
        await ready?.body?.cancel();
        if (ready?.status === 200) {
          const listeners = await (await fetch(`http://${admin}/listeners?format=json`)).json();
          const ports: Record<string, number> = {};
          for (const l of listeners.listener_statuses) {
            ports[l.name] = l.local_address.socket_address.port_value;
          }
          return { ports, stderr: () => stderr, stop };
        }
      }
      await delay(25);
    }
  } catch (error) {
    await stop();
    throw error;
  }
}

Deno.test({
  name: "end to end through Envoy 1.40: capture, headers, hygiene, normalisation, gRPC, failure modes",
  // grpc-js keeps internal timers (idle/keepalive) alive briefly after close.
  sanitizeOps: false,
  sanitizeResources: false,
  async fn(t) {
    try {
      await Deno.stat(PEER_BINS.envoy);
    } catch {
      assert.fail(`Envoy is not installed at ${PEER_BINS.envoy}: run \`deno task peers\``);
    }
    const protos = loadAuthzProtos();
    const { deps, source, records } = makeDeps();
    const backend = startEchoBackend();
    // The gRPC app behind Envoy: the Authorization service again, answering a recognisable status.
    const app = new grpc.Server();
    app.addService(protos.service, {
      Check: (_call: unknown, callback: grpc.sendUnaryData<unknown>) =>
        callback(null, { status: { code: 0, message: "from the gRPC app" } }),
    });
    const appPort = await new Promise<number>((resolve, reject) =>
      app.bindAsync(
        "127.0.0.1:0",
        grpc.ServerCredentials.createInsecure(),
        (e, p) => e ? reject(e) : resolve(p),
      )
    );
    // First Check answered by a capturing server (raw bytes as Envoy sent them), then by ours.
    const captured: Uint8Array[] = [];
    const check = protos.service.Check;
    const capturing = (bytes: Buffer) => {
      captured.push(new Uint8Array(bytes));
      return check.requestDeserialize(bytes);
    };
    const capture = new grpc.Server();
    capture.addService({ Check: { ...check, requestDeserialize: capturing } }, {
      Check: (call: grpc.ServerUnaryCall<unknown, unknown>, callback: grpc.sendUnaryData<unknown>) =>
        void evaluateCheck(call.request, deps).then((r) => callback(null, r)),
    });
    const authzPort = await new Promise<number>((resolve, reject) =>
      capture.bindAsync(
        "127.0.0.1:0",
        grpc.ServerCredentials.createInsecure(),
        (e, p) => e ? reject(e) : resolve(p),
      )
    );
    let server: ReturnType<typeof createAuthzServer> | undefined;
    let envoy: EnvoyProcess | undefined;
    let relay: Deno.Listener | undefined;
    try {
      envoy = await startEnvoy({
        AUTHZ_PORT: authzPort,
        BACKEND_PORT: backend.port,
        GRPC_BACKEND_PORT: appPort,
      });

      /** One HTTP/1.1 request from `ip` over a fresh connection with our PROXY header. */
      const send = async (
        request: { target?: string; headers?: string[]; method?: string; host?: string; listener?: string },
        from: { ip?: string; port?: number; secret?: string | Uint8Array | null } = {},
      ): Promise<RawResponse> => {
        const port = envoy!.ports[request.listener ?? "web"];
        const dest = { ip: "127.0.0.1", port };
        const conn = await Deno.connect({ hostname: "127.0.0.1", port });
        try {
          const secret = from.secret === undefined ? SECRET : from.secret;
          const tlvs: [number, Uint8Array][] = secret === null
            ? []
            : [[0xe0, typeof secret === "string" ? encoder.encode(secret) : secret]];
          await conn.write(proxyV2({ ip: from.ip ?? "100.64.0.2", port: from.port ?? 12345 }, dest, tlvs));
          const head = [
            `${request.method ?? "GET"} ${request.target ?? "/api/items"} HTTP/1.1`,
            `Host: ${request.host ?? HOST}`,
            ...(request.headers ?? []),
            "Connection: close",
          ];
          await conn.write(encoder.encode(`${head.join("\r\n")}\r\n\r\n`));
          return parseResponse(await readResponse(conn));
        } finally {
          closeQuietly(conn);
        }
      };
      const echoOf = (r: RawResponse): Echo => {
        assert.equal(r.status, 200, `expected the backend, got ${r.status}: ${r.body}\n${envoy?.stderr()}`);
        return JSON.parse(r.body);
      };
      const values = (echo: Echo, name: string) => echo.headers.filter(([k]) => k === name).map(([, v]) => v);

      await t.step("capture: the CheckRequest Envoy sends", async () => {
        const r = await send({
          target: "/public/../api//items?x=1",
          headers: ["X-Tailscale-User: evil@example.com", "X-Forwarded-For: 100.64.0.9"],
        });
        echoOf(r);
        assert.equal(captured.length, 1);
        const fixture = join(FIXTURES, "check_request.bin");
        if (Deno.env.get("TAILVOY_UPDATE_FIXTURES")) await Deno.writeFile(fixture, captured[0]);
        // deno-lint-ignore no-explicit-any
        const fresh = protos.decodeCheckRequest(captured[0]) as any;
        // deno-lint-ignore no-explicit-any
        const saved = protos.decodeCheckRequest(await Deno.readFile(fixture)) as any;
        for (const path of ["source", "context_extensions", "metadata_context"]) {
          assert.deepEqual(fresh.attributes[path], saved.attributes[path], path);
        }
        for (const field of ["method", "path", "host", "scheme", "protocol"]) {
          assert.equal(fresh.attributes.request.http[field], saved.attributes.request.http[field], field);
        }
        assert.deepEqual(
          Object.keys(fresh.attributes.request.http.headers).sort(),
          Object.keys(saved.attributes.request.http.headers).sort(),
        );
        // From now on, our server answers on the same port.
        await new Promise<void>((resolve) => capture.tryShutdown(() => resolve()));
        server = createAuthzServer({ check: (request) => evaluateCheck(request, deps) });
        await server.listen(`127.0.0.1:${authzPort}`);
      });

      await t.step("allow: identity headers reach the backend once; client copies do not", async () => {
        const echo = echoOf(
          await send({
            headers: [
              "X-Tailscale-User: evil@example.com",
              "Tailscale-User-Login: evil@example.com",
              "X-Tailscale-Extra: 1",
              "Tailscale-App-Capabilities: {}",
            ],
          }),
        );
        assert.equal(echo.target, "/api/items");
        assert.deepEqual(values(echo, "x-tailscale-user"), ["alice@example.com"]);
        assert.deepEqual(values(echo, "x-tailscale-node"), ["alice.tail1234.ts.net"]);
        assert.deepEqual(values(echo, "x-tailscale-ip"), ["100.64.0.2"]);
        assert.deepEqual(values(echo, "x-tailscale-tags"), [""]);
        assert.deepEqual(values(echo, "tailscale-user-login"), ["alice@example.com"]);
        assert.deepEqual(values(echo, "tailscale-user-name"), ["=?utf-8?q?Alice_Zo=C3=AB?="]);
        assert.deepEqual(values(echo, "x-tailscale-extra"), []);
        assert.deepEqual(values(echo, "tailscale-app-capabilities"), []);
      });

      await t.step("allow: a tagged caller's spoofed serve headers are removed", async () => {
        const echo = echoOf(
          await send({ headers: ["Tailscale-User-Login: evil@example.com"] }, { ip: "100.64.0.3" }),
        );
        assert.deepEqual(values(echo, "x-tailscale-user"), [""]);
        assert.deepEqual(values(echo, "x-tailscale-tags"), ["tag:ci,tag:prod"]);
        assert.deepEqual(values(echo, "tailscale-user-login"), []);
      });

      await t.step(
        "without header_mutation (bare listener) our answer alone overwrites and removes",
        async () => {
          const spoof = [
            "X-Tailscale-User: evil@example.com",
            "X-Tailscale-Tags: tag:admin",
            "Tailscale-User-Login: evil@example.com",
            "X-Tailscale-Extra: 1",
          ];
          const user = echoOf(await send({ listener: "bare", headers: spoof }));
          // Overwritten, not duplicated: `append: {value: false}` + OVERWRITE_IF_EXISTS_OR_ADD on 1.40.
          assert.deepEqual(values(user, "x-tailscale-user"), ["alice@example.com"]);
          assert.deepEqual(values(user, "x-tailscale-tags"), [""]);
          assert.deepEqual(values(user, "tailscale-user-login"), ["alice@example.com"]);
          assert.deepEqual(values(user, "x-tailscale-extra"), [], "removed through headers_to_remove");
          const tagged = echoOf(await send({ listener: "bare", headers: spoof }, { ip: "100.64.0.3" }));
          assert.deepEqual(values(tagged, "x-tailscale-user"), [""]);
          assert.deepEqual(values(tagged, "x-tailscale-tags"), ["tag:ci,tag:prod"]);
          assert.deepEqual(values(tagged, "tailscale-user-login"), [], "serve sends none for tagged nodes");
        },
      );

      await t.step("x_tailscale_user (underscore) is rejected by Envoy with 400", async () => {
        const r = await send({ headers: ["x_tailscale_user: evil@example.com"] });
        assert.equal(r.status, 400);
      });

      await t.step("X-Forwarded-For does not change the identity", async () => {
        source.calls = [];
        const echo = echoOf(await send({ headers: ["X-Forwarded-For: 100.64.0.9"] }));
        assert.deepEqual(values(echo, "x-tailscale-user"), ["alice@example.com"]);
        assert.deepEqual(source.calls.map((c) => c.addr), ["100.64.0.2"]);
        const denied = await send({ target: "/admin", headers: ["X-Forwarded-For: 100.64.0.9"] });
        assert.equal(denied.status, 403, "alice may not, even claiming to be mallory");
      });

      await t.step("a deny: 403 with our body and request id", async () => {
        const r = await send({ target: "/admin" });
        assert.equal(r.status, 403);
        assert.equal(r.body, DENY_BODY);
        const headers = Object.fromEntries(r.headers);
        assert.equal(headers["content-type"], "application/json");
        assert.match(headers["x-tailvoy-request-id"], /^[0-9a-f-]{36}$/);
        assert.equal(records.at(-1)?.code, "no_match");
      });

      await t.step("path normalisation: decided and forwarded on the normalised path", async () => {
        const denied = await send({ target: "/api/../admin" });
        assert.equal(denied.status, 403);
        assert.equal(records.at(-1)?.path, "/admin");
        const echo = echoOf(await send({ target: "/public/./../api//items" }));
        assert.equal(echo.target, "/api/items");
        assert.equal(records.at(-1)?.path, "/api/items");
      });

      await t.step("%2F in the path is rejected by Envoy with 400", async () => {
        const r = await send({ target: "/api/x%2F..%2Fadmin" });
        assert.equal(r.status, 400);
      });

      await t.step("a Host outside every virtual host's route: no listener context, 403", async () => {
        const r = await send({ target: "/", host: "other.example" }, { ip: "100.64.0.9" });
        assert.equal(r.status, 403);
        assert.equal(records.at(-1)?.code, "no_listener");
      });

      await t.step(
        "gRPC through Envoy: allowed call reaches the app; denied call is PERMISSION_DENIED",
        async () => {
          // Stands in for our relay: prepends the PROXY header for whichever caller is current.
          relay = Deno.listen({ hostname: "127.0.0.1", port: 0 });
          let caller = "100.64.0.2";
          const grpcPort = envoy!.ports.grpc;
          (async () => {
            for await (const conn of relay!) {
              const upstream = await Deno.connect({ hostname: "127.0.0.1", port: grpcPort });
              await upstream.write(
                proxyV2({ ip: caller, port: 2222 }, { ip: "127.0.0.1", port: grpcPort }, [[
                  0xe0,
                  encoder.encode(SECRET),
                ]]),
              );
              conn.readable.pipeTo(upstream.writable).catch(() => {});
              upstream.readable.pipeTo(conn.writable).catch(() => {});
            }
          })().catch(() => {});
          const Client = grpc.makeGenericClientConstructor(protos.service, "Authorization");
          const call = (who: string) => {
            caller = who;
            const client = new Client(
              `127.0.0.1:${(relay!.addr as Deno.NetAddr).port}`,
              grpc.credentials.createInsecure(),
            );
            return new Promise<{ code: number; details?: string; message?: string }>((resolve) =>
              // deno-lint-ignore no-explicit-any
              (client as any).Check({}, (error: grpc.ServiceError | null, response: any) => {
                client.close();
                resolve(
                  error
                    ? { code: error.code, details: error.details }
                    : { code: 0, message: response.status?.message },
                );
              })
            );
          };
          assert.deepEqual(await call("100.64.0.9"), { code: 0, message: "from the gRPC app" });
          assert.equal(records.at(-1)?.listener, "rpc");
          assert.equal(records.at(-1)?.path, "/envoy.service.auth.v3.Authorization/Check");
          assert.deepEqual(await call("100.64.0.4"), {
            code: grpc.status.PERMISSION_DENIED,
            details: DENY_MESSAGE,
          });
          assert.equal(records.at(-1)?.code, "no_rules");
        },
      );

      await t.step("slow authz (over the 250ms timeout): 403", async () => {
        const r = await send({}, { ip: "100.64.0.10" });
        assert.equal(r.status, 403);
        assert.equal(r.body, "", "Envoy's own 403 (status_on_error), not ours");
      });

      await t.step("ext_authz server stopped: 403 (failure_mode_allow: false)", async () => {
        await server!.close();
        const before = records.length;
        const r = await send({});
        assert.equal(r.status, 403);
        assert.equal(r.body, "", "Envoy's own 403");
        assert.equal(records.length, before, "no Check reached us");
      });
    } finally {
      relay?.close();
      await envoy?.stop();
      await server?.close();
      capture.forceShutdown();
      app.forceShutdown();
      await backend.close();
    }
  },
});
