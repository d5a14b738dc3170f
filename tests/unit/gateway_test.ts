/**
 * The discovery-mode poll loop's state handling, where the timing has to be forced: a fake Envoy admin
 * API (a real Envoy cannot be held in the middle of answering `/ready`, nor be made to say DRAINING and
 * then PRE_INITIALIZING on cue) and the fake LocalAPI (headscale has no Services). End to end behaviour
 * against a real Envoy and tailnet is in tests/e2e/discovery_test.ts.
 */

import assert from "node:assert/strict";
import { join } from "node:path";
import { parseConfig } from "../../lib/config/mod.ts";
import { GatewayMode } from "../../lib/modes/gateway.ts";
import { IdentityResolver } from "../../lib/identity/mod.ts";
import { LocalApiClient } from "../../lib/localapi/mod.ts";
import { PROJECT_ROOT } from "../../scripts/harness/peers.ts";
import { FakeLocalApi } from "../../scripts/harness/fake_localapi.ts";
import { delay } from "../../lib/util/async.ts";

/** A fake Envoy admin API serving the fixture's `default/eg/tcp` listener, with a settable `/ready`. */
async function fakeAdmin() {
  const dump = JSON.parse(
    await Deno.readTextFile(join(PROJECT_ROOT, "tests", "fixtures", "discovery", "dynamic_listeners.json")),
  );
  dump.configs = dump.configs.filter((c: { name: string }) => c.name === "default/eg/tcp");
  const state = { ready: "LIVE", hold: undefined as Promise<void> | undefined };
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen: () => {} }, async (req) => {
    const url = new URL(req.url);
    if (url.pathname === "/ready") {
      await state.hold;
      return new Response(`${state.ready}\n`, { status: state.ready === "LIVE" ? 200 : 503 });
    }
    if (url.search.includes("dynamic_listeners")) return Response.json(dump);
    if (url.search.includes("dynamic_route_configs")) return Response.json({ configs: [] });
    return Response.json({ cluster_statuses: [] });
  });
  return { url: `http://127.0.0.1:${server.addr.port}`, state, close: () => server.shutdown() };
}

async function withGateway(
  fn: (ctx: {
    gateway: GatewayMode;
    admin: Awaited<ReturnType<typeof fakeAdmin>>;
    fake: FakeLocalApi;
    config: (svc: string) => ReturnType<typeof parseConfig>;
  }) => Promise<void>,
) {
  const admin = await fakeAdmin();
  const fake = await FakeLocalApi.start({ whois: () => undefined });
  using api = new LocalApiClient(fake.socket);
  const config = (svc: string) =>
    parseConfig(
      [
        `tailscale: {tags: ["tag:gw"], serviceMappings: {${svc}: ["tcp$"]}}`,
        `discovery: {envoyAdmin: "${admin.url}", envoyAddress: 127.0.0.1, pollInterval: 1h}`,
        `tailvoy: {adminAddress: "127.0.0.1:0", timeouts: {unadvertiseGrace: 0s}}`,
      ].join("\n"),
      { env: {} },
    );
  const first = config("a");
  const gateway = await GatewayMode.start(first, {
    api,
    resolver: new IdentityResolver(api),
    status: await api.status(),
    authzAddr: "127.0.0.1:0",
  });
  try {
    await fn({ gateway, admin, fake, config });
  } finally {
    await gateway.close({ ...first.tailvoy.timeouts, drain: 0, unadvertiseGrace: 0 });
    await fake.close();
    await admin.close();
  }
}

const advertised = (fake: FakeLocalApi) => fake.prefs.AdvertiseServices as string[];

Deno.test({
  name: "a reload that lands while a poll is in flight is applied (new Service mappings take effect)",
  sanitizeResources: false,
  sanitizeOps: false,
  fn: () =>
    withGateway(async ({ gateway, admin, fake, config }) => {
      assert.deepEqual(advertised(fake), ["svc:a"]);
      const release = Promise.withResolvers<void>();
      admin.state.hold = release.promise;
      const inFlight = gateway.poll(); // held in /ready with the old config
      await delay(50);
      const reloaded = gateway.reload(config("b"));
      admin.state.hold = undefined;
      release.resolve();
      await inFlight;
      await reloaded;
      assert.deepEqual(advertised(fake), ["svc:b"]);
    }),
});

Deno.test({
  name: "Envoy draining unadvertises every Service, and they stay so until Envoy is LIVE again",
  sanitizeResources: false,
  sanitizeOps: false,
  fn: () =>
    withGateway(async ({ gateway, admin, fake }) => {
      assert.deepEqual(advertised(fake), ["svc:a"]);
      admin.state.ready = "DRAINING";
      await gateway.poll();
      assert.deepEqual(advertised(fake), []);
      // Restarted: not serving yet, so still nothing advertised.
      admin.state.ready = "PRE_INITIALIZING";
      await gateway.poll();
      assert.deepEqual(advertised(fake), []);
      admin.state.ready = "LIVE";
      await gateway.poll();
      assert.deepEqual(advertised(fake), ["svc:a"]);
      assert.deepEqual(
        gateway.listeners?.map((l) => l.name),
        ["default/eg/tcp"],
        "listeners kept throughout",
      );
    }),
});
