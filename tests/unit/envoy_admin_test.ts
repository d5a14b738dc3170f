/**
 * Tests of the Envoy admin API client (lib/envoy/admin.ts): every endpoint against the real Envoy 1.40,
 * over the unix socket our supervisor gives its Envoy and over http as Envoy Gateway's Envoy exposes it;
 * then the bounds (answer size, deadline) and the errors against a hostile fake admin server, which is a
 * fake because no real Envoy misbehaves that way (endless, dribbled or malformed answers).
 */

import assert from "node:assert/strict";
import { join } from "node:path";
import { parseConfig } from "../../lib/config/mod.ts";
import { readClusterHealth, readListeners } from "../../lib/discovery/mod.ts";
import {
  allocatePorts,
  EnvoyAdminClient,
  EnvoyAdminError,
  type EnvoyAdminFailure,
  EnvoyError,
  EnvoySupervisor,
  l7ListenerNames,
  renderBootstrap,
} from "../../lib/envoy/mod.ts";
import { PEER_BINS } from "../../scripts/harness/peers.ts";
import { GatewayEnvoyConfig } from "../../scripts/harness/gateway_envoy.ts";

const encoder = new TextEncoder();

async function requireEnvoy(): Promise<void> {
  try {
    await Deno.stat(PEER_BINS.envoy);
  } catch {
    assert.fail(`Envoy is not installed at ${PEER_BINS.envoy}: run \`deno task peers\``);
  }
}

