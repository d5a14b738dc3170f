/**
 * L7 protocols end to end: the real proxy process with the real Envoy and our ext_authz beside a real
 * tailscaled, callers on real tailnet nodes.
 *
 * - tailvoy's README multi-team example, as far as one gateway node can express it (headscale has no
 *   Tailscale Services, so every grant targets `tag:gw` and names its listeners): four identities
 *   against an http, a grpc (`grpc.health.v1.Health/Check`), a tcp and a tls passthrough listener;
 * - https with TLS termination, including a Host header that differs from the SNI;
 * - WebSocket upgrades through an http listener;
 * - faults: a backend that is down, and a gateway tailscaled that hangs (SIGSTOP) under ext_authz.
 */

import { bridge, pump, readSome, tlsBackend, tlsVia } from "../../scripts/harness/clients.ts";
import { closeQuietly } from "../../lib/util/async.ts";
import assert from "node:assert/strict";
import { join } from "node:path";
import * as grpc from "@grpc/grpc-js";
import { DENY_BODY, DENY_MESSAGE } from "../../lib/extauthz/mod.ts";
import { LocalApiClient } from "../../lib/localapi/mod.ts";
import { encodeProxyV2 } from "../../lib/proxy_protocol/mod.ts";
import { PROJECT_ROOT } from "../../scripts/harness/peers.ts";
import { makeCert } from "../../scripts/harness/certs.ts";
import { grpcHealthBackend, healthService } from "../../scripts/harness/grpc_health.ts";
import { Proxy, tcpEcho } from "../../scripts/harness/proxy.ts";
import { fixture, tailnetFixture, tempDir } from "../../scripts/harness/fixture.ts";
import { CAP, defaultPolicy, type Policy, type Tailnet, waitFor } from "../../scripts/harness/tailnet.ts";

const enc = new TextEncoder();
const dec = new TextDecoder();
const ENVOY = join(PROJECT_ROOT, ".peers", "bin", "envoy");

// Tailnet ports of the main gateway's listeners, and of the second gateway's (distinct on purpose).
const PORTS = {
  http: 17680,
  grpc: 17651,
  postgres: 17632,
  tls: 17643,
  secure: 17644,
  ws: 17681,
  down: 17682,
  slow: 17690,
  slowrpc: 17691,
} as const;

// ---------------------------------------------------------------------------------------------
// The policy: tailvoy's README multi-team grants, with this test's identities in the roles.

/** Rules each node should get from {@link protocolsPolicy}, as WhoIs returns them (to wait for it). */
const EXPECTED_CAPS: Record<string, unknown[]> = {
  // Engineers: TLS passthrough to app.example.com only; plus this test's https, WebSocket and fault
  // listeners.
  alice: [
    { listeners: ["tls"], hostnames: ["app.example.com"] },
    { listeners: ["secure"], hostnames: ["app.example.com"] },
    { listeners: ["ws", "down", "slow", "slowrpc"] },
  ],
  // DBA: postgres only.
  bob: [{ listeners: ["postgres"] }],
  // Frontend: HTTP /api and gRPC health only.
  ci: [{ listeners: ["http", "grpc"], routes: ["/api/*", "/grpc.health.v1.Health/*"] }],
  // Ops: everything.
  ops: [{}],
};

function protocolsPolicy(): Policy {
  const p = defaultPolicy();
  p.groups = { "group:eng": ["alice@"], "group:dba": ["bob@"], "group:ops": ["ops@"] };
  p.grants = [
    { src: ["*"], dst: ["*"], ip: ["*"] },
    { src: ["tag:ci"], dst: ["tag:gw"], app: { [CAP]: EXPECTED_CAPS.ci } },
    { src: ["group:dba"], dst: ["tag:gw"], app: { [CAP]: EXPECTED_CAPS.bob } },
    { src: ["group:eng"], dst: ["tag:gw"], app: { [CAP]: EXPECTED_CAPS.alice } },
    { src: ["group:ops"], dst: ["tag:gw"], app: { [CAP]: EXPECTED_CAPS.ops } },
  ];
  return p;
}

type Cell = "200" | "403" | "OK" | "PERMISSION_DENIED" | "allowed" | "closed";
const COLUMNS = [
  "http /api/users",
  "http /admin",
  "grpc Health/Check",
  "tcp postgres",
  "tls app.example.com",
  "tls admin.example.com",
] as const;
type Row = Record<typeof COLUMNS[number], Cell>;

