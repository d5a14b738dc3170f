/**
 * The LocalAPI client against what a real tailscaled cannot be made to do (tests/e2e/localapi_test.ts
 * covers the real one): no socket, a stale socket, a socket that never answers or answers slowly,
 * something that is not tailscaled, garbage or huge answers, a 403 (the suite runs as root, which
 * tailscaled never refuses), Go's `null` for empty lists, and the exact requests the client sends.
 * The fakes are unix sockets in a private temp dir.
 */

import assert from "node:assert/strict";
import { join } from "node:path";
import { LocalApiClient, LocalApiError, type LocalApiErrorKind } from "../../lib/localapi/mod.ts";

const enc = new TextEncoder();

function isKind(kind: LocalApiErrorKind, message?: RegExp) {
  return (err: unknown) => {
    assert.ok(err instanceof LocalApiError, String(err));
    assert.equal(err.kind, kind, err.message);
    if (message) assert.match(err.message, message);
    return true;
  };
}

async function tempSocket(): Promise<{ dir: string; socket: string }> {
  const dir = await Deno.makeTempDir({ prefix: "tailvoy-localapi-test-" });
  return { dir, socket: join(dir, "tailscaled.sock") };
}

/** An HTTP server on a unix socket, and a client of it; `handler` plays tailscaled. */
async function withFake(
  handler: (req: Request) => Response | Promise<Response>,
  fn: (client: LocalApiClient, socket: string) => Promise<void>,
  options: { timeoutMs?: number } = {},
): Promise<void> {
  const { dir, socket } = await tempSocket();
  const server = Deno.serve({ path: socket, onListen: () => {} }, handler);
  const client = new LocalApiClient(socket, { timeoutMs: options.timeoutMs ?? 5000 });
  try {
    await fn(client, socket);
  } finally {
    client.close();
    await server.shutdown();
    await Deno.remove(dir, { recursive: true });
  }
}

/** A raw unix listener whose connections get `serve(conn)` (not HTTP, or never answered). */
async function withRawSocket(
  serve: (conn: Deno.Conn) => Promise<void>,
  fn: (socket: string) => Promise<void>,
): Promise<void> {
  const { dir, socket } = await tempSocket();
  const listener = Deno.listen({ transport: "unix", path: socket });
  const conns: Deno.Conn[] = [];
  const accepting = (async () => {
    for await (const conn of listener) {
      conns.push(conn);
      serve(conn).catch(() => {});
    }
  })();
  try {
    await fn(socket);
  } finally {
    listener.close();
    await accepting.catch(() => {});
    for (const conn of conns) {
      try {
        conn.close();
      } catch { /* already closed */ }
    }
    await Deno.remove(dir, { recursive: true });
  }
}

