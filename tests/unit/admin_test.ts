/**
 * Tests of the admin server: liveness, readiness with each check named, Prometheus metrics, the JWKS
 * route, refused methods and unknown paths, and the message when the address cannot be bound.
 */

import assert from "node:assert/strict";
import { type AdminServer, type ReadinessChecks, startAdminServer } from "../../lib/admin/mod.ts";
import { JWKS_PATH } from "../../lib/identity_token/mod.ts";
import type { JsonWebKeySet } from "../../lib/identity_token/keys.ts";
import { Telemetry } from "../../lib/telemetry/mod.ts";

const JWKS: JsonWebKeySet = {
  keys: [{ kty: "OKP", crv: "Ed25519", x: "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo", kid: "k1" }],
};

/** Runs `fn` against an admin server on a free loopback port, then stops it. */
async function withAdmin(
  options: { checks?: ReadinessChecks; jwks?: () => JsonWebKeySet | undefined; telemetry?: Telemetry },
  fn: (base: string, server: AdminServer) => Promise<void>,
): Promise<void> {
  const server = await startAdminServer("127.0.0.1:0", {
    telemetry: options.telemetry ?? new Telemetry(),
    checks: options.checks ?? {},
    jwks: options.jwks,
  });
  try {
    await fn(`http://127.0.0.1:${server.addr.port}`, server);
  } finally {
    await server.close();
  }
}

async function get(
  url: string,
  init?: RequestInit,
): Promise<{ status: number; body: string; res: Response }> {
  const res = await fetch(url, init);
  return { status: res.status, body: await res.text(), res };
}

Deno.test("/healthz answers ok while the process runs, whatever readiness says", async () => {
  await withAdmin({ checks: { localApi: () => false } }, async (base, server) => {
    assert.equal(server.addr.hostname, "127.0.0.1");
    assert.notEqual(server.addr.port, 0);
    const { status, body } = await get(`${base}/healthz`);
    assert.equal(status, 200);
    assert.equal(body, "ok\n");
  });
});

Deno.test("/readyz is 200 when every check passes and names each check", async () => {
  await withAdmin({
    checks: { localApi: () => true, listeners: async () => await Promise.resolve(true) },
  }, async (base) => {
    const { status, res, body } = await get(`${base}/readyz`);
    assert.equal(status, 200);
    assert.match(res.headers.get("content-type") ?? "", /^application\/json/);
    assert.deepEqual(JSON.parse(body), { ready: true, checks: { localApi: true, listeners: true } });
  });
});

Deno.test("/readyz is 503 when a check fails, rejects or throws, and says which", async () => {
  let envoyReady = false;
  await withAdmin({
    checks: {
      localApi: () => true,
      envoy: () => envoyReady,
      listeners: () => Promise.reject(new Error("not bound")),
      discovery: () => {
        throw new Error("boom");
      },
    },
  }, async (base) => {
    const { status, body } = await get(`${base}/readyz`);
    assert.equal(status, 503);
    assert.deepEqual(JSON.parse(body), {
      ready: false,
      checks: { localApi: true, envoy: false, listeners: false, discovery: false },
    });
    // Checks run on each request: a change shows at once.
    envoyReady = true;
    assert.deepEqual(JSON.parse((await get(`${base}/readyz`)).body).checks.envoy, true);
  });
});

Deno.test("/readyz with no checks is ready", async () => {
  await withAdmin({}, async (base) => {
    const { status, body } = await get(`${base}/readyz`);
    assert.equal(status, 200);
    assert.deepEqual(JSON.parse(body), { ready: true, checks: {} });
  });
});

Deno.test("/metrics serves the telemetry's Prometheus text with its content type", async () => {
  const telemetry = new Telemetry();
  telemetry.envoyRestarts.inc(2);
  telemetry.openFlows.set({ listener: "db" }, 3);
  await withAdmin({ telemetry }, async (base) => {
    const { status, body, res } = await get(`${base}/metrics`);
    assert.equal(status, 200);
    assert.equal(res.headers.get("content-type"), telemetry.registry.contentType);
    assert.match(body, /^tailvoy_envoy_restarts_total 2$/m);
    assert.match(body, /^tailvoy_open_flows\{listener="db"\} 3$/m);
    assert.match(body, /^# TYPE tailvoy_decisions_total counter$/m);
  });
});

Deno.test("JWKS route: 404 while no listener sends tokens, the key set once one does", async () => {
  let jwks: JsonWebKeySet | undefined;
  await withAdmin({ jwks: () => jwks }, async (base) => {
    const before = await get(`${base}${JWKS_PATH}`);
    assert.equal(before.status, 404);
    assert.match(before.body, /no identity tokens: no listener sets identityToken/);
    jwks = JWKS;
    const after = await get(`${base}${JWKS_PATH}`);
    assert.equal(after.status, 200);
    assert.match(after.res.headers.get("content-type") ?? "", /^application\/json/);
    assert.deepEqual(JSON.parse(after.body), JWKS);
  });
  // Without a jwks source at all the route is a 404 too.
  await withAdmin({}, async (base) => {
    const { status } = await get(`${base}${JWKS_PATH}`);
    assert.equal(status, 404);
  });
});

Deno.test("methods other than GET and HEAD are refused with 405 on every path", async () => {
  await withAdmin({ jwks: () => JWKS }, async (base) => {
    for (const path of ["/healthz", "/readyz", "/metrics", JWKS_PATH, "/nope"]) {
      for (const method of ["POST", "PUT", "DELETE", "PATCH", "OPTIONS"]) {
        const { status, body } = await get(`${base}${path}`, { method });
        assert.equal(status, 405, `${method} ${path}`);
        assert.equal(body, "method not allowed\n");
      }
    }
    const head = await get(`${base}/healthz`, { method: "HEAD" });
    assert.equal(head.status, 200);
    assert.equal(head.body, "");
  });
});

Deno.test("an unknown path is a 404 that lists the routes", async () => {
  await withAdmin({}, async (base) => {
    for (const path of ["/", "/health", "/metrics/", "/healthz/x", "/.well-known/"]) {
      const { status, body } = await get(`${base}${path}`);
      assert.equal(status, 404, path);
      assert.equal(body, `not found: try /metrics, /healthz, /readyz or ${JWKS_PATH}\n`);
    }
  });
});

Deno.test("an address in use is refused with the address and the setting to change", async () => {
  const taken = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const address = `127.0.0.1:${(taken.addr as Deno.NetAddr).port}`;
  try {
    await assert.rejects(
      startAdminServer(address, { telemetry: new Telemetry(), checks: {} }),
      (err: Error) => {
        assert.match(err.message, new RegExp(`^Cannot start the admin server on ${address}: `));
        assert.match(err.message, /in use/i);
        assert.match(err.message, /change tailvoy\.adminAddress$/);
        return true;
      },
    );
  } finally {
    taken.close();
  }
});

Deno.test("an empty host (the config's `:port`) binds every interface", async () => {
  // Port 0: the kernel picks one; nothing is sent anywhere but loopback.
  const server = await startAdminServer(":0", { telemetry: new Telemetry(), checks: {} });
  try {
    assert.equal(server.addr.hostname, "0.0.0.0");
    const { status } = await get(`http://127.0.0.1:${server.addr.port}/healthz`);
    assert.equal(status, 200);
  } finally {
    await server.close();
  }
});
