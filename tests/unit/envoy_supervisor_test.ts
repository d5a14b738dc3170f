/**
 * Tests of the Envoy supervisor (lib/envoy/supervisor.ts) against the real Envoy 1.40: start, ready
 * and stop with nothing left behind; validation errors carrying Envoy's words; crash and restart;
 * Envoy's output in our log; a drain with an idle keep-alive connection; signals and reload; and a
 * traffic smoke test through the rendered bootstrap (PROXY v2 + secret → Envoy → ext_authz → backend).
 *
 * Every test stops its Envoy in `finally`, so no Envoy outlives a failed assertion.
 */

import assert from "node:assert/strict";
import * as grpc from "@grpc/grpc-js";
import { dirname, join } from "node:path";
import { type Config, parseConfig } from "../../lib/config/mod.ts";
import {
  allocatePorts,
  type EnvoyBootstrap,
  EnvoyError,
  envoyErrorSummary,
  EnvoySupervisor,
  type EnvoySupervisorOptions,
  l7ListenerNames,
  mergeEnvoyArgs,
  parseEnvoyLogLine,
  renderBootstrap,
  resolveEnvoyBinary,
} from "../../lib/envoy/mod.ts";
import { type DecisionRecord, listenersFromConfig, serveHttpAuthz } from "../../lib/extauthz/mod.ts";
import { IdentityResolver } from "../../lib/identity/mod.ts";
import { LocalApiError, type WhoIsResponse } from "../../lib/localapi/mod.ts";
import { setupLogging } from "../../lib/log.ts";
import { encodeProxyV2 } from "../../lib/proxy_protocol/mod.ts";
import { generateSecret, SECRET_TLV_TYPE, ServiceIndex } from "../../lib/wire.ts";
import { PEER_BINS, PROJECT_ROOT } from "../../scripts/harness/peers.ts";
import { grpcHealthBackend, healthService } from "../../scripts/harness/grpc_health.ts";
import { delay } from "../../lib/util/async.ts";

const encoder = new TextEncoder();
const decoder = new TextDecoder();
const CAP = "rajsingh.info/cap/tailvoy";
// Generous: on a loaded machine the first check can exceed the 250 ms default and turn an allow into
// Envoy's own 403. The timeout itself is not under test here.
const AUTHZ_TIMEOUT_MS = 2000;
// For bootstraps that never reach ext_authz.
const NO_AUTHZ = { authzSocket: "/nonexistent/authz.sock", secret: "tailvoy-test-secret-0123456789abcdef" };

// Every record of this file's run, as JSON lines: the tests below read Envoy's output from here.
const logLines: string[] = [];
setupLogging("debug", { format: "json", write: (line) => logLines.push(line) });

interface LogRecord {
  logger: string;
  level: string;
  message: string;
  [key: string]: unknown;
}

function records(since = 0): LogRecord[] {
  return logLines.slice(since).map((line) => JSON.parse(line));
}

async function requireEnvoy(): Promise<void> {
  try {
    await Deno.stat(PEER_BINS.envoy);
  } catch {
    assert.fail(`Envoy is not installed at ${PEER_BINS.envoy}: run \`deno task peers\``);
  }
}

function configOf(listeners: string): Config {
  return parseConfig(`tailvoy: { ingress: direct }\nlisteners:\n${listeners}`, { env: {} });
}

/** One http listener `web` to `backendPort`, rendered on free ports. */
function webBootstrap(options: { backendPort?: number; authzSocket?: string; secret?: string } = {}) {
  const config = configOf(`
  web:
    port: 80
    protocol: http
    backend: 127.0.0.1:${options.backendPort ?? 9}
`);
  const listenerPorts = allocatePorts(l7ListenerNames(config));
  const bootstrap = renderBootstrap(config, {
    listenerPorts,
    authzSocket: options.authzSocket ?? NO_AUTHZ.authzSocket,
    secret: options.secret ?? NO_AUTHZ.secret,
    authzTimeoutMs: AUTHZ_TIMEOUT_MS,
  });
  return { config, bootstrap, port: listenerPorts.get("web")! };
}

function supervisor(options: EnvoySupervisorOptions = {}): EnvoySupervisor {
  return new EnvoySupervisor({ binary: PEER_BINS.envoy, concurrency: 1, readyTimeoutMs: 10_000, ...options });
}

function alive(pid: number): boolean {
  try {
    Deno.kill(pid, 0 as unknown as Deno.Signal);
    return true;
  } catch {
    return false;
  }
}

async function waitFor(what: string, check: () => boolean, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > deadline) assert.fail(`timed out waiting for ${what}`);
    await delay(20);
  }
}

