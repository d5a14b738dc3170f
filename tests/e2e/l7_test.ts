/**
 * L7 end to end: the real proxy process with the real Envoy and our ext_authz, beside the gateway's real
 * tailscaled; callers on real tailnet nodes. Identity headers, 403s, header spoofing, a forged PROXY
 * header sent straight to Envoy by a local process, path tricks, Envoy killed mid-run (restarted, L4
 * unaffected), and the decision metrics.
 */

import assert from "node:assert/strict";
import { join } from "node:path";
import { encodeProxyV2 } from "../../lib/proxy_protocol/mod.ts";
import { echoBackend, http } from "../../scripts/harness/clients.ts";
import { fixture, tailnetFixture, tempDir } from "../../scripts/harness/fixture.ts";
import { Proxy, tcpEcho } from "../../scripts/harness/proxy.ts";
import { CAP, defaultPolicy, type Policy, waitFor } from "../../scripts/harness/tailnet.ts";
import { LocalApiClient } from "../../lib/localapi/mod.ts";

const enc = new TextEncoder();
const dec = new TextDecoder();

function l7Policy(): Policy {
  const p = defaultPolicy();
  // alice (group:eng): web /api/* and db (the default policy); ci: web, GET only.
  p.grants = [
    { src: ["*"], dst: ["*"], ip: ["*"] },
    {
      src: ["group:eng"],
      dst: ["tag:gw"],
      app: { [CAP]: [{ listeners: ["web"], routes: ["/api/*"] }, { listeners: ["db"] }] },
    },
    { src: ["tag:ci"], dst: ["tag:gw"], app: { [CAP]: [{ listeners: ["web"], methods: ["GET"] }] } },
  ];
  return p;
}

Deno.test.sanitizer({ ops: false, resources: false });

const WEB = 17080;
const DB = 17081;

const tailnetOnce = tailnetFixture();

/** The tailnet with this file's policy, seen by the gateway. */
async function l7Tailnet() {
  const tailnet = await tailnetOnce();
  await tailnet.usePolicy(l7Policy());
  using api = new LocalApiClient(tailnet.node("gw").socket);
  await waitFor(async () => {
    const caps = (await api.whois(tailnet.node("ci").ipv4)).CapMap[CAP];
    return JSON.stringify(caps) === JSON.stringify([{ listeners: ["web"], methods: ["GET"] }])
      ? true
      : undefined;
  }, { what: "the L7 test policy", timeoutMs: 15_000 });
  return tailnet;
}