/** The expected multi-team matrix: who gets what on which listener. */
const MATRIX: { who: string; role: string; row: Row }[] = [
  {
    who: "alice",
    role: "group:eng = engineers",
    row: {
      "http /api/users": "403",
      "http /admin": "403",
      "grpc Health/Check": "PERMISSION_DENIED",
      "tcp postgres": "closed",
      "tls app.example.com": "allowed",
      "tls admin.example.com": "closed",
    },
  },
  {
    who: "bob",
    role: "group:dba = DBA",
    row: {
      "http /api/users": "403",
      "http /admin": "403",
      "grpc Health/Check": "PERMISSION_DENIED",
      "tcp postgres": "allowed",
      "tls app.example.com": "closed",
      "tls admin.example.com": "closed",
    },
  },
  {
    who: "ci",
    role: "tag:ci = frontend",
    row: {
      "http /api/users": "200",
      "http /admin": "403",
      "grpc Health/Check": "OK",
      "tcp postgres": "closed",
      "tls app.example.com": "closed",
      "tls admin.example.com": "closed",
    },
  },
  {
    who: "ops",
    role: "group:ops = ops",
    row: {
      "http /api/users": "200",
      "http /admin": "200",
      "grpc Health/Check": "OK",
      "tcp postgres": "allowed",
      "tls app.example.com": "allowed",
      "tls admin.example.com": "allowed",
    },
  },
];

// ---------------------------------------------------------------------------------------------
// HTTP/1.1 on a raw connection (keep-alive capable), with timeouts so nothing hangs the suite.

interface HttpResult {
  status: number;
  headers: Record<string, string>;
  body: string;
}