/** Stops `envoy` for good (a failed test must not leave it running). */
async function cleanup(envoy: EnvoySupervisor): Promise<void> {
  const pid = envoy.pid;
  await envoy.stop({ drainMs: 0 }).catch(() => {});
  if (pid !== undefined && alive(pid)) Deno.kill(-pid, "SIGKILL");
}

// ---------------------------------------------------------------------------------------------
// Pure helpers

Deno.test("parseEnvoyLogLine: Envoy's level marker picks our level; continuation lines inherit it", () => {
  const line =
    "[2026-11-22 13:04:54.853][5601][warning][main] [source/server/server.cc:1028] caught ENVOY_SIGTERM";
  assert.deepEqual(parseEnvoyLogLine(line), {
    level: "warning",
    envoyLevel: "warning",
    component: "main",
    message: "caught ENVOY_SIGTERM",
  });
  assert.equal(parseEnvoyLogLine(line.replace("[warning]", "[critical]")).level, "fatal");
  assert.equal(parseEnvoyLogLine(line.replace("[warning]", "[error]")).level, "error");
  assert.equal(parseEnvoyLogLine(line.replace("[warning]", "[debug]")).level, "debug");
  assert.deepEqual(parseEnvoyLogLine("  at frame #3", { previous: "fatal" }), {
    level: "fatal",
    message: "  at frame #3",
  });
  assert.equal(parseEnvoyLogLine("PARSE ERROR: Argument: (--concurrency)").level, "info");
  assert.equal(
    envoyErrorSummary(
      "[t][1][info][main] [a.cc:1] fine\n[t][1][critical][main] [b.cc:2] error initializing configuration 'x': bad\n",
    ),
    "error initializing configuration 'x': bad",
  );
});

Deno.test("mergeEnvoyArgs: extra arguments win over ours; -c is refused", () => {
  assert.deepEqual(
    mergeEnvoyArgs(["-c", "/f", "--disable-hot-restart", "--concurrency", "2", "--log-level", "warn"], [
      "-l",
      "debug",
      "--concurrency=4",
      "--service-node",
      "gw",
    ]),
    ["-c", "/f", "--disable-hot-restart", "-l", "debug", "--concurrency=4", "--service-node", "gw"],
  );
  assert.throws(
    () => mergeEnvoyArgs(["-c", "/f"], ["-c", "/other.yaml"]),
    (e: unknown) => e instanceof EnvoyError && /Extra Envoy argument "-c" would replace/.test(e.message),
  );
});

Deno.test("resolveEnvoyBinary: tailvoy.envoyBinary, else ENVOY_BIN, else envoy", () => {
  const env = (vars: Record<string, string>) => (name: string) => vars[name];
  assert.equal(resolveEnvoyBinary("/opt/envoy", { env: env({ ENVOY_BIN: "/x" }) }), "/opt/envoy");
  assert.equal(resolveEnvoyBinary("envoy", { env: env({ ENVOY_BIN: "/x" }) }), "/x");
  assert.equal(resolveEnvoyBinary(undefined, { env: env({}) }), "envoy");
  assert.equal(new EnvoySupervisor({ env: env({ ENVOY_BIN: "/y" }) }).binary, "/y");
});

Deno.test("allocatePorts: distinct free loopback ports", () => {
  const ports = allocatePorts(["a", "b", "c"]);
  assert.equal(new Set(ports.values()).size, 3);
  for (const port of ports.values()) assert.ok(port > 0 && port < 65536);
});

// ---------------------------------------------------------------------------------------------
// Real Envoy