Deno.test("no socket at the path: socket-missing, naming the path and the settings", async () => {
  const { dir, socket } = await tempSocket();
  using client = new LocalApiClient(socket);
  try {
    await assert.rejects(
      client.status(),
      isKind(
        "socket-missing",
        new RegExp(
          `^GET /localapi/v0/status: no tailscaled socket at ${socket}; is tailscaled running\\?.*--socket`,
        ),
      ),
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("a stale socket (its process died): connection-refused", async () => {
  const { dir, socket } = await tempSocket();
  // A process killed outright leaves its socket file behind; Deno removes it on a clean close.
  const child = new Deno.Command(Deno.execPath(), {
    args: [
      "eval",
      `Deno.listen({ transport: "unix", path: ${
        JSON.stringify(socket)
      } }); console.log("ready"); setInterval(() => {}, 1000);`,
    ],
    stdin: "null",
    stdout: "piped",
    stderr: "null",
  }).spawn();
  try {
    const reader = child.stdout.getReader();
    await reader.read();
    reader.releaseLock();
    child.kill("SIGKILL");
    await child.status;
    await child.stdout.cancel();
    assert.ok((await Deno.lstat(socket)).isSocket, "the socket file stays");
    using client = new LocalApiClient(socket);
    await assert.rejects(
      client.whois("100.64.0.1"),
      isKind("connection-refused", new RegExp(`nothing listens on ${socket} \\(stale socket\\)`)),
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("a socket that accepts but never answers: timeout, with the socket and the limit", async () => {
  await withRawSocket(() => new Promise(() => {}), async (socket) => {
    using client = new LocalApiClient(socket, { timeoutMs: 150 });
    await assert.rejects(
      client.status(),
      isKind(
        "timeout",
        new RegExp(`^GET /localapi/v0/status: tailscaled at ${socket} did not answer within 150 ms`),
      ),
    );
    // A per-call timeout overrides the client's.
    using slowDefault = new LocalApiClient(socket, { timeoutMs: 600_000 });
    await assert.rejects(
      slowDefault.whois("100.64.0.1", { timeoutMs: 100 }),
      isKind("timeout", /^GET \/localapi\/v0\/whois: .* did not answer within 100 ms/),
    );
  });
});

Deno.test("an answer whose body never ends: timeout, not a hang", async () => {
  await withFake(() => {
    const body = new ReadableStream<Uint8Array>({
      start(controller) {
        controller.enqueue(enc.encode('{"BackendState": "Run'));
      },
    });
    return new Response(body, { headers: { "content-type": "application/json" } });
  }, async (client) => {
    await assert.rejects(client.status(), isKind("timeout", /did not answer within 200 ms/));
  }, { timeoutMs: 200 });
});

Deno.test("something that is not HTTP on the socket: bad-response naming the socket", async () => {
  await withRawSocket(async (conn) => {
    await conn.write(enc.encode("SSH-2.0-OpenSSH_9.6\r\n"));
    conn.close();
  }, async (socket) => {
    using client = new LocalApiClient(socket);
    await assert.rejects(
      client.status(),
      isKind(
        "bad-response",
        new RegExp(`^GET /localapi/v0/status: talking to tailscaled at ${socket} failed: `),
      ),
    );
  });
});

Deno.test("an HTTP server that is not tailscaled: invalid JSON or the wrong shape is bad-response", async () => {
  await withFake((req) => {
    const path = new URL(req.url).pathname;
    if (path.endsWith("/status")) return Response.json({ hello: "world" });
    if (path.endsWith("/prefs")) return Response.json({ WantRunning: "yes" });
    return new Response("<!doctype html><title>Welcome to nginx!</title>", {
      headers: { "content-type": "text/html" },
    });
  }, async (client) => {
    await assert.rejects(
      client.whois("100.64.0.1"),
      isKind(
        "bad-response",
        /^GET \/localapi\/v0\/whois: tailscaled answered with invalid JSON: <!doctype html><title>Welcome to nginx!<\/title>$/,
      ),
    );
    await assert.rejects(
      client.status(),
      isKind(
        "bad-response",
        /^status: unexpected answer from tailscaled \(BackendState: .*\); is this tailscaled too old\?$/,
      ),
    );
    await assert.rejects(
      client.getPrefs(),
      isKind("bad-response", /^prefs: unexpected answer .*WantRunning: /),
    );
  });
});

Deno.test("a huge answer: the error quotes a bounded part of it", async () => {
  const huge = "x".repeat(4 * 1024 * 1024);
  await withFake((req) => {
    const path = new URL(req.url).pathname;
    if (path.endsWith("/whois")) return new Response(huge, { status: 404 });
    if (path.endsWith("/prefs")) return new Response(huge, { status: 500 });
    return new Response(huge);
  }, async (client) => {
    for (
      const [call, kind] of [
        [() => client.status(), "bad-response"],
        [() => client.whois("100.64.0.1"), "not-found"],
        [() => client.getPrefs(), "http"],
      ] as const
    ) {
      await assert.rejects(call(), (err: unknown) => {
        isKind(kind)(err);
        const message = (err as Error).message;
        assert.ok(message.length < 500, `${kind}: message of ${message.length} characters`);
        assert.match(message, /xxxxxxxxxx/);
        return true;
      });
    }
  });
});

Deno.test("HTTP errors map to kinds: 403 permission-denied, 412 precondition-failed, not logged in", async () => {
  await withFake(async (req) => {
    const path = new URL(req.url).pathname;
    if (path.endsWith("/status")) return new Response("access denied: not an operator\n", { status: 403 });
    if (path.endsWith("/serve-config")) {
      await req.body?.cancel();
      return new Response("etag mismatch\n", { status: 412 });
    }
    if (path.endsWith("/prefs")) return new Response("NeedsLogin\n", { status: 500 });
    return new Response("teapot\n", { status: 418 });
  }, async (client) => {
    await assert.rejects(client.status(), (err: unknown) => {
      isKind(
        "permission-denied",
        /^GET \/localapi\/v0\/status: tailscaled refused access \(access denied: not an operator\); .*--operator=\$USER/,
      )(err);
      assert.equal((err as LocalApiError).status, 403);
      return true;
    });
    await assert.rejects(
      client.setServeConfig({}, { etag: "old" }),
      isKind("precondition-failed", /^POST \/localapi\/v0\/serve-config: changed by someone else meanwhile/),
    );
    await assert.rejects(client.getPrefs(), isKind("needs-login", /run `tailscale up` or set TS_AUTHKEY$/));
    await assert.rejects(
      client.whois("100.64.0.1"),
      isKind("http", /^GET \/localapi\/v0\/whois: tailscaled answered HTTP 418: teapot$/),
    );
  });
});

Deno.test("Go's null for an empty list or map reads as empty; unknown fields are kept", async () => {
  await withFake((req) => {
    const path = new URL(req.url).pathname;
    if (path.endsWith("/status")) {
      return Response.json({
        BackendState: "Running",
        TailscaleIPs: null,
        Self: { HostName: "gw", TailscaleIPs: null, Tags: null },
        Peer: null,
        NewField: 1,
      });
    }
    if (path.endsWith("/serve-config")) return new Response("null", { headers: { etag: '"e1"' } });
    return Response.json({
      Node: { StableID: "n1", Name: "a.box.test.", Addresses: null, Tags: null },
      UserProfile: null,
      CapMap: null,
    });
  }, async (client) => {
    const status = await client.status();
    assert.deepEqual(status.TailscaleIPs, []);
    assert.deepEqual(status.Self?.Tags, []);
    assert.deepEqual(status.Peer, {});
    assert.equal(status.Version, "");
    assert.equal((status as Record<string, unknown>).NewField, 1);
    const who = await client.whois("100.64.0.1");
    assert.deepEqual(who.Node.Addresses, []);
    assert.deepEqual(who.Node.Tags, []);
    assert.deepEqual(who.CapMap, {});
    assert.equal(who.UserProfile, null);
    assert.deepEqual(await client.getServeConfig(), { config: {}, etag: '"e1"' });
  });
});

Deno.test("requests: tailscaled's Host, no Origin or Referer, WhoIs parameters, masked prefs, If-Match", async () => {
  const seen: { method: string; url: URL; headers: Headers; body: string }[] = [];
  await withFake(async (req) => {
    seen.push({ method: req.method, url: new URL(req.url), headers: req.headers, body: await req.text() });
    const path = new URL(req.url).pathname;
    if (path.endsWith("/prefs")) return Response.json({ Hostname: "new" });
    if (path.endsWith("/whois")) return Response.json({ Node: { StableID: "n", Name: "n." } });
    return new Response("");
  }, async (client) => {
    await client.whois("127.0.0.1:4567", { proto: "udp", svcName: "svc:web" });
    await client.editPrefs({ Hostname: "new", AdvertiseServices: ["svc:web"] });
    await client.setServeConfig({ TCP: { "443": { HTTPS: true } } }, { etag: '"abc"' });
    await client.setServeConfig({});
  });
  for (const req of seen) {
    assert.equal(req.headers.get("host"), "local-tailscaled.sock");
    assert.equal(req.headers.get("origin"), null);
    assert.equal(req.headers.get("referer"), null);
  }
  const [whois, prefs, serve, serveNoEtag] = seen;
  assert.equal(whois.method, "GET");
  assert.equal(whois.url.pathname, "/localapi/v0/whois");
  assert.deepEqual(Object.fromEntries(whois.url.searchParams), {
    addr: "127.0.0.1:4567",
    proto: "udp",
    svc_name: "svc:web",
  });
  assert.equal(prefs.method, "PATCH");
  assert.deepEqual(JSON.parse(prefs.body), {
    Hostname: "new",
    HostnameSet: true,
    AdvertiseServices: ["svc:web"],
    AdvertiseServicesSet: true,
  });
  assert.equal(serve.method, "POST");
  assert.equal(serve.headers.get("if-match"), '"abc"');
  assert.deepEqual(JSON.parse(serve.body), { TCP: { "443": { HTTPS: true } } });
  assert.equal(serveNoEtag.headers.get("if-match"), null);
});

Deno.test("watchIpnBus: notifications split across chunks are joined; blank lines are skipped", async () => {
  await withFake((req) => {
    assert.equal(new URL(req.url).searchParams.get("mask"), "4098");
    const parts = [
      '{"Version":"1.2.3","Sessi',
      'onID":"s1","State":2}\n\n{"Sta',
      'te":6}\n',
      '{"ErrMessage":null}\n',
    ];
    return new Response(ReadableStream.from(parts.map((p) => enc.encode(p))));
  }, async (client) => {
    const got = await Array.fromAsync(client.watchIpnBus(4098));
    assert.deepEqual(got, [
      { Version: "1.2.3", SessionID: "s1", State: 2 },
      { State: 6 },
      { ErrMessage: null },
    ]);
  });
});

Deno.test("watchIpnBus: an HTTP error is typed, and a dead socket is a transport error", async () => {
  await withFake(
    () => new Response("denied\n", { status: 403 }),
    async (client) => {
      await assert.rejects(client.watchIpnBus(2).next(), isKind("permission-denied"));
    },
  );
  const { dir, socket } = await tempSocket();
  using client = new LocalApiClient(socket);
  try {
    await assert.rejects(client.watchIpnBus(2).next(), isKind("socket-missing"));
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