/** The backends and the proxy with its Envoy. */
const gatewayOnce = fixture(async (cleanup) => {
  const tailnet = await l7Tailnet();
  const dir = await tempDir(cleanup, "tailvoy-l7-");
  const backend = echoBackend();
  cleanup.defer(() => backend.close());
  const echo = tcpEcho();
  cleanup.defer(() => echo.close());
  const file = join(dir, "l7.yaml");
  await Deno.writeTextFile(
    file,
    [
      "tailscale:",
      "  serviceMappings: {gw: [web, db]}",
      "listeners:",
      "  web:",
      `    port: ${WEB}`,
      "    protocol: http",
      `    backend: 127.0.0.1:${backend.port}`,
      `  db: {port: ${DB}, protocol: tcp, backend: "127.0.0.1:${echo.port}"}`,
      "tailvoy:",
      `  adminAddress: "127.0.0.1:0"`,
      `  envoyBinary: ${join(Deno.cwd(), ".peers", "bin", "envoy")}`,
      "",
    ].join("\n"),
  );
  const proxy = new Proxy(file, tailnet.node("gw").socket);
  cleanup.defer(async () => void await proxy.stop());
  await proxy.waitLog(/"message":"ready:/, "ready");
  const envoyLine = JSON.parse(await proxy.waitLog(/"logger":"tailvoy.l7"/, "Envoy ready"));
  return { proxy, envoyPort: envoyLine.ports.web as number, envoyPid: envoyLine.pid as number };
});

/** The running gateway with this file's policy in place, and a request to web from a node. */
async function gateway() {
  const g = await gatewayOnce();
  const tailnet = await l7Tailnet();
  const gw = tailnet.node("gw");
  const get = (who: string, path: string, options: Parameters<typeof http>[2] = {}) =>
    tailnet.dial(who, gw.ipv4, WEB).then((c) => http(c, path, options));
  return { ...g, tailnet, gw, alice: tailnet.node("alice"), bob: tailnet.node("bob"), get };
}

Deno.test("L7: alice: 200 with identity headers set by us", async () => {
  const { get, alice } = await gateway();
  const r = await get("alice", "/api/users");
  assert.equal(r.status, 200, r.body);
  const seen = JSON.parse(r.body);
  assert.equal(seen.path, "/api/users");
  assert.equal(seen.headers["x-tailscale-user"], "alice");
  assert.equal(seen.headers["x-tailscale-node"], alice.fqdn);
  assert.equal(seen.headers["x-tailscale-ip"], alice.ipv4);
});

Deno.test("L7: bob: 403 with tailvoy's JSON body; alice outside her routes: 403", async () => {
  const { get } = await gateway();
  const r = await get("bob", "/api/users");
  assert.equal(r.status, 403);
  assert.deepEqual(JSON.parse(r.body), {
    error: "forbidden",
    message: "access denied by tailvoy policy",
  });
  assert.equal((await get("alice", "/admin")).status, 403);
});

Deno.test("L7: methods: ci may GET but not POST", async () => {
  const { get } = await gateway();
  assert.equal((await get("ci", "/anything")).status, 200);
  assert.equal((await get("ci", "/anything", { method: "POST" })).status, 403);
});

Deno.test("L7: spoofing: client identity headers and X-Forwarded-For change nothing", async () => {
  const { get, alice, bob } = await gateway();
  const r = await get("alice", "/api/me", {
    headers: {
      "X-Tailscale-User": "bob",
      "Tailscale-User-Login": "bob",
      "X-Tailscale-Extra": "x",
      "X-Forwarded-For": bob.ipv4,
    },
  });
  assert.equal(r.status, 200);
  const h = JSON.parse(r.body).headers;
  assert.equal(h["x-tailscale-user"], "alice");
  assert.equal(h["tailscale-user-login"], "alice");
  assert.equal(h["x-tailscale-extra"], undefined);
  // bob claiming alice via XFF is still bob.
  assert.equal(
    (await get("bob", "/api/users", { headers: { "X-Forwarded-For": alice.ipv4 } })).status,
    403,
  );
  // An underscore variant is refused outright.
  assert.equal(
    (await get("alice", "/api/users", { headers: { "x_tailscale_user": "bob" } })).status,
    400,
  );
});

Deno.test(
  "L7: forwarding and override headers: set from the connection, or removed, whatever the client sends",
  async () => {
    const { get, alice, bob } = await gateway();
    const r = await get("alice", "/api/me", {
      headers: {
        "X-Forwarded-For": `${bob.ipv4}, 10.0.0.1`,
        "X-Real-IP": bob.ipv4,
        "Forwarded": `for=${bob.ipv4};proto=https`,
        "X-Forwarded-Proto": "https",
        "X-Forwarded-Host": "evil.example.com",
        "X-Original-URL": "/admin",
        "X-Rewrite-URL": "/admin",
        "X-HTTP-Method-Override": "DELETE",
        "X-HTTP-Method": "DELETE",
        "X-Method-Override": "DELETE",
      },
    });
    assert.equal(r.status, 200, r.body);
    const h = JSON.parse(r.body).headers as Record<string, string>;
    assert.equal(h["x-forwarded-for"], alice.ipv4, "overwritten, as tailscale serve does");
    assert.equal(h["x-real-ip"], alice.ipv4);
    assert.equal(h["x-forwarded-proto"], "http", "the listener's scheme");
    assert.equal(h["x-forwarded-host"], "app.box.test", "the Host the policy judged");
    for (
      const name of [
        "forwarded",
        "x-original-url",
        "x-rewrite-url",
        "x-http-method-override",
        "x-http-method",
        "x-method-override",
      ]
    ) assert.equal(h[name], undefined, `${name} removed`);
  },
);

Deno.test(
  "L7: refusals Envoy makes itself carry our JSON body and request id, with truthful statuses",
  async () => {
    const { get } = await gateway();
    const cases: [string, Parameters<typeof http>[2], number, string][] = [
      ["/api/users", { method: "get" }, 400, "http1.codec_error"],
      ["/api/users", { method: "FROB" }, 400, "http1.codec_error"],
      ["app.box.test:443", { method: "CONNECT" }, 404, "route_not_found"],
    ];
    for (const [path, options, status, error] of cases) {
      const r = await get("alice", path, options);
      assert.equal(r.status, status, `${options?.method} ${path}: ${r.body}`);
      const body = JSON.parse(r.body);
      assert.equal(body.error, error);
      assert.equal(body.status, status);
      assert.ok("requestId" in body);
      // Once Envoy has parsed the request it has an id, and says it in a header too.
      if (body.requestId !== null) assert.equal(r.headers["x-tailvoy-request-id"], body.requestId);
    }
    assert.ok(
      (await get("alice", "app.box.test:443", { method: "CONNECT" })).headers["x-tailvoy-request-id"],
      "the request id header",
    );
  },
);

Deno.test(
  "L7: header injection: a client's x-tailvoy-peer, -local and -listener change nothing and never reach the backend",
  async () => {
    const { proxy, get, alice, bob } = await gateway();
    const injected = (as: string) => ({
      "X-Tailvoy-Peer": `${as}:1234`,
      "X-Tailvoy-Local": "127.0.0.1:9999",
      "X-Tailvoy-Listener": "db",
    });
    // bob claiming alice's address is still bob.
    assert.equal((await get("bob", "/api/users", { headers: injected(alice.ipv4) })).status, 403);
    // ci claiming alice: still GET-only.
    assert.equal(
      (await get("ci", "/api/users", { method: "POST", headers: injected(alice.ipv4) })).status,
      403,
    );
    // alice naming another listener and an unknown Service port: judged as herself on web.
    const r = await get("alice", "/api/users", { headers: injected(bob.ipv4) });
    assert.equal(r.status, 200, r.body);
    const h = JSON.parse(r.body).headers as Record<string, string>;
    assert.equal(h["x-tailscale-ip"], alice.ipv4);
    assert.deepEqual(
      Object.keys(h).filter((k) => k.startsWith("x-tailvoy-")),
      [],
      "none reach the backend",
    );
    const decision = proxy.records().findLast((l) => l.logger === "tailvoy.decision" && l.layer === "l7");
    assert.equal(decision?.listener, "web");
  },
);

Deno.test(
  "L7: a forged PROXY header sent straight to Envoy by a local process: closed before HTTP",
  async () => {
    const { envoyPort, alice } = await gateway();
    const forged = encodeProxyV2({
      command: "PROXY",
      transport: "tcp",
      source: { address: alice.ipv4, port: 1234 },
      destination: { address: "127.0.0.1", port: envoyPort },
      tlvs: [{ type: 0xe0, value: enc.encode("not-the-secret-but-long-enough-to-try-0123456789") }],
    });
    // Envoy's RBAC filter closes it before reading a request: no status, no ext_authz call.
    const c = await Deno.connect({ hostname: "127.0.0.1", port: envoyPort });
    assert.equal((await http(c, "/api/users", { prefix: forged })).status, 0);
    const noTlv = encodeProxyV2({
      command: "PROXY",
      transport: "tcp",
      source: { address: alice.ipv4, port: 1234 },
      destination: { address: "127.0.0.1", port: envoyPort },
    });
    const c2 = await Deno.connect({ hostname: "127.0.0.1", port: envoyPort });
    assert.equal((await http(c2, "/api/users", { prefix: noTlv })).status, 0);
  },
);

Deno.test("L7: path tricks: traversal is normalised then denied; encoded slashes are rejected", async () => {
  const { get } = await gateway();
  assert.equal((await get("alice", "/api/../admin")).status, 403);
  assert.equal((await get("alice", "/api/%2e%2e/admin")).status, 403);
  assert.equal((await get("alice", "/api%2F..%2Fadmin")).status, 400);
  const ok = await get("alice", "/api//users/./x");
  assert.equal(ok.status, 200);
  assert.equal(JSON.parse(ok.body).path, "/api/users/x", "the backend gets the canonical path");
});

Deno.test("L7: Envoy killed mid-run: restarted; L4 keeps working meanwhile", async () => {
  const { proxy, envoyPid, tailnet, gw, get } = await gateway();
  // A decision of each kind to count.
  assert.equal((await get("alice", "/api/users")).status, 200);
  assert.equal((await get("bob", "/api/users")).status, 403);
  const before = await (await fetch(
    `http://${JSON.parse(await proxy.waitLog(/"logger":"tailvoy.admin"/, "admin")).addr}/metrics`,
  )).text();
  assert.match(before, /tailvoy_decisions_total\{listener="web",layer="l7",result="allow"\} [1-9]/);
  assert.match(before, /tailvoy_decisions_total\{listener="web",layer="l7",result="deny"\} [1-9]/);
  assert.ok(envoyPid > 0, "found Envoy's pid");
  Deno.kill(envoyPid, "SIGKILL");
  const c = await tailnet.dial("alice", gw.ipv4, DB);
  await c.write(enc.encode("during"));
  const buf = new Uint8Array(64);
  const n = await c.read(buf);
  assert.equal(dec.decode(buf.subarray(0, n!)), "echo:during");
  c.close();
  await proxy.waitLog(/restart/i, "Envoy restart logged");
  const back = await waitFor(async () => {
    const r = await get("alice", "/api/users");
    return r.status === 200 ? r : undefined;
  }, { what: "L7 back after the Envoy restart", timeoutMs: 20_000, intervalMs: 250 });
  assert.equal(JSON.parse(back.body).headers["x-tailscale-user"], "alice");
});

Deno.test("L7: the proxy exits 0 on SIGTERM", async () => {
  const { proxy } = await gateway();
  const code = await proxy.stop();
  assert.equal(code, 0, proxy.lines.slice(-6).join("\n"));
});