Deno.test("start, ready, stop: own process group, config 0600, nothing left behind", async () => {
  await requireEnvoy();
  const { bootstrap, port } = webBootstrap();
  const envoy = supervisor();
  try {
    assert.equal(envoy.isReady, false);
    await envoy.start(bootstrap);
    await envoy.ready;
    assert.equal(envoy.isReady, true);
    assert.equal(envoy.state, "ready");
    const pid = envoy.pid!;
    assert.ok(alive(pid));
    // The admin API (whose /config_dump shows the relay secret) is a unix socket only we can reach.
    const admin = envoy.adminAddress ?? "";
    assert.match(admin, /^\/.*\/admin\.sock$/);
    assert.equal((await Deno.stat(admin)).mode! & 0o777, 0o600);
    assert.equal((await Deno.stat(dirname(admin))).mode! & 0o777, 0o700, "in a private directory");
    const adminConn = await Deno.connect({ transport: "unix", path: admin });
    await adminConn.write(encoder.encode("GET /ready HTTP/1.1\r\nHost: envoy\r\nConnection: close\r\n\r\n"));
    const answer = decoder.decode(await new Response(adminConn.readable).arrayBuffer());
    assert.match(answer, /^HTTP\/1\.1 200 [\s\S]*\r\n\r\n[\s\S]*LIVE/);
    (await Deno.connect({ hostname: "127.0.0.1", port })).close(); // the listener is bound

    let configPath: string | undefined;
    if (Deno.build.os === "linux") {
      // /proc/<pid>/stat: "pid (comm) state ppid pgrp session ..."
      const stat = (await Deno.readTextFile(`/proc/${pid}/stat`)).split(") ")[1].split(" ");
      assert.equal(Number(stat[2]), pid, "Envoy leads its own process group");
      assert.equal(Number(stat[3]), pid, "and its own session");
      const argv = (await Deno.readTextFile(`/proc/${pid}/cmdline`)).split("\0");
      configPath = argv[argv.indexOf("-c") + 1];
      assert.equal((await Deno.stat(configPath)).mode! & 0o777, 0o600, "bootstrap readable by us only");
      for (const flag of ["--disable-hot-restart", "--admin-address-path", "--drain-time-s"]) {
        assert.ok(argv.includes(flag), flag);
      }
      assert.equal(argv[argv.indexOf("--concurrency") + 1], "1");
    }

    await envoy.stop({ drainMs: 1000 });
    assert.equal(envoy.isReady, false);
    assert.equal(envoy.state, "stopped");
    assert.equal(envoy.pid, undefined);
    assert.equal(alive(pid), false, "no Envoy left");
    if (configPath) await assert.rejects(Deno.stat(configPath), Deno.errors.NotFound, "temp files removed");
    await assert.rejects(envoy.ready, (e: unknown) => e instanceof EnvoyError && e.kind === "state");
    await assert.rejects(Deno.connect({ hostname: "127.0.0.1", port }), "the port is free again");
  } finally {
    await cleanup(envoy);
  }
});

Deno.test("validate: Envoy's own message in a typed error; missing binary and start failures too", async () => {
  await requireEnvoy();
  const envoy = supervisor();
  const { bootstrap } = webBootstrap();
  await envoy.validate(bootstrap);

  const bogus = structuredClone(bootstrap) as EnvoyBootstrap;
  bogus.static_resources.listeners[0].bogus_field = 1;
  const error = await envoy.validate(bogus).then(() => undefined, (e) => e);
  assert.ok(error instanceof EnvoyError, String(error));
  assert.equal(error.kind, "validate");
  assert.equal(error.exitCode, 1);
  assert.match(
    error.message,
    /^Envoy rejected the bootstrap: error initializing configuration .*no such field: 'bogus_field'/s,
  );
  assert.match(error.output ?? "", /\[critical\]/, "the full output is kept");

  const https = renderBootstrap(
    configOf(`
  web:
    port: 443
    protocol: https
    tls: { cert: /nonexistent/web.crt, key: /nonexistent/web.key }
    backend: app:8080
`),
    { listenerPorts: new Map([["web", 18443]]), ...NO_AUTHZ },
  );
  await assert.rejects(
    envoy.validate(https),
    (e: unknown) =>
      e instanceof EnvoyError && e.kind === "validate" && /\/nonexistent\/web\.(crt|key)/.test(e.message),
  );

  const missing = new EnvoySupervisor({ binary: "/nonexistent/envoy" });
  for (const attempt of [missing.validate(bootstrap), missing.start(bootstrap)]) {
    await assert.rejects(
      attempt,
      (e: unknown) =>
        e instanceof EnvoyError && e.kind === "spawn" &&
        e.message.includes('Envoy binary "/nonexistent/envoy" was not found'),
    );
  }
  assert.equal(missing.state, "stopped");
});

Deno.test("start fails fast with Envoy's reason when it exits (port taken); nothing is left", async () => {
  await requireEnvoy();
  const blocker = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const config = configOf(`
  web:
    port: 80
    protocol: http
    backend: 127.0.0.1:9
`);
  const bootstrap = renderBootstrap(config, {
    listenerPorts: new Map([["web", (blocker.addr as Deno.NetAddr).port]]),
    ...NO_AUTHZ,
  });
  const envoy = supervisor();
  try {
    const started = performance.now();
    const error = await envoy.start(bootstrap).then(() => undefined, (e) => e);
    assert.ok(error instanceof EnvoyError && error.kind === "start", String(error));
    assert.match(
      error.message,
      /^Envoy exited during start-up \(exit code 1\): .*(address already in use|cannot bind)/is,
    );
    assert.ok(performance.now() - started < 5000, "did not wait for the ready timeout");
    assert.equal(envoy.state, "stopped");
    assert.equal(envoy.restarts, 0, "a failed start is not restarted");
    await assert.rejects(envoy.ready);
  } finally {
    blocker.close();
    await cleanup(envoy);
  }
});