async function waitFor<T>(what: string, check: () => Promise<T | undefined>): Promise<T> {
  const deadline = Date.now() + 10_000;
  while (true) {
    const value = await check();
    if (value !== undefined) return value;
    if (Date.now() > deadline) assert.fail(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** An {@link EnvoyAdminError} of `failure` whose message matches `message`. */
function adminError(failure: EnvoyAdminFailure, message: RegExp) {
  return (error: unknown) => {
    assert.ok(error instanceof EnvoyAdminError, `an EnvoyAdminError, got ${error}`);
    assert.ok(error instanceof EnvoyError && error.kind === "admin");
    assert.equal(error.failure, failure, error.message);
    assert.match(error.message, message);
    return true;
  };
}

Deno.test("unix socket: our own Envoy's admin API, every endpoint the supervisor uses", async () => {
  await requireEnvoy();
  const config = parseConfig(
    "tailvoy: { ingress: direct }\nlisteners:\n  web: {port: 80, protocol: http, backend: 127.0.0.1:9}\n",
    { env: {} },
  );
  const bootstrap = renderBootstrap(config, {
    listenerPorts: allocatePorts(l7ListenerNames(config)),
    authzSocket: "/nonexistent/authz.sock",
    secret: "tailvoy-test-secret-0123456789abcdef",
  });
  const envoy = new EnvoySupervisor({ binary: PEER_BINS.envoy, concurrency: 1 });
  try {
    await envoy.start(bootstrap);
    const socket = envoy.adminAddress!;
    assert.match(socket, /^\/.*\/admin\.sock$/);
    const admin = new EnvoyAdminClient(socket, { timeoutMs: 5000 });
    assert.equal(admin.target, socket);
    assert.equal(await admin.readyState(), "LIVE");
    // Our bootstrap is all static: no dynamic resources; a cluster for the backend and one for ext_authz.
    assert.deepEqual(await admin.dynamicListeners(), {});
    assert.deepEqual(await admin.dynamicRouteConfigs(), {});
    const health = await readClusterHealth(admin);
    assert.deepEqual([...health.keys()].sort(), ["h1_127_0_0_1_9", "tailvoy_ext_authz"]);
    const live = async () => {
      const stats = await admin.stats("^server\\.live$") as { stats: { name: string; value: number }[] };
      return stats.stats.find((s) => s.name === "server.live")?.value;
    };
    assert.equal(await live(), 1);
    await admin.failHealthcheck();
    assert.equal(await live(), 0, "the health check fails from now on");
    assert.equal(await admin.readyState(), "DRAINING");
    await admin.drainListeners();
    assert.equal(await admin.readyState(), "DRAINING");

    // A socket nobody listens on: the error names the socket, the path and the fix.
    const gone = join(socket, "..", "nobody.sock");
    await assert.rejects(
      () => new EnvoyAdminClient(gone).readyState(),
      adminError(
        "unreachable",
        /^Envoy admin \/ready on unix socket \/.*\/nobody\.sock is unreachable \(.*\): check that Envoy runs$/,
      ),
    );
  } finally {
    await envoy.stop({ drainMs: 0 });
  }
});

Deno.test("http: an Envoy Gateway-like Envoy's dynamic listeners, routes and clusters", async () => {
  await requireEnvoy();
  const ports = allocatePorts(["admin", "authz", "http", "tcp", "backend"]);
  const port = (name: string) => ports.get(name)!;
  const eg = await GatewayEnvoyConfig.create({ adminPort: port("admin"), authzPort: port("authz") });
  const envoy = new EnvoySupervisor({
    binary: PEER_BINS.envoy,
    concurrency: 1,
    extraArgs: ["-c", eg.bootstrapPath],
  });
  try {
    await envoy.startExternal();
    assert.equal(envoy.adminAddress, `127.0.0.1:${port("admin")}`);
    const url = `http://127.0.0.1:${port("admin")}`;
    const admin = new EnvoyAdminClient(`${url}/`, { setting: "discovery.envoyAdmin" });
    assert.equal(await admin.readyState(), "LIVE");
    const clusters = [{ name: "web", port: port("backend") }, {
      name: "db",
      port: port("backend"),
      healthChecked: true,
    }];
    // Clusters first, and seen loaded: Envoy rejects a listener whose route names an unknown cluster.
    await eg.write([], clusters);
    await waitFor("Envoy to load the clusters", async () => {
      const health = await readClusterHealth(admin);
      return health.has("web") && health.has("db") ? health : undefined;
    });
    // TCP routes only: Envoy has no route configs and answers their dump with 404; discovery still works.
    await eg.write([{ name: "default/eg/tcp", port: port("tcp"), kind: "tcp", cluster: "db" }], clusters);
    const tcpOnly = await waitFor("Envoy to load the tcp listener", async () => {
      const found = await readListeners(admin);
      return found.length === 1 ? found : undefined;
    });
    assert.deepEqual(tcpOnly.map((l) => [l.name, l.kind]), [["default/eg/tcp", "tcp"]]);
    await eg.write([
      {
        name: "default/eg/http",
        port: port("http"),
        kind: "http",
        routes: [{ prefix: "/", cluster: "web" }],
      },
      { name: "default/eg/tcp", port: port("tcp"), kind: "tcp", cluster: "db" },
    ], clusters);
    const listeners = await waitFor("Envoy to load the listeners", async () => {
      const found = await readListeners(admin);
      return found.length === 2 ? found : undefined;
    });
    assert.deepEqual(
      listeners.map((l) => [l.name, l.kind, l.port, l.clusters]),
      [
        ["default/eg/http", "http", port("http"), ["web"]],
        ["default/eg/tcp", "tcp", port("tcp"), ["db"]],
      ],
    );
    // Nothing listens on the backend port: the health-checked cluster turns unhealthy.
    const db = await waitFor("the health check to fail", async () => {
      const h = (await readClusterHealth(admin)).get("db");
      return h && h.healthy === 0 ? h : undefined;
    });
    assert.deepEqual(db, { healthy: 0, total: 1 });
  } finally {
    await envoy.stop({ drainMs: 0 });
    await eg.remove();
  }
  // Envoy gone: the error names the URL and the setting to check.
  await assert.rejects(
    () =>
      new EnvoyAdminClient(`http://127.0.0.1:${port("admin")}`, { setting: "discovery.envoyAdmin" })
        .clusters(),
    adminError(
      "unreachable",
      /^Envoy admin http:\/\/127\.0\.0\.1:\d+\/clusters\?format=json is unreachable \(.*\): check discovery\.envoyAdmin and that Envoy runs$/,
    ),
  );
});

/**
 * A fake admin server (TCP, or a unix socket when `socket` is given): reads each request's head, then
 * hands the connection to `answer`; connections are closed after it, or when the client goes away.
 */
function fakeAdmin(answer: (conn: Deno.Conn) => Promise<void>, options: { socket?: string } = {}) {
  const listener = options.socket
    ? Deno.listen({ transport: "unix", path: options.socket })
    : Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const conns = new Set<Promise<void>>();
  const served = (async () => {
    for await (const conn of listener) {
      const done = (async () => {
        try {
          const buf = new Uint8Array(4096);
          let head = "";
          while (!head.includes("\r\n\r\n")) {
            const n = await conn.read(buf);
            if (n === null) return;
            head += new TextDecoder().decode(buf.subarray(0, n));
          }
          await answer(conn);
        } catch {
          // The client closed the connection: what the bounds are for.
        } finally {
          try {
            conn.close();
          } catch { /* closed */ }
        }
      })();
      conns.add(done);
      done.finally(() => conns.delete(done));
    }
  })();
  const addr = listener.addr;
  return {
    target: addr.transport === "unix" ? addr.path : `http://127.0.0.1:${(addr as Deno.NetAddr).port}`,
    async close() {
      listener.close();
      await served.catch(() => {});
      await Promise.all(conns);
    },
  };
}

/** Writes `chunk` until the peer goes away (the write throws). */
async function writeForever(conn: Deno.Conn, chunk: Uint8Array): Promise<void> {
  while (true) await conn.write(chunk);
}

/** Waits until the client closes its end. */
async function untilClosed(conn: Deno.Conn): Promise<void> {
  const buf = new Uint8Array(1024);
  while (await conn.read(buf) !== null) { /* ignore */ }
}

Deno.test("hostile admin: answers are bounded in size and time, malformed ones refused, with the endpoint named", async (t) => {
  const MAX = 256 * 1024;
  const cases: {
    name: string;
    answer: (conn: Deno.Conn) => Promise<void>;
    failure: EnvoyAdminFailure;
    message: RegExp;
  }[] = [
    {
      name: "an endless body without a length stops at maxBytes",
      answer: (conn) =>
        conn.write(encoder.encode("HTTP/1.1 200 OK\r\n\r\n")).then(() =>
          writeForever(conn, new Uint8Array(64 * 1024).fill(0x61))
        ),
      failure: "too-large",
      message:
        /\/clusters\?format=json answered more than 262144 bytes: is discovery\.envoyAdmin Envoy's admin API\?/,
    },
    {
      name: "an endless chunked body stops at maxBytes",
      answer: async (conn) => {
        await conn.write(encoder.encode("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"));
        await writeForever(conn, encoder.encode(`4000\r\n${"a".repeat(0x4000)}\r\n`));
      },
      failure: "too-large",
      message: /answered more than 262144 bytes/,
    },
    {
      name: "an announced length over maxBytes fails before its bytes",
      answer: async (conn) => {
        await conn.write(encoder.encode("HTTP/1.1 200 OK\r\nContent-Length: 100000000000\r\n\r\n{"));
        await untilClosed(conn);
      },
      failure: "too-large",
      message: /answered more than 262144 bytes/,
    },
    {
      name: "an announced chunk over maxBytes fails before its bytes",
      answer: async (conn) => {
        await conn.write(
          encoder.encode("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nffffffffff\r\n{"),
        );
        await untilClosed(conn);
      },
      failure: "too-large",
      message: /answered more than 262144 bytes/,
    },
    {
      name: "headers that never end",
      answer: (conn) =>
        conn.write(encoder.encode("HTTP/1.1 200 OK\r\nX: ")).then(() =>
          writeForever(conn, encoder.encode("x".repeat(4096)))
        ),
      failure: "malformed",
      message: /did not answer HTTP \(no end of headers in the first 16384 bytes\)/,
    },
    {
      name: "no answer at all: the deadline",
      answer: untilClosed,
      failure: "timeout",
      message: /is unreachable \(no answer within 300 ms\): check discovery\.envoyAdmin and that Envoy runs/,
    },
    {
      name: "an answer dribbled a byte at a time: one deadline for the whole call, not per read",
      answer: async (conn) => {
        await conn.write(encoder.encode("HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n"));
        while (true) {
          await conn.write(encoder.encode("a"));
          await new Promise((r) => setTimeout(r, 20));
        }
      },
      failure: "timeout",
      message: /no answer within 300 ms/,
    },
    {
      name: "not HTTP",
      answer: (conn) => conn.write(encoder.encode("SSH-2.0-OpenSSH_9.6\r\n\r\n")).then(() => {}),
      failure: "malformed",
      message: /did not answer HTTP \(status line "SSH-2\.0-OpenSSH_9\.6"\)/,
    },
    {
      name: "cut short",
      answer: (conn) =>
        conn.write(encoder.encode("HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n{}")).then(() => {}),
      failure: "malformed",
      message: /the connection closed before the end of the body/,
    },
    {
      name: "an error status, its body cut to 200 characters",
      answer: (conn) =>
        conn.write(encoder.encode(`HTTP/1.1 503 Busy\r\nContent-Length: 300\r\n\r\n${"b".repeat(300)}`)).then(
          () => {},
        ),
      failure: "status",
      message: /\/clusters\?format=json answered 503: b{200}$/,
    },
    {
      name: "not JSON",
      answer: (conn) =>
        conn.write(encoder.encode("HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\n<html>")).then(() => {}),
      failure: "not-json",
      message: /did not answer JSON: is discovery\.envoyAdmin Envoy's admin API\?/,
    },
  ];
  for (const c of cases) {
    await t.step(c.name, async () => {
      const fake = fakeAdmin(c.answer);
      try {
        const admin = new EnvoyAdminClient(fake.target, {
          timeoutMs: 300,
          maxBytes: MAX,
          setting: "discovery.envoyAdmin",
        });
        await assert.rejects(() => admin.clusters(), adminError(c.failure, c.message));
      } finally {
        await fake.close();
      }
    });
  }
});

Deno.test("framing: content-length and chunked answers end at their end, not at the peer's close; over a unix socket too", async () => {
  const dir = await Deno.makeTempDir();
  // Each answer is complete but the connection stays open: the call must not wait for the close.
  const answers = [
    'HTTP/1.1 200 OK\r\nContent-Length: 23\r\n\r\n{"cluster_statuses":[]}',
    'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n{"clu\r\n12;ext=1\r\nster_statuses":[]}\r\n0\r\n\r\n',
  ];
  let next = 0;
  const fake = fakeAdmin(async (conn) => {
    const text = answers[next++ % answers.length];
    // Split mid-head and mid-chunk, so the parser sees partial input.
    for (const part of [text.slice(0, 20), text.slice(20, 60), text.slice(60)]) {
      await conn.write(encoder.encode(part));
      await new Promise((r) => setTimeout(r, 5));
    }
    await untilClosed(conn);
  }, { socket: join(dir, "admin.sock") });
  try {
    const admin = new EnvoyAdminClient(fake.target, { timeoutMs: 10_000 });
    assert.deepEqual(await admin.clusters(), { cluster_statuses: [] }, "content-length");
    assert.deepEqual(await admin.clusters(), { cluster_statuses: [] }, "chunked, with a chunk extension");
  } finally {
    await fake.close();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("EnvoyAdminClient: a target that is neither a socket path nor an http(s) URL is refused", () => {
  assert.throws(
    () => new EnvoyAdminClient("127.0.0.1:19000"),
    /Envoy admin target "127\.0\.0\.1:19000" is neither a unix socket path nor an http\(s\) URL/,
  );
});