/** Buffered reads from a connection. */
class ConnReader {
  readonly conn: Deno.Conn;
  #buf = new Uint8Array(0);
  constructor(conn: Deno.Conn) {
    this.conn = conn;
  }
  async #fill(): Promise<boolean> {
    const chunk = new Uint8Array(16 * 1024);
    const n = await this.conn.read(chunk);
    if (n === null) return false;
    const next = new Uint8Array(this.#buf.length + n);
    next.set(this.#buf);
    next.set(chunk.subarray(0, n), this.#buf.length);
    this.#buf = next;
    return true;
  }
  /** Text up to (not including) `sep`, which is consumed; null at EOF before it. */
  async until(sep: string): Promise<string | null> {
    while (true) {
      const i = dec.decode(this.#buf).indexOf(sep);
      if (i >= 0) {
        const text = dec.decode(this.#buf).slice(0, i);
        this.#buf = this.#buf.subarray(enc.encode(text + sep).length);
        return text;
      }
      if (!await this.#fill()) return null;
    }
  }
  /** Exactly `n` bytes (fewer at EOF). */
  async take(n: number): Promise<Uint8Array> {
    while (this.#buf.length < n && await this.#fill()) { /* more */ }
    const out = this.#buf.subarray(0, n);
    this.#buf = this.#buf.subarray(out.length);
    return out;
  }
  /** Everything until EOF. */
  async rest(): Promise<Uint8Array> {
    while (await this.#fill()) { /* more */ }
    const out = this.#buf;
    this.#buf = new Uint8Array(0);
    return out;
  }
}

/** Rejects after `ms`, closing `conn` so the pending read ends. */
async function withTimeout<T>(promise: Promise<T>, ms: number, conn: Deno.Conn, what: string): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => {
      closeQuietly(conn);
      reject(new Error(`${what}: no answer within ${ms} ms`));
    }, ms);
  });
  try {
    return await Promise.race([promise, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

/** Reads one response; status 0 when the connection ends (or is reset) before a status line. */
async function readResponse(reader: ConnReader): Promise<HttpResult> {
  let head: string | null;
  try {
    head = await reader.until("\r\n\r\n");
  } catch {
    head = null; // reset: refused
  }
  if (head === null) return { status: 0, headers: {}, body: "" };
  const [statusLine, ...lines] = head.split("\r\n");
  const headers = Object.fromEntries(lines.map((l) => {
    const i = l.indexOf(":");
    return [l.slice(0, i).toLowerCase(), l.slice(i + 1).trim()];
  }));
  const status = Number(statusLine.split(" ")[1] ?? 0);
  let body = "";
  if (status === 101 || status === 204 || status === 304) {
    // no body
  } else if (headers["transfer-encoding"] === "chunked") {
    while (true) {
      const size = parseInt((await reader.until("\r\n")) ?? "0", 16);
      if (!size) {
        await reader.until("\r\n");
        break;
      }
      body += dec.decode(await reader.take(size));
      await reader.until("\r\n");
    }
  } else if (headers["content-length"] !== undefined) {
    body = dec.decode(await reader.take(Number(headers["content-length"])));
  } else {
    body = dec.decode(await reader.rest().catch(() => new Uint8Array(0)));
  }
  return { status, headers, body };
}

interface RequestOptions {
  method?: string;
  /** Request target (default `/`); may be absolute-form. */
  target?: string;
  host?: string;
  headers?: Record<string, string>;
  /** Keep the connection open (default: `Connection: close`). */
  keepAlive?: boolean;
}

function requestBytes(options: RequestOptions): Uint8Array {
  const head = [`${options.method ?? "GET"} ${options.target ?? "/"} HTTP/1.1`];
  head.push(`Host: ${options.host ?? "app.box.test"}`);
  if (!options.keepAlive) head.push("Connection: close");
  for (const [k, v] of Object.entries(options.headers ?? {})) head.push(`${k}: ${v}`);
  return enc.encode(head.join("\r\n") + "\r\n\r\n");
}

/** One request on a fresh connection, which is closed afterwards. */
async function http(conn: Deno.Conn, options: RequestOptions = {}): Promise<HttpResult> {
  try {
    await conn.write(requestBytes(options));
    return await withTimeout(readResponse(new ConnReader(conn)), 10_000, conn, "HTTP response");
  } finally {
    closeQuietly(conn);
  }
}

// ---------------------------------------------------------------------------------------------
// Backends

/** An HTTP backend that answers with its name and the request it got (path, headers) as JSON. */
function echoBackend(name: string): { port: number; close: () => Promise<void> } {
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen: () => {} }, (req) =>
    Response.json({
      backend: name,
      path: new URL(req.url).pathname,
      headers: Object.fromEntries(req.headers),
    }));
  return { port: server.addr.port, close: () => server.shutdown() };
}

/** A WebSocket backend: greets with the caller's x-tailscale-user, then echoes every message. */
function webSocketBackend(): { port: number; close: () => Promise<void> } {
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen: () => {} }, (req) => {
    if (req.headers.get("upgrade")?.toLowerCase() !== "websocket") {
      return new Response("WebSocket only", { status: 426 });
    }
    const user = req.headers.get("x-tailscale-user") ?? "";
    const { socket, response } = Deno.upgradeWebSocket(req);
    socket.onopen = () => socket.send(`hello ${user}`);
    socket.onmessage = (e) => socket.send(`echo:${e.data}`);
    return response;
  });
  return { port: server.addr.port, close: () => server.shutdown() };
}

// ---------------------------------------------------------------------------------------------
// Reaching the gateway

function freePort(): number {
  const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const { port } = l.addr;
  l.close();
  return port;
}

/** Waits until every node named in `expected` has exactly those rules, as `api`'s tailscaled sees them. */
async function waitForCaps(
  tailnet: Tailnet,
  api: LocalApiClient,
  expected: Record<string, unknown[]>,
  what: string,
): Promise<void> {
  await waitFor(async () => {
    for (const [name, rules] of Object.entries(expected)) {
      const caps = (await api.whois(tailnet.node(name).ipv4)).CapMap[CAP];
      if (JSON.stringify(caps) !== JSON.stringify(rules)) return undefined;
    }
    return true;
  }, { what, timeoutMs: 20_000, intervalMs: 200 });
}

/**
 * A tailvoy config file (YAML) with `listeners` (YAML lines, each top-level one `name: ...`), each
 * published as a Service of its own name as in tailvoy's README, admin on a free port, our Envoy.
 */
async function writeConfig(file: string, listeners: string[]): Promise<string> {
  const names = listeners.filter((l) => /^\w/.test(l)).map((l) => l.slice(0, l.indexOf(":")));
  await Deno.writeTextFile(
    file,
    [
      "tailscale:",
      `  serviceMappings: {${names.map((n) => `${n}: [${n}]`).join(", ")}}`,
      "listeners:",
      ...listeners.map((l) => `  ${l}`),
      "tailvoy:",
      `  adminAddress: "127.0.0.1:0"`,
      `  envoyBinary: ${ENVOY}`,
      "",
    ].join("\n"),
  );
  return file;
}

function formatRow(row: Row): string {
  return COLUMNS.map((c) => `${c} ${row[c]}`).join(" · ");
}

// ---------------------------------------------------------------------------------------------
// Fixtures shared by this file's tests.

Deno.test.sanitizer({ ops: false, resources: false });

const tailnetOnce = tailnetFixture();

/** The backends of every listener here, and the TLS material of the https and tls listeners. */
const backendsOnce = fixture(async (cleanup) => {
  const dir = await tempDir(cleanup, "tailvoy-l7p-");
  const started = <T extends { close: () => unknown }>(b: T): T => {
    cleanup.defer(async () => void await b.close());
    return b;
  };
  const tls = { ...await makeCert(dir), certFile: join(dir, "cert.pem"), keyFile: join(dir, "key.pem") };
  return {
    dir,
    tls,
    web: started(echoBackend("web")),
    app: started(echoBackend("app")),
    admin: started(echoBackend("admin")),
    fallback: started(echoBackend("default")),
    ws: started(webSocketBackend()),
    grpc: started(await grpcHealthBackend()),
    pg: started(tcpEcho()),
    tlsApp: started(tlsBackend(tls, "app")),
    tlsAdmin: started(tlsBackend(tls, "admin")),
  };
});

/** The nodes this file adds: ops (the policy names user ops, which must exist) and a gateway to hang. */
const nodesOnce = fixture(async () => {
  const tailnet = await tailnetOnce();
  const [ops, gwslow] = await Promise.all([
    tailnet.addNode({ name: "ops", user: "ops" }),
    tailnet.addNode({ name: "gwslow", tags: ["tag:gw"] }),
  ]);
  return { ops, gwslow };
});

/** The tailnet with every node here and the multi-team policy, seen by the gateway. */
async function multiTeam(): Promise<Tailnet> {
  const tailnet = await tailnetOnce();
  await nodesOnce();
  await tailnet.usePolicy(protocolsPolicy());
  using api = new LocalApiClient(tailnet.node("gw").socket);
  await waitForCaps(tailnet, api, EXPECTED_CAPS, "the multi-team policy at the gateway");
  return tailnet;
}

/** The main gateway: one proxy with every listener kind, on node gw. */
const mainGatewayOnce = fixture(async (cleanup) => {
  const tailnet = await multiTeam();
  const b = await backendsOnce();
  const config = await writeConfig(join(b.dir, "main.yaml"), [
    `http: {port: ${PORTS.http}, protocol: http, routes: [{backend: "127.0.0.1:${b.web.port}"}]}`,
    `grpc: {port: ${PORTS.grpc}, protocol: grpc, routes: [{backend: "127.0.0.1:${b.grpc.port}"}]}`,
    `postgres: {port: ${PORTS.postgres}, protocol: tcp, backend: "127.0.0.1:${b.pg.port}"}`,
    `tls:`,
    `    port: ${PORTS.tls}`,
    `    protocol: tls`,
    `    routes:`,
    `      - {hostname: app.example.com, backend: "127.0.0.1:${b.tlsApp.port}"}`,
    `      - {hostname: admin.example.com, backend: "127.0.0.1:${b.tlsAdmin.port}"}`,
    `secure:`,
    `    port: ${PORTS.secure}`,
    `    protocol: https`,
    `    tls: {cert: ${b.tls.certFile}, key: ${b.tls.keyFile}}`,
    `    routes:`,
    `      - {hostname: app.example.com, backend: "127.0.0.1:${b.app.port}"}`,
    `      - {hostname: admin.example.com, backend: "127.0.0.1:${b.admin.port}"}`,
    `      - {backend: "127.0.0.1:${b.fallback.port}"}`,
    `ws: {port: ${PORTS.ws}, protocol: http, backend: "127.0.0.1:${b.ws.port}"}`,
    // Nothing listens there: the backend is down.
    `down: {port: ${PORTS.down}, protocol: http, backend: "127.0.0.1:${freePort()}"}`,
  ]);
  const proxy = new Proxy(config, tailnet.node("gw").socket);
  cleanup.defer(async () => void await proxy.stop());
  await proxy.waitLog(/"message":"ready:/, "ready");
  await proxy.waitLog(/"logger":"tailvoy.l7"/, "Envoy ready");
  return proxy;
});

/** The main gateway, running, with the multi-team policy in place. */
async function mainGateway() {
  const proxy = await mainGatewayOnce();
  return { proxy, tailnet: await multiTeam(), b: await backendsOnce() };
}

// ---------------------------------------------------------------------------------------------
// The multi-team matrix

/** What `who` gets in each column of the matrix. */
async function cells(who: string): Promise<Row> {
  const { tailnet, b } = await mainGateway();
  const gw = tailnet.node("gw");
  const { Client: HealthClient } = healthService();
  const get = async (path: string) =>
    String(
      (await http(await tailnet.dial(who, gw.ipv4, PORTS.http), { target: path })).status,
    ) as Cell;
  const tcp = async (): Promise<Cell> => {
    const c = await tailnet.dial(who, gw.ipv4, PORTS.postgres);
    await c.write(enc.encode("SELECT 1")).catch(() => {});
    const got = await readSome(c);
    closeQuietly(c);
    return got === "echo:SELECT 1" ? "allowed" : "closed";
  };
  const tlsCell = async (sni: string): Promise<Cell> => {
    const got = await tlsVia(tailnet, who, PORTS.tls, sni, b.tls.ca);
    if (got === null) return "closed";
    assert.equal(got, `backend ${sni.split(".")[0]}`, "routed by SNI");
    return "allowed";
  };
  const grpcCell = async (): Promise<Cell> => {
    const br = bridge(tailnet, who, gw.ipv4, PORTS.grpc);
    const client = new HealthClient(`127.0.0.1:${br.port}`, grpc.credentials.createInsecure());
    try {
      return await new Promise<Cell>((resolve, reject) =>
        client.Check(
          { service: "" },
          { deadline: Date.now() + 10_000 },
          (error: grpc.ServiceError | null, response?: { status: string }) => {
            if (!error) {
              assert.equal(response?.status, "SERVING");
              assert.equal(b.grpc.lastIp(), tailnet.node(who).ipv4, "identity at the gRPC backend");
              return resolve("OK");
            }
            if (error.code === grpc.status.PERMISSION_DENIED) {
              assert.equal(error.details, DENY_MESSAGE);
              return resolve("PERMISSION_DENIED");
            }
            reject(error);
          },
        )
      );
    } finally {
      client.close();
      br.close();
    }
  };
  return {
    "http /api/users": await get("/api/users"),
    "http /admin": await get("/admin"),
    "grpc Health/Check": await grpcCell(),
    "tcp postgres": await tcp(),
    "tls app.example.com": await tlsCell("app.example.com"),
    "tls admin.example.com": await tlsCell("admin.example.com"),
  };
}

for (const { who, role, row } of MATRIX) {
  Deno.test(`L7 protocols: multi-team: ${who} (${role}): ${formatRow(row)}`, async () => {
    assert.deepEqual(await cells(who), row);
  });
}

// ---------------------------------------------------------------------------------------------
// https

/** One request over https from `who` with `sni`; the backend's JSON when it answered 200. */
async function https(who: string, sni: string, options: RequestOptions) {
  const { tailnet, b } = await mainGateway();
  const raw = await tailnet.dial(who, tailnet.node("gw").ipv4, PORTS.secure);
  const conn = await Deno.startTls(raw, { hostname: sni, caCerts: [b.tls.ca] });
  const r = await http(conn, options);
  return { ...r, json: r.status === 200 ? JSON.parse(r.body) : undefined };
}

Deno.test("L7 protocols: https: alice 200 with identity headers at the backend; bob 403", async () => {
  const { tailnet } = await mainGateway();
  const a = await https("alice", "app.example.com", { target: "/api/users", host: "app.example.com" });
  assert.equal(a.status, 200, a.body);
  assert.equal(a.json.backend, "app");
  assert.equal(a.json.headers["x-tailscale-user"], "alice");
  assert.equal(a.json.headers["x-tailscale-ip"], tailnet.node("alice").ipv4);
  assert.equal(a.json.headers["x-forwarded-proto"], "https");
  const b = await https("bob", "app.example.com", { target: "/api/users", host: "app.example.com" });
  assert.equal(b.status, 403);
  assert.equal(b.body, DENY_BODY);
});

Deno.test("L7 protocols: https: Host, not SNI, decides and routes (the certificate only follows SNI)", async () => {
  // alice may use app.example.com only. SNI app + Host admin: judged (and routed) as admin.
  assert.equal(
    (await https("alice", "app.example.com", { target: "/", host: "admin.example.com" })).status,
    403,
  );
  // SNI admin + Host app: judged as app, and served by the app backend, never admin's.
  const r = await https("alice", "admin.example.com", { target: "/", host: "app.example.com" });
  assert.equal(r.status, 200);
  assert.equal(r.json.backend, "app");
  // ops may use both: routing follows Host whatever the SNI.
  const o = await https("ops", "app.example.com", { target: "/", host: "admin.example.com" });
  assert.equal(o.status, 200);
  assert.equal(o.json.backend, "admin");
  // Case and port in Host change nothing.
  const c = await https("alice", "app.example.com", { target: "/", host: "APP.Example.com:443" });
  assert.equal(c.status, 200);
  assert.equal(c.json.backend, "app");
  // A host alice is not granted, served by the listener's catch-all backend: 403.
  assert.equal(
    (await https("alice", "app.example.com", { target: "/", host: "other.example.com" })).status,
    403,
  );
  // An absolute-form target names another authority than the Host header: Envoy replaces Host with
  // it, and that one authority is both judged and routed.
  const abs = await https("alice", "app.example.com", {
    target: "https://admin.example.com/x",
    host: "app.example.com",
  });
  assert.equal(abs.status, 403, "judged as admin.example.com");
  const abs2 = await https("alice", "app.example.com", {
    target: "https://app.example.com/x",
    host: "admin.example.com",
  });
  assert.equal(abs2.status, 200);
  assert.equal(abs2.json.backend, "app");
  assert.equal(abs2.json.headers.host, "app.example.com");
});

// Was a bypass: Envoy matched `app.example.com.` against no virtual host and routed it to the catch-all
// backend, while the policy stripped the dot and allowed it as app.example.com. Fixed with the HCM's
// strip_trailing_host_dot.
Deno.test("L7 protocols: a Host with a trailing dot reaches the same backend the policy judged (regression)", async () => {
  const r = await https("alice", "app.example.com", { target: "/", host: "app.example.com." });
  assert.equal(r.status, 200, r.body);
  assert.equal(r.json.backend, "app");
  assert.equal(
    (await https("alice", "app.example.com", { target: "/", host: "other.example.com." })).status,
    403,
  );
});

// ---------------------------------------------------------------------------------------------
// WebSocket

Deno.test("L7 protocols: WebSocket: alice upgrades (101) and echoes; bob gets 403 before any upgrade", async () => {
  const { tailnet } = await mainGateway();
  const gw = tailnet.node("gw");
  const upgrade = (who: string) =>
    tailnet.dial(who, gw.ipv4, PORTS.ws).then((c) =>
      http(c, {
        target: "/chat",
        keepAlive: true,
        headers: {
          Upgrade: "websocket",
          Connection: "Upgrade",
          "Sec-WebSocket-Key": btoa("0123456789abcdef"),
          "Sec-WebSocket-Version": "13",
        },
      })
    );
  const a = await upgrade("alice");
  assert.equal(a.status, 101);
  assert.equal(a.headers.upgrade?.toLowerCase(), "websocket");
  const b = await upgrade("bob");
  assert.equal(b.status, 403);
  assert.equal(b.body, DENY_BODY);

  const br = bridge(tailnet, "alice", gw.ipv4, PORTS.ws);
  const socket = new WebSocket(`ws://127.0.0.1:${br.port}/chat`);
  try {
    const messages: string[] = [];
    const got = (n: number) =>
      waitFor(() => messages.length >= n ? true : undefined, {
        what: `${n} WebSocket messages`,
        timeoutMs: 10_000,
      });
    socket.onmessage = (e) => messages.push(String(e.data));
    await new Promise((resolve, reject) => {
      socket.onopen = resolve;
      socket.onerror = () => reject(new Error("WebSocket failed to open"));
    });
    await got(1);
    assert.equal(messages[0], "hello alice", "identity header on the upgrade request");
    socket.send("ping");
    socket.send("x".repeat(70_000)); // larger than one frame buffer
    await got(3);
    assert.equal(messages[1], "echo:ping");
    assert.equal(messages[2], `echo:${"x".repeat(70_000)}`);
  } finally {
    socket.close();
    br.close();
  }
});

// ---------------------------------------------------------------------------------------------
// Faults and the main gateway's own surfaces

Deno.test("L7 protocols: backend down: 503 at once for an allowed caller; 403 for bob", async () => {
  const { tailnet } = await mainGateway();
  const gw = tailnet.node("gw");
  const t0 = performance.now();
  const r = await http(await tailnet.dial("alice", gw.ipv4, PORTS.down), { target: "/x" });
  const ms = performance.now() - t0;
  assert.equal(r.status, 503, r.body);
  assert.ok(ms < 2000, `503 after ${ms.toFixed(0)} ms`);
  assert.equal(
    (await http(await tailnet.dial("bob", gw.ipv4, PORTS.down), { target: "/x" })).status,
    403,
  );
});

Deno.test(
  "L7 protocols: ext_authz and Envoy's admin API are unix sockets in private directories, no TCP port; no HTTP/2 server in the proxy",
  async () => {
    const { proxy } = await mainGateway();
    // Whoever reaches ext_authz can name any caller, and Envoy's admin shows the relay secret.
    const line = JSON.parse(await proxy.waitLog(/ext_authz listening on/, "ext_authz address"));
    const envoyLine = JSON.parse(await proxy.waitLog(/Envoy is ready \(pid/, "Envoy's admin"));
    for (const socket of [line.path as string, envoyLine.admin as string]) {
      assert.match(socket, /^\//);
      assert.equal((await Deno.stat(socket.replace(/\/[^/]+$/, ""))).mode! & 0o777, 0o700, socket);
    }
    await assert.rejects(Deno.connect({ hostname: "127.0.0.1", port: 9001 }));
    // No gRPC server (node:http2, which a client can abort: denoland/deno#36788) in this mode.
    assert.ok(!proxy.output.includes("gRPC ext_authz"), "no gRPC server in standalone mode");
  },
);

Deno.test("L7 protocols: the main gateway exits 0 on SIGTERM", async () => {
  const { proxy } = await mainGateway();
  const code = await proxy.stop();
  assert.equal(code, 0, proxy.lines.slice(-6).join("\n"));
});

// ---------------------------------------------------------------------------------------------
// A gateway of our own whose tailscaled we hang (others' tests keep theirs).

Deno.test(
  "L7 protocols: authz slow (gateway tailscaled stopped): HTTP 403 and gRPC PERMISSION_DENIED within the ext_authz timeout; recovers",
  async () => {
    const tailnet = await multiTeam();
    const b = await backendsOnce();
    const { gwslow } = await nodesOnce();
    const { Client: HealthClient } = healthService();
    using slowApi = new LocalApiClient(gwslow.socket);
    await waitForCaps(tailnet, slowApi, { alice: EXPECTED_CAPS.alice }, "the policy at gwslow");
    const slowConfig = await writeConfig(join(b.dir, "slow.yaml"), [
      `slow: {port: ${PORTS.slow}, protocol: http, backend: "127.0.0.1:${b.web.port}"}`,
      `slowrpc: {port: ${PORTS.slowrpc}, protocol: grpc, routes: [{backend: "127.0.0.1:${b.grpc.port}"}]}`,
    ]);
    const slow = new Proxy(slowConfig, gwslow.socket);
    let stopped = false;
    try {
      await slow.waitLog(/"message":"ready:/, "ready");
      const viaTailnet = async () =>
        (await http(await tailnet.dial("alice", gwslow.ipv4, PORTS.slow), { target: "/x" })).status;
      assert.equal(await viaTailnet(), 200);
      // Our serve listener, where tailscaled forwards gwslow:PORT with a PROXY v2 header. While
      // tailscaled is stopped nothing reaches us through the tailnet (its netstack is stopped too), so
      // we connect as tailscaled would.
      const { config } = await slowApi.getServeConfig();
      const relayPortOf = (port: number) => {
        const forward = Object.values(config.Foreground ?? {})
          .map((fg) => fg.TCP?.[String(port)]?.TCPForward)
          .find(Boolean);
        const relayPort = Number(/^127\.0\.0\.1:(\d+)$/.exec(forward ?? "")?.[1]);
        assert.ok(relayPort > 0, `serve forward of ${port}: ${forward}`);
        return relayPort;
      };
      const relayPort = relayPortOf(PORTS.slow);
      const alice = tailnet.node("alice");
      const asTailscaled = async (
        to: { relay: number; port: number } = { relay: relayPort, port: PORTS.slow },
      ) => {
        const c = await Deno.connect({ hostname: "127.0.0.1", port: to.relay });
        await c.write(encodeProxyV2({
          command: "PROXY",
          transport: "tcp",
          source: { address: alice.ipv4, port: 40000 + Math.floor(Math.random() * 20000) },
          destination: { address: gwslow.ipv4, port: to.port },
        }));
        return c;
      };
      // gRPC as alice, on one HTTP/2 connection opened (and admitted) before the hang: grpc-js dials
      // this listener, which forwards to our relay as tailscaled would.
      const rpcRelay = relayPortOf(PORTS.slowrpc);
      const asTailscaledRpc = Deno.listen({ hostname: "127.0.0.1", port: 0 });
      (async () => {
        for await (const local of asTailscaledRpc) {
          const remote = await asTailscaled({ relay: rpcRelay, port: PORTS.slowrpc });
          void Promise.all([pump(local, remote), pump(remote, local)]).finally(() => {
            closeQuietly(local);
            closeQuietly(remote);
          });
        }
      })().catch(() => {});
      const rpcClient = new HealthClient(
        `127.0.0.1:${asTailscaledRpc.addr.port}`,
        grpc.credentials.createInsecure(),
      );
      const rpc = () =>
        new Promise<string>((resolve) =>
          rpcClient.Check(
            { service: "" },
            { deadline: Date.now() + 10_000 },
            (error: grpc.ServiceError | null) => resolve(error ? grpc.status[error.code] : "OK"),
          )
        );
      assert.equal(await rpc(), "OK");
      // A keep-alive connection, admitted by the relay (WhoIs answered) before the hang.
      const kept = await asTailscaled();
      const reader = new ConnReader(kept);
      const ask = async () => {
        await kept.write(requestBytes({ target: "/y", keepAlive: true }));
        return await withTimeout(readResponse(reader), 10_000, kept, "keep-alive response");
      };
      assert.equal((await ask()).status, 200);

      Deno.kill(gwslow.pid, "SIGSTOP");
      stopped = true;
      await waitFor(
        async () => / T /.test(await Deno.readTextFile(`/proc/${gwslow.pid}/stat`)) ? true : undefined,
        { what: "gwslow's tailscaled to be stopped", timeoutMs: 5000, intervalMs: 10 },
      );
      // Let the cached identity (whoisCacheTtl 1 s) expire: the next Check needs a WhoIs.
      await new Promise((r) => setTimeout(r, 1300));
      let t0 = performance.now();
      const denied = await ask();
      const deniedMs = performance.now() - t0;
      assert.equal(denied.status, 403);
      // Envoy's ext_authz timeout (250 ms) fires before our WhoIs timeout (1 s): Envoy's own 403
      // (status_on_error, empty body), not our JSON deny.
      assert.equal(denied.body, "", "Envoy's status_on_error, not tailvoy's body");
      assert.ok(deniedMs >= 200 && deniedMs < 1000, `403 after ${deniedMs.toFixed(0)} ms`);
      console.log(
        `  hung tailscaled: 403 after ${deniedMs.toFixed(0)} ms (Envoy's 250 ms ext_authz timeout)`,
      );
      // The same for a gRPC caller: denied, never let through (envoyproxy/envoy#32476 reported
      // http_service failing open for gRPC on timeout).
      assert.equal(await rpc(), "PERMISSION_DENIED", "gRPC fails closed on an authz timeout");

      // A new connection: the relay's own WhoIs (1 s timeout) fails, and it closes the connection.
      t0 = performance.now();
      const fresh = await asTailscaled();
      const answer = await http(fresh, { target: "/z" });
      const freshMs = performance.now() - t0;
      assert.equal(answer.status, 0, "closed without a response");
      assert.ok(freshMs < 2500, `closed after ${freshMs.toFixed(0)} ms`);
      console.log(
        `  hung tailscaled: new connection closed after ${freshMs.toFixed(0)} ms (WhoIs timeout 1 s)`,
      );
      await slow.waitLog(/refused on .*slow.*caller unknown/, "the relay's refusal");

      Deno.kill(gwslow.pid, "SIGCONT");
      stopped = false;
      assert.equal((await ask()).status, 200, "the kept connection recovers");
      assert.equal(await rpc(), "OK", "the gRPC connection recovers");
      rpcClient.close();
      asTailscaledRpc.close();
      assert.equal(
        await waitFor(async () => (await viaTailnet()) === 200 ? 200 : undefined, {
          what: "requests through the tailnet to recover",
          timeoutMs: 15_000,
          intervalMs: 250,
        }),
        200,
      );
      closeQuietly(kept);
    } finally {
      if (stopped) Deno.kill(gwslow.pid, "SIGCONT");
      const code = await slow.stop();
      assert.equal(code, 0, slow.lines.slice(-6).join("\n"));
    }
  },
);