Deno.test("crash: kill -9 of Envoy → not ready, restarted with backoff, ready again, restarts === 1", async () => {
  await requireEnvoy();
  const { bootstrap, port } = webBootstrap();
  const envoy = supervisor({ backoff: { initialMs: 50, maxMs: 150, resetAfterMs: 1500 } });
  const mark = logLines.length;
  const crashes = () =>
    records(mark).filter((r) => r.logger === "tailvoy.envoy" && /exited unexpectedly/.test(r.message));
  const crash = async () => {
    const pid = envoy.pid!;
    Deno.kill(pid, "SIGKILL");
    await waitFor("the crash to be noticed", () => !envoy.isReady);
    assert.equal(envoy.state, "restarting");
    assert.equal(envoy.adminAddress, undefined, "no admin address while down");
    await envoy.ready;
    assert.notEqual(envoy.pid, pid);
  };
  try {
    await envoy.start(bootstrap);
    await crash();
    assert.equal(envoy.isReady, true);
    assert.equal(envoy.restarts, 1);
    assert.ok(alive(envoy.pid!));
    (await Deno.connect({ hostname: "127.0.0.1", port })).close(); // same port, served again
    const [first] = crashes();
    assert.equal(first.level, "ERROR");
    assert.equal(first.signal, "SIGKILL");
    assert.equal(first.delayMs, 50);
    assert.ok(records(mark).some((r) => /Restarting Envoy \(restart 1\)/.test(r.message)));

    // A crash loop backs off (doubling, capped); a long enough healthy run resets the delay.
    await crash();
    await crash();
    await delay(1600);
    await crash();
    assert.deepEqual(crashes().map((r) => r.delayMs), [50, 100, 150, 50]);
    assert.equal(envoy.restarts, 4);
  } finally {
    await cleanup(envoy);
  }
});

