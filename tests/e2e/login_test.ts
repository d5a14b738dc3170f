/**
 * tailvoy logging tailscaled in: a fresh (not logged in) tailscaled is logged in by the proxy with a
 * headscale pre-auth key (TS_AUTHKEY) and the config's tags, then serves a listener end to end; and the
 * OAuth client exchange (TS_CLIENT_ID/TS_CLIENT_SECRET) against a local fake of the Tailscale API's
 * token and keys endpoints — a fake because the real API is not reachable offline; the keys it hands
 * out are real headscale pre-auth keys, so the login itself is real.
 */

import assert from "node:assert/strict";
import { join } from "node:path";
import { LocalApiClient } from "../../lib/localapi/mod.ts";
import { Proxy, tcpEcho } from "../../scripts/harness/proxy.ts";
import { fixture, tailnetFixture, tempDir } from "../../scripts/harness/fixture.ts";
import { defaultPolicy, type Tailnet } from "../../scripts/harness/tailnet.ts";

const enc = new TextEncoder();
const dec = new TextDecoder();

function configFor(
  tailnet: Tailnet,
  options: { hostname: string; port: number; backend: number; apiBase?: string },
) {
  return [
    "tailscale:",
    `  tags: ["tag:gw"]`,
    `  hostname: ${options.hostname}`,
    "listeners:",
    `  db: {port: ${options.port}, protocol: tcp, backend: "127.0.0.1:${options.backend}"}`,
    "tailvoy:",
    "  ingress: direct",
    `  adminAddress: "127.0.0.1:0"`,
    `  controlUrl: ${tailnet.description.serverUrl}`,
    ...(options.apiBase ? [`  apiBaseUrl: ${options.apiBase}`] : []),
  ].join("\n") + "\n";
}

/** A local stand-in for the Tailscale API's OAuth token and keys endpoints. */
function fakeTailscaleApi(tailnet: Tailnet, goodSecret: string) {
  const minted: { tags: string[]; ephemeral: boolean; preauthorized: boolean }[] = [];
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen: () => {} }, async (req) => {
    const url = new URL(req.url);
    if (req.method === "POST" && url.pathname === "/api/v2/oauth/token") {
      const form = new URLSearchParams(await req.text());
      if (form.get("grant_type") !== "client_credentials" || form.get("client_secret") !== goodSecret) {
        return Response.json({ message: "invalid client credentials" }, { status: 401 });
      }
      return Response.json({ access_token: "test-token", token_type: "Bearer", expires_in: 3600 });
    }
    if (req.method === "POST" && url.pathname === "/api/v2/tailnet/-/keys") {
      if (req.headers.get("authorization") !== "Bearer test-token") {
        return new Response("no", { status: 401 });
      }
      const create = (await req.json()).capabilities.devices.create;
      minted.push(create);
      return Response.json({ key: await tailnet.preauthKey({ tags: create.tags }) });
    }
    return new Response("not found", { status: 404 });
  });
  return { base: `http://127.0.0.1:${server.addr.port}`, minted, close: () => server.shutdown() };
}

Deno.test.sanitizer({ ops: false, resources: false });

const tailnetOnce = tailnetFixture();

/** A directory for the configs and the backend every login test serves. */
const setupOnce = fixture(async (cleanup) => {
  const dir = await tempDir(cleanup, "tailvoy-login-");
  const echo = tcpEcho();
  cleanup.defer(() => echo.close());
  return { dir, echo };
});

/** The set-up, and the tailnet with the default policy (alice may use listener db). */
async function setup() {
  const tailnet = await tailnetOnce();
  await tailnet.usePolicy(defaultPolicy());
  return { tailnet, ...await setupOnce() };
}

Deno.test("login: TS_AUTHKEY: a fresh tailscaled is logged in with the config's tags and serves", async () => {
  const { tailnet, dir, echo } = await setup();
  const bare = await tailnet.startBareNode("gw-key");
  using api = new LocalApiClient(bare.socket);
  assert.equal((await api.status()).BackendState, "NeedsLogin");
  const key = await tailnet.preauthKey({ tags: ["tag:gw"] });
  const file = join(dir, "key.yaml");
  await Deno.writeTextFile(
    file,
    configFor(tailnet, { hostname: "gw-key", port: 17632, backend: echo.port }),
  );
  const proxy = new Proxy(file, bare.socket, { env: { TS_AUTHKEY: key } });
  try {
    await proxy.waitLog(/"message":"ready:/, "ready after logging in");
    const status = await api.status();
    assert.equal(status.BackendState, "Running");
    assert.deepEqual(status.Self?.Tags, ["tag:gw"]);
    assert.equal(status.Self?.HostName, "gw-key");
    const node = await tailnet.adoptNode("gw-key");
    const conn = await tailnet.dial("alice", node.ipv4, 17632);
    await conn.write(enc.encode("hi"));
    const buf = new Uint8Array(64);
    const n = await conn.read(buf);
    assert.equal(dec.decode(buf.subarray(0, n!)), "echo:hi");
    conn.close();
    assert.ok(!proxy.output.includes(key), "the auth key never appears in the log");
  } finally {
    const code = await proxy.stop();
    assert.equal(code, 0, proxy.lines.slice(-6).join("\n"));
  }
});

Deno.test("login: OAuth: a rejected client secret exits non-zero with a clear error, secret not printed", async () => {
  const { tailnet, dir, echo } = await setup();
  const api = fakeTailscaleApi(tailnet, "good-secret");
  const bare = await tailnet.startBareNode("gw-oauth-bad");
  const file = join(dir, "bad.yaml");
  await Deno.writeTextFile(
    file,
    configFor(tailnet, {
      hostname: "gw-oauth-bad",
      port: 17633,
      backend: echo.port,
      apiBase: api.base,
    }),
  );
  const secret = "wrong-secret-4f9c2a";
  const proxy = new Proxy(file, bare.socket, {
    env: { TS_CLIENT_ID: "client-7", TS_CLIENT_SECRET: secret },
  });
  try {
    assert.equal(await proxy.exited(), 1);
    const out = proxy.output;
    assert.match(out, /The OAuth client was rejected by http:\/\/127\.0\.0\.1:\d+ \(HTTP 401/);
    assert.ok(!out.includes(secret), "the secret never appears in the output");
  } finally {
    await api.close();
  }
});

Deno.test("login: OAuth: the client is exchanged for an ephemeral, pre-authorized, tagged key", async () => {
  const { tailnet, dir, echo } = await setup();
  const api = fakeTailscaleApi(tailnet, "good-secret");
  const bare = await tailnet.startBareNode("gw-oauth");
  const file = join(dir, "oauth.yaml");
  await Deno.writeTextFile(
    file,
    configFor(tailnet, { hostname: "gw-oauth", port: 17634, backend: echo.port, apiBase: api.base }),
  );
  const proxy = new Proxy(file, bare.socket, {
    env: { TS_CLIENT_ID: "client-7", TS_CLIENT_SECRET: "good-secret" },
  });
  try {
    await proxy.waitLog(/"message":"ready:/, "ready after the OAuth login");
    assert.deepEqual(api.minted, [{
      reusable: false,
      ephemeral: true,
      preauthorized: true,
      tags: ["tag:gw"],
    }]);
    using local = new LocalApiClient(bare.socket);
    const status = await local.status();
    assert.equal(status.BackendState, "Running");
    assert.deepEqual(status.Self?.Tags, ["tag:gw"]);
    assert.ok(!proxy.output.includes("good-secret"));
  } finally {
    assert.equal(await proxy.stop(), 0);
    await api.close();
  }
});
