/**
 * `acceptAppCaps` with a list of capability names, as `tailscale serve --accept-app-caps` takes it: a
 * backend built like the Goa tscap plugin (scripts/harness/tscap.ts) gets exactly the caller's values of
 * those capabilities, in serve's encoding, while tailvoy's own grant still decides at the proxy.
 */

import assert from "node:assert/strict";
import { join } from "node:path";
import { http } from "../../scripts/harness/clients.ts";
import { fixture, tailnetFixture, tempDir } from "../../scripts/harness/fixture.ts";
import { Proxy } from "../../scripts/harness/proxy.ts";
import { CAP, defaultPolicy, type Policy } from "../../scripts/harness/tailnet.ts";
import { tscapBackend, tscapDecide } from "../../scripts/harness/tscap.ts";

const APP = "example.com/cap/myapp";
const PORT = 17790;

function policy(): Policy {
  const p = defaultPolicy();
  p.grants = [
    { src: ["*"], dst: ["*"], ip: ["*"] },
    // tailvoy: alice and bob may use the listener; ci may not.
    { src: ["group:eng", "bob@"], dst: ["tag:gw"], app: { [CAP]: [{ listeners: ["caps"] }] } },
    // The app's own capability: alice may read items/*; ci may do anything (but tailvoy stops it).
    { src: ["group:eng"], dst: ["tag:gw"], app: { [APP]: [{ action: ["read"], resources: ["items/*"] }] } },
    { src: ["tag:ci"], dst: ["tag:gw"], app: { [APP]: [{ action: ["*"], resources: ["*"] }] } },
  ];
  return p;
}

Deno.test("the tscap-style backend answers as the plugin documents (401, 403, wildcards, exact resources)", () => {
  const grant = (g: unknown) => JSON.stringify({ [APP]: [g] });
  assert.equal(tscapDecide(null, APP, { action: "read", resource: "items/*" }), 401);
  assert.equal(tscapDecide("{}", APP, { action: "read", resource: "items/*" }), 403);
  assert.equal(
    tscapDecide(grant({ action: ["*"], resources: ["items/*"] }), APP, {
      action: "read",
      resource: "items/*",
    }),
    200,
  );
  assert.equal(
    tscapDecide(grant({ action: ["read"], resources: ["items/*"] }), APP, {
      action: "read",
      resource: "items/*",
    }),
    200,
  );
  assert.equal(
    tscapDecide(grant({ action: ["read"], resources: ["items/123"] }), APP, {
      action: "read",
      resource: "items/456",
    }),
    403,
  );
  assert.equal(
    tscapDecide(grant({ action: ["read"], resources: ["items/*"] }), APP, {
      action: "write",
      resource: "items/*",
    }),
    403,
  );
});

Deno.test.sanitizer({ ops: false, resources: false });

const tailnetOnce = tailnetFixture();

/** The tscap-style backend and the proxy in front of it. */
const proxyOnce = fixture(async (cleanup) => {
  const tailnet = await tailnetOnce();
  const backend = tscapBackend(APP);
  cleanup.defer(() => backend.close());
  const dir = await tempDir(cleanup, "tailvoy-appcaps-");
  const file = join(dir, "caps.yaml");
  await Deno.writeTextFile(
    file,
    [
      "tailscale:",
      "  serviceMappings: {gw: [caps]}",
      "listeners:",
      `  caps: {port: ${PORT}, protocol: http, backend: "127.0.0.1:${backend.port}", acceptAppCaps: ["${APP}"]}`,
      "tailvoy:",
      `  adminAddress: "127.0.0.1:0"`,
      `  envoyBinary: ${join(Deno.cwd(), ".peers", "bin", "envoy")}`,
      "",
    ].join("\n"),
  );
  const proxy = new Proxy(file, tailnet.node("gw").socket);
  cleanup.defer(async () => void await proxy.stop());
  await proxy.waitLog(/"message":"ready:/, "ready");
  return proxy;
});

/** A request from `who` through the running proxy, with this file's policy in place. */
async function get(who: string, path: string, headers: Record<string, string> = {}) {
  await proxyOnce();
  const tailnet = await tailnetOnce();
  await tailnet.usePolicy(policy());
  const c = await tailnet.dial(who, tailnet.node("gw").ipv4, PORT);
  return await http(c, path, { headers });
}

Deno.test("acceptAppCaps: alice: read on items/* allowed by the app; write and another resource refused by it", async () => {
  assert.equal((await get("alice", "/read/items/*")).status, 200);
  assert.equal((await get("alice", "/write/items/*")).status, 403);
  assert.equal((await get("alice", "/read/items/123")).status, 403);
});

Deno.test("acceptAppCaps: bob: tailvoy lets him through, the app finds no grant of its capability (403)", async () => {
  const r = await get("bob", "/read/items/*");
  assert.equal(r.status, 403);
  assert.equal(JSON.parse(r.body).status, 403, "the app's answer, not ours");
});

Deno.test("acceptAppCaps: ci: the app would allow anything, but tailvoy's grant decides first (our 403)", async () => {
  const r = await get("ci", "/read/items/*");
  assert.equal(r.status, 403);
  assert.equal(JSON.parse(r.body).error, "forbidden", "tailvoy's deny body");
});

Deno.test("acceptAppCaps: a client's own Tailscale-App-Capabilities never reaches the app", async () => {
  const forged = JSON.stringify({ [APP]: [{ action: ["*"], resources: ["*"] }] });
  assert.equal(
    (await get("alice", "/write/items/*", { "Tailscale-App-Capabilities": forged })).status,
    403,
  );
  assert.equal(
    (await get("bob", "/read/items/*", { "Tailscale-App-Capabilities": forged })).status,
    403,
  );
});