Deno.test("logs: Envoy's stderr lines reach our logger, tagged, at Envoy's own level", async () => {
  await requireEnvoy();
  const { bootstrap } = webBootstrap();
  const envoy = supervisor({ logLevel: "info" });
  const mark = logLines.length;
  try {
    await envoy.start(bootstrap);
    await envoy.stop({ drainMs: 0 });
  } finally {
    await cleanup(envoy);
  }
  const fromEnvoy = records(mark).filter((r) => r.logger === "tailvoy.envoy" && r.envoyLevel !== undefined);
  const info = fromEnvoy.find((r) => r.envoyLevel === "info" && r.component === "main");
  assert.ok(info, "info lines from Envoy's main logger");
  assert.equal(info.level, "INFO");
  assert.equal(info.stream, "stderr");
  assert.equal(typeof info.pid, "number");
  assert.doesNotMatch(info.message, /^\[/, "Envoy's prefix is parsed off");
  const sigterm = fromEnvoy.find((r) => /caught ENVOY_SIGTERM/.test(r.message));
  assert.ok(sigterm, "Envoy's own shutdown warning");
  assert.equal(sigterm.level, "WARN");
  assert.equal(sigterm.envoyLevel, "warning");
});

Deno.test("forward: SIGUSR1 passes through; SIGTERM is a stop, not a crash", async () => {
  await requireEnvoy();
  const { bootstrap } = webBootstrap();
  const envoy = supervisor({ backoff: { initialMs: 10 } });
  try {
    await envoy.start(bootstrap);
    const pid = envoy.pid!;
    assert.equal(envoy.forward("SIGUSR1"), true); // Envoy reopens its access logs
    assert.equal(envoy.forward("SIGHUP"), true); // Envoy ignores it
    await delay(200);
    assert.ok(envoy.isReady && envoy.pid === pid, "still the same Envoy");
    assert.equal(envoy.forward("SIGTERM"), true);
    await waitFor("Envoy to exit", () => envoy.state === "stopped");
    await delay(100);
    assert.equal(envoy.restarts, 0);
    assert.equal(envoy.state, "stopped");
    assert.equal(alive(pid), false);
    assert.equal(envoy.forward("SIGUSR1"), false, "nothing to forward to");
  } finally {
    await cleanup(envoy);
  }
});

Deno.test("reload: an unchanged bootstrap is a no-op; a changed one restarts; an invalid one keeps the old", async () => {
  await requireEnvoy();
  const { config, bootstrap } = webBootstrap();
  const envoy = supervisor();
  try {
    await envoy.start(bootstrap);
    const pid = envoy.pid;
    assert.equal(await envoy.reload(structuredClone(bootstrap)), false);
    assert.equal(envoy.pid, pid);

    const invalid = structuredClone(bootstrap) as EnvoyBootstrap;
    invalid.static_resources.clusters[0].type = "NOPE";
    await assert.rejects(
      envoy.reload(invalid),
      (e: unknown) => e instanceof EnvoyError && e.kind === "validate",
    );
    assert.equal(envoy.pid, pid, "the running Envoy is untouched");
    assert.equal(envoy.isReady, true);

    const port = allocatePorts(["web"]).get("web")!;
    const changed = renderBootstrap(config, {
      listenerPorts: new Map([["web", port]]),
      ...NO_AUTHZ,
    });
    assert.equal(await envoy.reload(changed, { drainMs: 500 }), true);
    assert.notEqual(envoy.pid, pid);
    assert.equal(envoy.isReady, true);
    assert.equal(envoy.restarts, 0, "a reload is not a crash restart");
    (await Deno.connect({ hostname: "127.0.0.1", port })).close();
    assert.equal(alive(pid!), false, "the old Envoy is gone");
  } finally {
    await cleanup(envoy);
  }
});

// ---------------------------------------------------------------------------------------------
// Traffic through the rendered bootstrap

// A stub WhoIs behind the real IdentityResolver: these tests are about the bootstrap and the
// supervisor, and must run without a tailnet. The path through a real tailscaled (relay → Envoy →
// ext_authz → WhoIs) is the full-stack e2e test, written by the other engineer.
const PEOPLE: Record<string, WhoIsResponse> = {
  "100.64.0.2": {
    Node: { StableID: "n-alice", Name: "alice.tail1234.ts.net.", Addresses: ["100.64.0.2/32"], Tags: [] },
    UserProfile: { LoginName: "alice@example.com", DisplayName: "Alice" },
    CapMap: { [CAP]: [{}] },
  },
};
const stubWhoIs = {
  whois: (addr: string) =>
    PEOPLE[addr]
      ? Promise.resolve(PEOPLE[addr])
      : Promise.reject(new LocalApiError("not-found", `no peer at ${addr}`, { status: 404 })),
};

interface Response1 {
  status: number;
  headers: Record<string, string>;
  body: string;
}

/** Reads one HTTP/1.1 response with a content-length (or up to EOF). */
async function readResponse(conn: Deno.Conn): Promise<Response1> {
  let bytes = new Uint8Array(0);
  const buf = new Uint8Array(16384);
  while (true) {
    const text = decoder.decode(bytes);
    const end = text.indexOf("\r\n\r\n");
    if (end >= 0) {
      const [statusLine, ...lines] = text.slice(0, end).split("\r\n");
      const headers = Object.fromEntries(
        lines.map((l) => [l.slice(0, l.indexOf(":")).toLowerCase(), l.slice(l.indexOf(":") + 1).trim()]),
      );
      // 101 Switching Protocols has no body: what follows is the new protocol's.
      const length = statusLine.includes(" 101 ") ? 0 : Number(headers["content-length"] ?? NaN);
      if (bytes.length >= end + 4 + length) {
        return {
          status: Number(statusLine.split(" ")[1]),
          headers,
          body: text.slice(end + 4, end + 4 + length),
        };
      }
    }
    const n = await conn.read(buf);
    if (n === null) throw new Error(`connection closed mid-response: ${JSON.stringify(text)}`);
    const next = new Uint8Array(bytes.length + n);
    next.set(bytes);
    next.set(buf.subarray(0, n), bytes.length);
    bytes = next;
  }
}

/**
 * A connection to Envoy's listener that starts with our PROXY v2 header as the relay sends it: the
 * destination port names the Service (0: the node).
 */
async function connectAs(
  port: number,
  options: { ip?: string; secret?: string; servicePort?: number },
): Promise<Deno.TcpConn> {
  const conn = await Deno.connect({ hostname: "127.0.0.1", port });
  const header = encodeProxyV2({
    command: "PROXY",
    transport: "tcp",
    source: { address: options.ip ?? "100.64.0.2", port: 41000 },
    destination: { address: "127.0.0.1", port: options.servicePort ?? 0 },
    tlvs: options.secret === undefined
      ? []
      : [{ type: SECRET_TLV_TYPE, value: encoder.encode(options.secret) }],
  });
  await conn.write(header);
  return conn;
}

/** Our HTTP ext_authz server on a unix socket in a private temp directory, with the stub WhoIs. */
async function startAuthz(config: Config, decisions: DecisionRecord[] = []) {
  const dir = await Deno.makeTempDir({ prefix: "tailvoy-authz-test-" });
  const server = await serveHttpAuthz(join(dir, "authz.sock"), {
    resolver: new IdentityResolver(stubWhoIs, { ttlMs: 0 }),
    listeners: listenersFromConfig(config),
    services: new ServiceIndex(),
    onDecision: (record) => decisions.push(record),
  });
  return {
    socket: server.path,
    close: async () => {
      await server.close();
      await Deno.remove(dir, { recursive: true });
    },
  };
}

async function request(
  conn: Deno.Conn,
  options: { path?: string; host?: string; headers?: string[]; close?: boolean } = {},
): Promise<Response1> {
  const head = [
    `GET ${options.path ?? "/api/items"} HTTP/1.1`,
    `Host: ${options.host ?? "app.example.com"}`,
    ...(options.headers ?? []),
    ...(options.close ? ["Connection: close"] : []),
  ];
  await conn.write(encoder.encode(`${head.join("\r\n")}\r\n\r\n`));
  return await readResponse(conn);
}

Deno.test({
  name:
    "traffic: PROXY v2 + secret → Envoy → ext_authz → backend with x-tailscale-user; denials; drain on stop",
  // grpc-js (the authz server) keeps internal timers alive briefly after close.
  sanitizeOps: false,
  sanitizeResources: false,
  async fn(t) {
    await requireEnvoy();
    const seen: { path: string; headers: Record<string, string> }[] = [];
    const backend = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen: () => {} }, async (req) => {
      const entry = { path: new URL(req.url).pathname, headers: Object.fromEntries(req.headers) };
      seen.push(entry);
      if (entry.path === "/slow") await delay(600);
      return Response.json(entry);
    });
    const secret = generateSecret();
    const decisions: DecisionRecord[] = [];
    const { config } = webBootstrap();
    const authz = await startAuthz(config, decisions);
    const envoy = supervisor();
    try {
      const { bootstrap, port } = webBootstrap({
        backendPort: backend.addr.port,
        authzSocket: authz.socket,
        secret,
      });
      await envoy.validate(bootstrap);
      await envoy.start(bootstrap);

      await t.step("allowed: 200 at the backend with our identity, the client's spoof removed", async () => {
        const conn = await connectAs(port, { secret });
        try {
          const r = await request(conn, {
            path: "/api//items/../items",
            headers: ["X-Tailscale-User: mallory@example.com", "Tailscale-User-Login: mallory@example.com"],
            close: true,
          });
          assert.equal(r.status, 200, r.body);
          const echo = JSON.parse(r.body);
          assert.equal(echo.headers["x-tailscale-user"], "alice@example.com");
          assert.equal(echo.headers["tailscale-user-login"], "alice@example.com");
          assert.equal(echo.headers["x-tailscale-ip"], "100.64.0.2");
          assert.equal(echo.path, "/api/items", "normalised before routing and authz");
          assert.equal(decisions.at(-1)?.listener, "web");
          assert.equal(decisions.at(-1)?.allow, true);
        } finally {
          conn.close();
        }
      });

      await t.step(
        "no or a wrong secret in the PROXY header: closed before HTTP; neither ext_authz nor the backend is reached",
        async () => {
          const before = { seen: seen.length, decisions: decisions.length };
          for (const secretSent of [undefined, `${secret}x`, secret.slice(1), ""]) {
            const conn = await connectAs(port, { secret: secretSent });
            try {
              await assert.rejects(request(conn, { close: true }), /connection closed mid-response/);
            } finally {
              conn.close();
            }
          }
          assert.equal(seen.length, before.seen);
          assert.equal(decisions.length, before.decisions, "ext_authz never asked");
        },
      );

      await t.step("stop waits for a request in flight, which completes with connection: close", async () => {
        const conn = await connectAs(port, { secret });
        try {
          const pending = request(conn, { path: "/slow" }); // the backend answers after 600 ms
          await waitFor("the request to reach the backend", () => seen.some((s) => s.path === "/slow"));
          const pid = envoy.pid!;
          const stopping = envoy.stop({ drainMs: 5000 });
          const r = await pending;
          assert.equal(r.status, 200, "the request in flight finished");
          assert.equal(r.headers.connection, "close", "Envoy asked the client to go away");
          await stopping;
          assert.equal(alive(pid), false);
        } finally {
          conn.close();
        }
      });

      await envoy.start(bootstrap);

      await t.step("stop does not wait for an idle keep-alive connection; it is closed", async () => {
        const conn = await connectAs(port, { secret });
        try {
          const r = await request(conn, {}); // keep-alive
          assert.equal(r.status, 200);
          assert.notEqual(r.headers.connection, "close");
          const pid = envoy.pid!;
          const started = performance.now();
          const eof = conn.read(new Uint8Array(1)).catch(() => null);
          await envoy.stop({ drainMs: 10_000 });
          const tookMs = performance.now() - started;
          assert.equal(await eof, null, "the idle connection was closed");
          assert.equal(alive(pid), false);
          assert.ok(tookMs < 3000, `no request in flight, so no wait for the drain deadline (${tookMs} ms)`);
        } finally {
          conn.close();
        }
      });
    } finally {
      await cleanup(envoy);
      await authz.close();
      await backend.shutdown();
    }
  },
});

Deno.test({
  name: "traffic: a host no route of ours serves is judged: 403 without a grant, 404 with one",
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    await requireEnvoy();
    const secret = generateSecret();
    const decisions: DecisionRecord[] = [];
    const config = configOf(`
  web:
    port: 80
    protocol: http
    routes:
      - hostname: app.example.com
        backend: 127.0.0.1:9
`);
    const authz = await startAuthz(config, decisions);
    const envoy = supervisor();
    try {
      const listenerPorts = allocatePorts(["web"]);
      await envoy.start(renderBootstrap(config, {
        listenerPorts,
        authzSocket: authz.socket,
        secret,
        authzTimeoutMs: AUTHZ_TIMEOUT_MS,
      }));
      const ask = async (ip: string) => {
        const conn = await connectAs(listenerPorts.get("web")!, { secret, ip });
        try {
          return await request(conn, { host: "other.example.com", close: true });
        } finally {
          conn.close();
        }
      };
      const carol = await ask("100.64.0.3"); // unknown to WhoIs
      assert.equal(carol.status, 403, "denied by ext_authz before the catch-all's 404");
      assert.equal(decisions.at(-1)?.code, "unknown_caller");
      assert.equal(decisions.at(-1)?.listener, "web");
      const alice = await ask("100.64.0.2"); // her grant is {}
      assert.equal(alice.status, 404, alice.body);
      assert.equal(decisions.at(-1)?.allow, true);
    } finally {
      await cleanup(envoy);
      await authz.close();
    }
  },
});

Deno.test({
  name:
    "traffic: https with an SNI chain (tls_inspector after PROXY), ALPN h2, /x/* routing, WebSocket upgrade",
  sanitizeOps: false,
  sanitizeResources: false,
  async fn(t) {
    await requireEnvoy();
    const serve = (name: string) =>
      Deno.serve({ hostname: "127.0.0.1", port: 0, onListen: () => {} }, (req) => {
        if (req.headers.get("upgrade") === "websocket") {
          const { socket, response } = Deno.upgradeWebSocket(req);
          socket.onmessage = (event) => socket.send(event.data);
          return response;
        }
        return Response.json({ backend: name, path: new URL(req.url).pathname });
      });
    const api = serve("api");
    const app = serve("app");
    const cert = join(PROJECT_ROOT, "tests", "fixtures", "envoy", "test.crt");
    const key = join(PROJECT_ROOT, "tests", "fixtures", "envoy", "test.key");
    const config = configOf(`
  web:
    port: 443
    protocol: https
    tls: { cert: ${cert}, key: ${key} }
    routes:
      - hostname: app.example.com
        paths: { /api/*: 127.0.0.1:${api.addr.port} }
      - hostname: app.example.com
        backend: 127.0.0.1:${app.addr.port}
      - hostname: admin.example.com
        backend: 127.0.0.1:${app.addr.port}
        tls: { cert: ${cert}, key: ${key} }
`);
    const secret = generateSecret();
    const authz = await startAuthz(config);
    const envoy = supervisor();
    const caCerts = [await Deno.readTextFile(join(PROJECT_ROOT, "tests", "fixtures", "envoy", "ca.crt"))];
    try {
      const listenerPorts = allocatePorts(["web"]);
      const bootstrap = renderBootstrap(config, {
        listenerPorts,
        authzSocket: authz.socket,
        secret,
        authzTimeoutMs: AUTHZ_TIMEOUT_MS,
      });
      await envoy.validate(bootstrap);
      await envoy.start(bootstrap);
      const port = listenerPorts.get("web")!;
      const tls = async (hostname: string, alpnProtocols = ["http/1.1"]) =>
        await Deno.startTls(await connectAs(port, { secret }), { hostname, caCerts, alpnProtocols });

      await t.step(
        "ALPN offers h2 (gRPC over TLS needs it) on the default chain and the SNI chain",
        async () => {
          for (const hostname of ["app.example.com", "admin.example.com"]) {
            const conn = await tls(hostname, ["h2", "http/1.1"]);
            try {
              assert.equal((await conn.handshake()).alpnProtocol, "h2", hostname);
            } finally {
              conn.close();
            }
          }
        },
      );

      await t.step("/api/* is /api, /api/ and below, not /apiv2", async () => {
        const expected: Record<string, string> = {
          "/api": "api",
          "/api/": "api",
          "/api/x/y": "api",
          "/apiv2": "app",
          "/": "app",
        };
        for (const [path, backend] of Object.entries(expected)) {
          const conn = await tls("app.example.com");
          try {
            const r = await request(conn, { path, close: true });
            assert.equal(r.status, 200, `${path}: ${r.body}`);
            assert.equal(JSON.parse(r.body).backend, backend, path);
          } finally {
            conn.close();
          }
        }
      });

      await t.step("WebSocket upgrade passes through Envoy", async () => {
        const conn = await tls("app.example.com");
        try {
          const r = await request(conn, {
            path: "/ws",
            headers: [
              "Upgrade: websocket",
              "Connection: Upgrade",
              "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
              "Sec-WebSocket-Version: 13",
            ],
          });
          assert.equal(r.status, 101, r.body);
          assert.equal(r.headers.upgrade?.toLowerCase(), "websocket");
        } finally {
          conn.close();
        }
      });
    } finally {
      await cleanup(envoy);
      await authz.close();
      await api.shutdown();
      await app.shutdown();
    }
  },
});

Deno.test("an Envoy left behind by a dead tailvoy is reaped on the next start; a live owner's is not", async () => {
  const { reapOrphans } = await import("../../lib/envoy/mod.ts");
  const { getLogger } = await import("../../lib/log.ts");
  const base = await Deno.makeTempDir();
  try {
    const dead = new Deno.Command("true").spawn();
    await dead.status;
    const mk = async (name: string, owner: number) => {
      const dir = `${base}/tailvoy-envoy-${name}`;
      await Deno.mkdir(dir);
      // A stand-in "Envoy" whose command line names its dir, as the real one's does.
      const child = new Deno.Command("sh", { args: ["-c", "sleep 30", dir], stdout: "null", stderr: "null" })
        .spawn();
      await Deno.writeTextFile(`${dir}/owner.json`, JSON.stringify({ tailvoy: owner, envoy: child.pid }));
      return { dir, child };
    };
    const orphan = await mk("orphan", dead.pid);
    const owned = await mk("owned", Deno.pid);
    try {
      assert.equal(await reapOrphans(base, getLogger("test")), 1);
      assert.equal((await orphan.child.status).signal, "SIGKILL");
      await assert.rejects(Deno.stat(orphan.dir));
      await Deno.stat(owned.dir);
    } finally {
      try {
        owned.child.kill("SIGKILL");
      } catch { /* gone */ }
      await owned.child.status;
    }
  } finally {
    await Deno.remove(base, { recursive: true });
  }
});

Deno.test({
  name: "traffic: ext_authz down, hanging or failing denies HTTP (403) and gRPC (PERMISSION_DENIED) callers",
  sanitizeOps: false,
  sanitizeResources: false,
  async fn(t) {
    await requireEnvoy();
    const grpcBackend = await grpcHealthBackend();
    const config = configOf(`
  web:
    port: 80
    protocol: http
    backend: 127.0.0.1:9
  rpc:
    port: 81
    protocol: grpc
    routes: [{backend: "127.0.0.1:${grpcBackend.port}"}]
`);
    const dir = await Deno.makeTempDir({ prefix: "tailvoy-authz-down-" });
    const socket = join(dir, "authz.sock");
    let mode: "hang" | "500" | "down" = "down";
    let server: Deno.HttpServer | undefined;
    const secret = generateSecret();
    const envoy = supervisor();
    const { Client } = healthService();
    try {
      const listenerPorts = allocatePorts(["web", "rpc"]);
      // The default timeout (250 ms): what production runs with.
      await envoy.start(renderBootstrap(config, { listenerPorts, authzSocket: socket, secret }));
      // Stands in for our relay: prepends the PROXY header with the secret.
      const relay = Deno.listen({ hostname: "127.0.0.1", port: 0 });
      (async () => {
        for await (const conn of relay) {
          const upstream = await connectAs(listenerPorts.get("rpc")!, { secret });
          conn.readable.pipeTo(upstream.writable).catch(() => {});
          upstream.readable.pipeTo(conn.writable).catch(() => {});
        }
      })().catch(() => {});
      const ask = async () => {
        const conn = await connectAs(listenerPorts.get("web")!, { secret });
        try {
          return (await request(conn, { close: true })).status;
        } finally {
          conn.close();
        }
      };
      const rpc = async () => {
        const client = new Client(`127.0.0.1:${relay.addr.port}`, grpc.credentials.createInsecure());
        try {
          return await new Promise<string>((resolve) =>
            client.Check(
              { service: "" },
              { deadline: Date.now() + 10_000 },
              (error: grpc.ServiceError | null) => resolve(error ? grpc.status[error.code] : "OK"),
            )
          );
        } finally {
          client.close();
        }
      };
      for (const next of ["down", "hang", "500"] as const) {
        await t.step(`ext_authz ${next}`, async () => {
          mode = next;
          if (next !== "down" && !server) {
            server = Deno.serve({ path: socket, onListen: () => {} }, async () => {
              if (mode === "hang") await delay(1000);
              return new Response("boom", { status: mode === "500" ? 500 : 200 });
            });
          }
          assert.equal(await ask(), 403);
          assert.equal(await rpc(), "PERMISSION_DENIED");
        });
      }
      relay.close();
    } finally {
      await cleanup(envoy);
      await server?.shutdown();
      grpcBackend.close();
      await Deno.remove(dir, { recursive: true });
    }
  },
});
