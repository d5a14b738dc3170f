/**
 * The L7 bench: requests/s and latency of HTTP through the whole tailvoy L7 path, against baselines
 * measured in the same run, plus our ext_authz server's checks/s and CPU per check, and the proxy's RSS.
 *
 * Targets, all on 127.0.0.1, all with the same backend (`bench/l7_backend.ts`, its own process); every
 * Envoy runs the bootstrap our renderer makes for the same config, and its clients send the PROXY v2
 * header our relay would (source: alice's tailnet IP; destination port 0, the node itself; TLV
 * `SECRET_TLV_TYPE` = the secret the bootstrap's RBAC filter requires):
 * - **direct**: the backend itself;
 * - **Envoy, no ext_authz**: that bootstrap minus the ext_authz HTTP filter;
 * - **Envoy + zero-work ext_authz**: the unmodified bootstrap pointed at a `Deno.serve({ path })` that
 *   answers 200 to every check with no work, alone in its process (`bench/l7_authz.ts --zero`): the
 *   floor of HTTP ext_authz on a unix socket, which the full path is compared with;
 * - **Envoy + ext_authz**: the same, pointed at our `serveHttpAuthz` alone in its process
 *   (`bench/l7_authz.ts`: real WhoIs over the gateway's tailscaled socket, cached 1 s as in the proxy);
 * - **full path**: the real proxy process (`main.ts`, serve ingress) beside the gateway of a tailnet in a
 *   box: client → our relay's loopback listener with the PROXY v2 header tailscaled sends (source:
 *   alice's tailnet IP) → relay (WhoIs, cached) → its supervised Envoy → its ext_authz → backend.
 *
 * Load: `wrk` for the requests/s rows (installed with `apt-get install -y wrk` when missing and we are
 * root; a Lua script puts the PROXY header in front of each connection's first request), otherwise our
 * TypeScript generator (`bench/l7_load.ts`), which also drives the fixed-rate latency rows and the
 * ext_authz-alone rows: checks to our server's unix socket over keep-alive HTTP/1.1 connections, one
 * check in flight on each, each check the request Envoy sent the zero-work server in this run; the
 * server's CPU per check is read from `/proc`.
 *
 * Each goal in `GOALS` is printed PASS or MISS with its figure, and again at the end.
 *
 * Run with `deno task bench l7 [--quick]` (quick about a minute, full about 3), or alone with
 * `deno run -A scripts/bench/l7.ts [--quick]` once that has cached the children's modules (they run
 * `--cached-only`).
 *
 * @module
 */

import { openBenchSession, type Spawn, startBenchProxy, waitUntil } from "./session.ts";
import { join } from "node:path";
import { parseConfig } from "../../lib/config/mod.ts";
import { type EnvoyBootstrap, type JsonObject, renderBootstrap } from "../../lib/envoy/mod.ts";
import { encodeProxyV2 } from "../../lib/proxy_protocol/mod.ts";
import { generateSecret, SECRET_TLV_TYPE } from "../../lib/wire.ts";
import type { Tailnet } from "../harness/tailnet.ts";
import { childPids } from "../harness/procs.ts";
import { type Child, cpuMs, freePort, onPath, rssMiB } from "./l4_procs.ts";
import type { CapturedCheck } from "./l7_authz.ts";
import type { HttpTarget, L7LoadCommand, L7LoadResult, Latency } from "./l7_protocol.ts";
import { sourceRunArgs } from "../harness/cache.ts";
import { ensurePeers, PEER_BINS, PROJECT_ROOT } from "../harness/peers.ts";
import { delay } from "../../lib/util/async.ts";
import { errorMessage } from "../../lib/util/error.ts";

/** Options of {@link benchL7}. */
export interface BenchL7Options {
  /** Shorter runs, one repetition (about a minute in total). */
  quick?: boolean;
}

/** Durations and sizes of one run. */
interface Plan {
  /** One requests/s run per target and repetition. */
  rpsMs: number;
  /** Repetitions of the requests/s runs (the median is reported). */
  reps: number;
  /** Keep-alive connections of the requests/s runs. */
  connections: number;
  /** One fixed-rate latency run per target and repetition. */
  latencyMs: number;
  /** Repetitions of the latency runs (median of each percentile). */
  latencyReps: number;
  /** Connections of the fixed-rate runs. */
  latencyConnections: number;
  /** Checks in flight, one run each (1 shows the per-check floor; the goal counts 64). */
  authzConcurrency: number[];
  authzMs: number;
  /** Warm-up (JIT, connection pools) per target, not reported. */
  warmupMs: number;
}

const FULL: Plan = {
  rpsMs: 5000,
  reps: 3,
  connections: 32,
  latencyMs: 6000,
  latencyReps: 2,
  latencyConnections: 16,
  authzConcurrency: [1, 64],
  authzMs: 5000,
  warmupMs: 1000,
};
const QUICK: Plan = {
  rpsMs: 2000,
  reps: 1,
  connections: 32,
  latencyMs: 3000,
  latencyReps: 1,
  latencyConnections: 16,
  authzConcurrency: [1, 64],
  authzMs: 2000,
  warmupMs: 500,
};

/** The goals' thresholds (each printed PASS or MISS). */
const GOALS = {
  /** Full path requests/s over Envoy without ext_authz. */
  vsPlain: 0.6,
  /** Full path requests/s over Envoy with the zero-work ext_authz. */
  vsZero: 0.9,
  /** Added p99 at half load over Envoy without ext_authz, ms. */
  addedP99Ms: 1,
  /** Checks/s of our ext_authz server alone, cached identity. */
  checksPerSec: 20_000,
  /** In flight for that figure. */
  checksInFlight: 64,
  /** CPU of our ext_authz server per check, µs. */
  cpuPerCheckUs: 25,
  /** RSS of the idle proxy process with L7 listeners, MiB. */
  idleRssMiB: 60,
};

/** The tailnet port of the bench listener (tailscaled would forward it to us; we connect straight). */
const SERVE_PORT = 18080;
/** Envoy's flags as our supervisor passes them (lib/envoy/supervisor.ts), for the baseline Envoys. */
const ENVOY_FLAGS = ["--concurrency", "2", "--drain-time-s", "1", "--drain-strategy", "immediate"];
const PATH = "/api/users";
const HOST = "app.example.com";
const EXT_AUTHZ = "envoy.filters.http.ext_authz";

/** Something the load generators can send HTTP requests to. */
interface Target {
  key: string;
  label: string;
  http: HttpTarget;
  /** Processes whose CPU time counts for this target (the backend's is shown apart). */
  pids: { name: string; pid: number }[];
}

type Ok<O extends string> = Extract<L7LoadResult, { ok: true; op: O }>;

/** CPU time of `pid` so far in ms; NaN once it has exited (the figure then shows as NaN, not a crash). */
function cpuOf(pid: number): Promise<number> {
  return cpuMs(pid).catch(() => NaN);
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const mid = s.length >> 1;
  return s.length % 2 ? s[mid] : (s[mid - 1] + s[mid]) / 2;
}

const ROW_NAME = 52;

/** Prints rows and goals; goals are printed again at the end. */
class Report {
  readonly goals: string[] = [];
  row(name: string, value: string, note = ""): void {
    console.log(`${name.padEnd(ROW_NAME)} ${value.padStart(16)}  ${note}`);
  }
  goal(text: string, measured: string, pass: boolean): void {
    const line = `${pass ? "PASS" : "MISS"}  ${text.padEnd(62)} measured ${measured}`;
    this.goals.push(line);
    console.log(`  goal: ${line}`);
  }
}

function base64(bytes: Uint8Array): string {
  return btoa(String.fromCharCode(...bytes));
}

/**
 * PROXY v2 header from alice's tailnet address: as our relay sends it to Envoy when `secret` is given
 * (destination port 0: the node itself, no Service; the secret TLV), else as tailscaled sends it to
 * the relay (destination: the serve port).
 */
function proxyHeader(source: string, options: { secret: string } | { servePort: number }): Uint8Array {
  const secret = "secret" in options ? options.secret : undefined;
  return encodeProxyV2({
    command: "PROXY",
    transport: "tcp",
    source: { address: source, port: 40000 },
    destination: { address: "127.0.0.1", port: "servePort" in options ? options.servePort : 0 },
    tlvs: secret ? [{ type: SECRET_TLV_TYPE, value: new TextEncoder().encode(secret) }] : [],
  });
}

/** The bootstrap our renderer makes for `configText`, with the web listener on `port`. */
function bootstrapFor(
  configText: string,
  options: { port: number; authzSocket: string; secret: string },
): EnvoyBootstrap {
  const config = parseConfig(configText, { source: "bench.yaml", env: {} });
  return renderBootstrap(config, {
    listenerPorts: new Map([["web", options.port]]),
    authzSocket: options.authzSocket,
    secret: options.secret,
  });
}

/** The same bootstrap without the ext_authz HTTP filter (everything else, the secret's RBAC too, kept). */
function withoutExtAuthz(bootstrap: EnvoyBootstrap): EnvoyBootstrap {
  const copy = structuredClone(bootstrap);
  for (const listener of copy.static_resources.listeners) {
    for (const chain of listener.filter_chains as JsonObject[]) {
      for (const filter of chain.filters as JsonObject[]) {
        const hcm = filter.typed_config as JsonObject;
        if (!Array.isArray(hcm.http_filters)) continue;
        hcm.http_filters = (hcm.http_filters as JsonObject[]).filter((f) => f.name !== EXT_AUTHZ);
      }
    }
  }
  return copy;
}

/** The check Envoy sent (as the zero-work server saw it) as HTTP/1.1 request bytes to send again. */
function checkRequestBytes(check: CapturedCheck): Uint8Array {
  const lines = [`${check.method} ${check.target} HTTP/1.1`, ...check.headers.map(([k, v]) => `${k}: ${v}`)];
  return new TextEncoder().encode(`${lines.join("\r\n")}\r\n\r\n`);
}

async function startEnvoy(
  spawn: Spawn,
  options: { dir: string; key: string; bootstrap: EnvoyBootstrap },
): Promise<Child> {
  const file = join(options.dir, `envoy-${options.key}.json`);
  const adminPath = join(options.dir, `envoy-${options.key}.admin`);
  await Deno.writeTextFile(file, JSON.stringify(options.bootstrap));
  const child = spawn(`envoy (${options.key})`, [
    PEER_BINS.envoy,
    "-c",
    file,
    "--disable-hot-restart",
    "--admin-address-path",
    adminPath,
    ...ENVOY_FLAGS,
    "--log-level",
    "warn",
  ]);
  await waitUntil(child, "/ready to say LIVE", {
    timeoutMs: 20_000,
    check: async () => {
      const admin = (await Deno.readTextFile(adminPath)).trim();
      const r = await fetch(`http://${admin}/ready`);
      return r.ok && (await r.text()).includes("LIVE");
    },
  });
  return child;
}

async function startTailvoy(
  spawn: Spawn,
  options: { dir: string; tailnet: Tailnet; configText: string },
): Promise<{ child: Child; relayPort: number; envoyPid: number; adminPort: number }> {
  const gw = options.tailnet.node("gw");
  const adminPort = freePort();
  const { child, relayPorts } = await startBenchProxy(spawn, {
    dir: options.dir,
    socket: gw.socket,
    servePorts: [SERVE_PORT],
    timeoutMs: 40_000,
    configText: options.configText +
      `tailvoy:\n  envoyBinary: ${PEER_BINS.envoy}\n  adminAddress: "127.0.0.1:${adminPort}"\n` +
      "  timeouts: {drain: 0s}\n",
  });
  const relayPort = relayPorts.get(SERVE_PORT)!;
  let envoyPid = 0;
  await waitUntil(child, "its Envoy", {
    timeoutMs: 10_000,
    check: async () => {
      for (const pid of await childPids(child.pid)) {
        if ((await Deno.readTextFile(`/proc/${pid}/comm`)).trim() === "envoy") envoyPid = pid;
      }
      return envoyPid > 0;
    },
  });
  return { child, relayPort, envoyPid, adminPort };
}

/**
 * Whether `wrk` is on PATH, installing it from Debian first when it is not and we are root (`apt-get
 * install -y wrk`, after `apt-get update` if the first try fails); says what happened when it had to try.
 */
async function ensureWrk(): Promise<boolean> {
  if (await onPath("wrk")) return true;
  if (Deno.uid() !== 0) {
    console.log("wrk is not installed and we are not root: not installing it (apt-get install -y wrk)");
    return false;
  }
  const apt = async (...args: string[]) => {
    try {
      const out = await new Deno.Command("apt-get", {
        args,
        env: { DEBIAN_FRONTEND: "noninteractive" },
        stdin: "null",
        stdout: "piped",
        stderr: "piped",
      }).output();
      const error = new TextDecoder().decode(out.stderr).trim().split("\n").slice(-3).join(" | ");
      return { ok: out.success, error: error || `exit ${out.code}` };
    } catch (err) {
      return { ok: false, error: errorMessage(err) };
    }
  };
  console.log("wrk is not installed: apt-get install -y wrk");
  let r = await apt("install", "-y", "-q", "wrk");
  if (!r.ok) {
    console.log(`  failed (${r.error}); apt-get update, then again`);
    await apt("update", "-q");
    r = await apt("install", "-y", "-q", "wrk");
  }
  if (r.ok && await onPath("wrk")) {
    console.log("  installed");
    return true;
  }
  console.log(`  could not install wrk: ${r.error || "not on PATH after apt-get install"}`);
  return false;
}

/** A Lua string literal of arbitrary bytes (every byte as a 3-digit decimal escape). */
function luaBytes(bytes: Uint8Array): string {
  return `"${[...bytes].map((b) => `\\${String(b).padStart(3, "0")}`).join("")}"`;
}
/**
 * The wrk script: the preamble (PROXY header) goes in front of the first `connections` requests of
 * the (single) thread, which wrk issues one per connection before any response can arrive (every
 * connection writes as soon as it is connected, in the thread's first event-loop pass; a request
 * without the header would be refused and counted as an error); `done` prints the figures as JSON.
 */
function wrkScript(target: HttpTarget, connections: number): string {
  const request = new TextEncoder().encode(`GET ${target.path} HTTP/1.1\r\nHost: ${target.host}\r\n\r\n`);
  const preamble = target.preamble
    ? Uint8Array.from(atob(target.preamble), (c) => c.charCodeAt(0))
    : undefined;
  return [
    `local req = ${luaBytes(request)}`,
    `local first = ${preamble ? luaBytes(preamble) : '""'} .. req`,
    `local n = 0`,
    // wrk parses the thread's first request() at start-up to check it (src/wrk.c
    // script_verify_request): that one must be plain HTTP (a PROXY header is not a method).
    `request = function()`,
    `  n = n + 1`,
    `  if n == 1 then return req end`,
    `  if n <= ${connections + 1} then return first end`,
    `  return req`,
    `end`,
    `done = function(summary, latency, requests)`,
    `  local e = summary.errors`,
    `  io.write(string.format('WRKJSON {"requests":%d,"us":%d,"non2xx":%d,"errors":%d,` +
    `"p50":%d,"p90":%d,"p99":%d,"max":%d}\\n',`,
    `    summary.requests, summary.duration, e.status, e.connect + e.read + e.write + e.timeout,`,
    `    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max))`,
    `end`,
    "",
  ].join("\n");
}

/** One wrk run (one thread: the figures compare targets, and the box has few CPUs). */
async function runWrk(
  dir: string,
  target: HttpTarget,
  options: { connections: number; durationMs: number },
): Promise<Ok<"closed">> {
  const script = join(dir, `wrk-${target.port}.lua`);
  await Deno.writeTextFile(script, wrkScript(target, options.connections));
  const out = await new Deno.Command("wrk", {
    args: [
      "-t1",
      `-c${options.connections}`,
      `-d${Math.max(1, Math.round(options.durationMs / 1000))}s`,
      "-s",
      script,
      `http://127.0.0.1:${target.port}${target.path}`,
    ],
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).output();
  const text = new TextDecoder().decode(out.stdout);
  const line = text.split("\n").find((l) => l.startsWith("WRKJSON "));
  if (!out.success || !line) {
    throw new Error(`wrk failed (exit ${out.code}): ${text}${new TextDecoder().decode(out.stderr)}`);
  }
  const r = JSON.parse(line.slice(8)) as Record<string, number>;
  const ms = (us: number) => us / 1000;
  return {
    ok: true,
    op: "closed",
    requests: r.requests,
    non2xx: r.non2xx,
    errors: r.errors,
    ms: ms(r.us),
    latency: { p50: ms(r.p50), p90: ms(r.p90), p99: ms(r.p99), max: ms(r.max) },
  };
}

const fmtRate = (n: number) => `${n.toFixed(0)} req/s`;
const fmtMs = (n: number) => `${n.toFixed(3)} ms`;

/** Runs the L7 benchmarks once and prints every figure; see the module doc. */
export async function benchL7(options: BenchL7Options = {}): Promise<void> {
  const plan = options.quick ? QUICK : FULL;
  const started = performance.now();
  console.log(
    `\n# L7 data plane (${
      options.quick ? "quick" : "full"
    }; ${navigator.hardwareConcurrency} CPUs shared by ` +
      `load generator, backend, Envoy and proxy; all on 127.0.0.1)`,
  );
  await ensurePeers();
  const haveWrk = await ensureWrk();
  const session = await openBenchSession("l7");
  const { dir, children, spawn } = session;
  const tailnetStarting = session.tailnet;
  try {
    const helper = (
      file: string,
    ) => [
      Deno.execPath(),
      ...sourceRunArgs(join(PROJECT_ROOT, "scripts/bench", file), { permissions: ["--allow-all"] }),
    ];
    const backendChild = spawn("backend", helper("l7_backend.ts"));
    const load = spawn("load generator", helper("l7_load.ts"), true);
    const zeroChild = spawn("zero-work ext_authz", [...helper("l7_authz.ts"), "--zero"]);
    const backendPort = (JSON.parse(await backendChild.nextLine(30_000)) as { port: number }).port;
    const zero = JSON.parse(await zeroChild.nextLine(30_000)) as { socket: string };
    const configText = [
      "tailscale:",
      "  serviceMappings: {web: [web]}",
      "listeners:",
      `  web: {port: ${SERVE_PORT}, protocol: http, backend: "127.0.0.1:${backendPort}"}`,
      "",
    ].join("\n");
    // The baseline Envoys' relay secret (the proxy makes its own).
    const secret = generateSecret();

    const tailnet = await tailnetStarting;
    const alice = tailnet.node("alice").ipv4;
    const authzChild = spawn("ext_authz", [...helper("l7_authz.ts"), tailnet.node("gw").socket]);
    const authz = JSON.parse(await authzChild.nextLine(30_000)) as { socket: string };

    const plainPort = freePort();
    const plain = await startEnvoy(spawn, {
      dir,
      key: "noauthz",
      bootstrap: withoutExtAuthz(
        bootstrapFor(configText, { port: plainPort, authzSocket: zero.socket, secret }),
      ),
    });
    const zeroEnvoyPort = freePort();
    const zeroEnvoy = await startEnvoy(spawn, {
      dir,
      key: "zero",
      bootstrap: bootstrapFor(configText, { port: zeroEnvoyPort, authzSocket: zero.socket, secret }),
    });
    const authzEnvoyPort = freePort();
    const authzEnvoy = await startEnvoy(spawn, {
      dir,
      key: "authz",
      bootstrap: bootstrapFor(configText, { port: authzEnvoyPort, authzSocket: authz.socket, secret }),
    });
    const tailvoy = await startTailvoy(spawn, { dir, tailnet, configText });
    // Idle: nothing has reached it yet but tailscaled's and our own polls.
    await delay(1000);
    const idleRss = await rssMiB(tailvoy.child.pid);
    const idleEnvoyRss = await rssMiB(tailvoy.envoyPid);

    const http = (port: number, preamble?: Uint8Array): HttpTarget => ({
      port,
      path: PATH,
      host: HOST,
      ...(preamble ? { preamble: base64(preamble) } : {}),
    });
    const toEnvoy = (port: number) => http(port, proxyHeader(alice, { secret }));
    const direct: Target = {
      key: "direct",
      label: "direct to the backend",
      http: http(backendPort),
      pids: [],
    };
    const envoyPlain: Target = {
      key: "plain",
      label: "Envoy, no ext_authz",
      http: toEnvoy(plainPort),
      pids: [{ name: "envoy", pid: plain.pid }],
    };
    const envoyZero: Target = {
      key: "zero",
      label: "Envoy + zero-work ext_authz",
      http: toEnvoy(zeroEnvoyPort),
      pids: [{ name: "envoy", pid: zeroEnvoy.pid }, { name: "authz", pid: zeroChild.pid }],
    };
    const envoyAuthz: Target = {
      key: "authz",
      label: "Envoy + ext_authz (authz alone)",
      http: toEnvoy(authzEnvoyPort),
      pids: [{ name: "envoy", pid: authzEnvoy.pid }, { name: "authz", pid: authzChild.pid }],
    };
    const full: Target = {
      key: "full",
      label: "full path (relay + Envoy + ext_authz)",
      http: http(tailvoy.relayPort, proxyHeader(alice, { servePort: SERVE_PORT })),
      pids: [{ name: "envoy", pid: tailvoy.envoyPid }, { name: "proxy", pid: tailvoy.child.pid }],
    };
    const targets = [direct, envoyPlain, envoyZero, envoyAuthz, full];

    const run = async <R extends L7LoadResult>(cmd: L7LoadCommand) => {
      const res = await load.request<L7LoadResult>(cmd, 120_000);
      if (!res.ok) throw new Error(`load generator: ${res.error}`);
      return res as R;
    };
    // Every target answers 200 before we measure (a 403 would make a fast, meaningless figure).
    for (const t of targets) {
      const r = await run<Ok<"closed">>({ op: "closed", target: t.http, connections: 1, durationMs: 200 });
      if (!r.requests || r.non2xx || r.errors) {
        const who = children.filter((c) => t.pids.some((p) => p.pid === c.pid));
        throw new Error(
          `${t.label}: ${r.requests} requests, ${r.non2xx} not 2xx, ${r.errors} errors (${r.firstError}); ` +
            `stderr:\n${who.map((c) => `${c.name}:\n${c.stderrTail()}`).join("\n")}`,
        );
      }
    }
    // The first check the zero-work server got: what Envoy sends, for the checks-alone rows.
    const check = JSON.parse(await zeroChild.nextLine(5000)) as CapturedCheck;
    for (const t of targets) {
      await run({ op: "closed", target: t.http, connections: plan.connections, durationMs: plan.warmupMs });
    }
    console.log(
      `setup ${((performance.now() - started) / 1000).toFixed(1)} s. GET ${PATH} (a ${
        (await (await fetch(`http://127.0.0.1:${backendPort}/`)).arrayBuffer()).byteLength
      }-byte JSON answer), keep-alive. Envoys: ${ENVOY_FLAGS.join(" ")} (our supervisor's flags); ` +
        `ext_authz: HTTP/1.1 on a unix socket. Proxy: serve ingress, --log-level warn (no per-request ` +
        `decision lines), WhoIs cache 1 s (default).`,
    );
    const load1 = Number((await Deno.readTextFile("/proc/loadavg")).split(" ")[0]);
    if (load1 > 1) {
      console.log(`warning: load average ${load1} before we start: figures will be lower and noisier`);
    }
    const report = new Report();

    // ---- requests/s
    const tool = haveWrk ? "wrk -t1" : "our TypeScript load generator";
    console.log(
      `\n## requests/s (closed loop: ${plan.connections} keep-alive connections, ${plan.rpsMs / 1000} s, ` +
        `median of ${plan.reps}, targets interleaved; load: ${tool}; CPU = user + system per request)`,
    );
    if (!haveWrk) {
      console.log(
        `${"wrk".padEnd(ROW_NAME)} ${"skipped".padStart(16)}  wrk could not be installed (see above); ` +
          "using our TypeScript load generator, which itself needs a CPU",
      );
    }
    const rps = new Map<string, number[]>();
    const closedLatency = new Map<string, Latency[]>();
    const cpu = new Map<string, { ms: Record<string, number>; requests: number }>();
    let failures = 0;
    for (let rep = 0; rep < plan.reps; rep++) {
      for (const t of targets) {
        const pids = [...t.pids, { name: "backend", pid: backendChild.pid }];
        const before = await Promise.all(pids.map((p) => cpuOf(p.pid)));
        const r = haveWrk
          ? await runWrk(dir, t.http, { connections: plan.connections, durationMs: plan.rpsMs })
          : await run<Ok<"closed">>({
            op: "closed",
            target: t.http,
            connections: plan.connections,
            durationMs: plan.rpsMs,
          });
        const after = await Promise.all(pids.map((p) => cpuOf(p.pid)));
        if (r.non2xx || r.errors) {
          failures++;
          console.log(`  (${t.label}: ${r.non2xx} responses not 2xx, ${r.errors} errors in a run)`);
        }
        rps.set(t.key, [...rps.get(t.key) ?? [], (r.requests - r.non2xx) / (r.ms / 1000)]);
        closedLatency.set(t.key, [...closedLatency.get(t.key) ?? [], r.latency]);
        const c = cpu.get(t.key) ?? { ms: {}, requests: 0 };
        pids.forEach((p, i) => c.ms[p.name] = (c.ms[p.name] ?? 0) + after[i] - before[i]);
        c.requests += r.requests;
        cpu.set(t.key, c);
      }
    }
    const rpsOf = (t: Target) => median(rps.get(t.key)!);
    const cpuPerRequest = (t: Target, name: string) => {
      const c = cpu.get(t.key)!;
      return c.ms[name] * 1000 / c.requests;
    };
    const baselines: [Target, string][] = [[direct, "direct"], [envoyPlain, "no ext_authz"], [
      envoyZero,
      "zero-work authz",
    ]];
    for (const t of targets) {
      const value = rpsOf(t);
      const ratios = baselines.filter(([b]) => targets.indexOf(b) < targets.indexOf(t))
        .map(([b, name]) => `${(value / rpsOf(b)).toFixed(2)}x ${name}`);
      const perReq = Object.keys(cpu.get(t.key)!.ms).map((name) =>
        `${name} ${cpuPerRequest(t, name).toFixed(0)}`
      );
      const lat = closedLatency.get(t.key)!;
      report.row(
        `rps: ${t.label}`,
        fmtRate(value),
        `${ratios.join(", ")}${ratios.length ? "  " : ""}[p50 ${
          median(lat.map((l) => l.p50)).toFixed(2)
        } ms, ` +
          `p99 ${median(lat.map((l) => l.p99)).toFixed(2)} ms; CPU µs/req: ${perReq.join(", ")}]`,
      );
    }
    const metrics = await (await fetch(`http://127.0.0.1:${tailvoy.adminPort}/metrics`)).text();
    const decided = Number(
      /tailvoy_decisions_total\{listener="web",layer="l7",result="allow"\} (\d+)/.exec(metrics)?.[1],
    );
    console.log(`  (the proxy counted ${decided} allowed ext_authz decisions: one per request)`);
    const errorsNote = failures ? `; ${failures} runs had errors` : "";
    const vsPlain = rpsOf(full) / rpsOf(envoyPlain);
    report.goal(
      `full path rps >= ${GOALS.vsPlain}x Envoy without ext_authz`,
      `${vsPlain.toFixed(2)}x (${fmtRate(rpsOf(full))} vs ${fmtRate(rpsOf(envoyPlain))})${errorsNote}`,
      vsPlain >= GOALS.vsPlain && failures === 0,
    );
    const vsZero = rpsOf(full) / rpsOf(envoyZero);
    report.goal(
      `full path rps >= ${GOALS.vsZero}x Envoy + zero-work ext_authz`,
      `${vsZero.toFixed(2)}x (${fmtRate(rpsOf(full))} vs ${fmtRate(rpsOf(envoyZero))})${errorsNote}`,
      vsZero >= GOALS.vsZero && failures === 0,
    );

    // ---- latency at half load
    const rate = Math.max(100, Math.round(rpsOf(full) / 2));
    console.log(
      `\n## latency at half load (open loop: ${rate} req/s = half the full path's maximum, for every target; ` +
        `${plan.latencyConnections} connections; ${
          plan.latencyMs / 1000
        } s, median of ${plan.latencyReps}; ` +
        `write to last byte; our TypeScript load generator)`,
    );
    const lat = new Map<string, Latency[]>();
    for (let rep = 0; rep < plan.latencyReps; rep++) {
      for (const t of targets) {
        const r = await run<Ok<"open">>({
          op: "open",
          target: t.http,
          connections: plan.latencyConnections,
          durationMs: plan.latencyMs,
          rate,
        });
        if (r.non2xx || r.errors) console.log(`  (${t.label}: ${r.non2xx} not 2xx, ${r.errors} errors)`);
        const achieved = r.requests / (r.ms / 1000);
        if (achieved < rate * 0.95) {
          console.log(`  (${t.label}: only ${achieved.toFixed(0)} of ${rate} req/s sent)`);
        }
        lat.set(t.key, [...lat.get(t.key) ?? [], r.latency]);
      }
    }
    const pct = (t: Target, p: keyof Latency) => median(lat.get(t.key)!.map((l) => l[p]));
    for (const t of targets) {
      const added = t === direct
        ? ""
        : `(+${(pct(t, "p99") - pct(direct, "p99")).toFixed(3)} ms over direct)`;
      report.row(`p50 at ${rate} req/s: ${t.label}`, fmtMs(pct(t, "p50")));
      report.row(`p99 at ${rate} req/s: ${t.label}`, fmtMs(pct(t, "p99")), added);
    }
    const addedP99 = pct(full, "p99") - pct(envoyPlain, "p99");
    report.row("added p99: full path - Envoy without ext_authz", fmtMs(addedP99));
    for (const t of [envoyZero, envoyAuthz]) {
      report.row(`added p99: ${t.label} - Envoy without`, fmtMs(pct(t, "p99") - pct(envoyPlain, "p99")));
    }
    report.goal(
      `<= ${GOALS.addedP99Ms} ms added p99 at half load (vs Envoy without ext_authz)`,
      fmtMs(addedP99),
      addedP99 <= GOALS.addedP99Ms,
    );

    // ---- ext_authz alone
    const request = checkRequestBytes(check);
    console.log(
      `\n## ext_authz checks/s (our serveHttpAuthz alone in its process, on its unix socket; keep-alive ` +
        `HTTP/1.1 connections, one check in flight on each; the check Envoy sent: ${check.method} ` +
        `${check.target}, ${request.byteLength} bytes, headers ${check.headers.map(([k]) => k).join(" ")}; ` +
        `from alice; identity cached by the resolver ` +
        `(TTL 1 s); CPU from /proc)`,
    );
    const authzRequest = base64(request);
    const authzDied = () => new Error(`the ext_authz server exited; stderr:\n${authzChild.stderrTail(30)}`);
    await run({
      op: "authz",
      socket: authz.socket,
      request: authzRequest,
      concurrency: GOALS.checksInFlight,
      durationMs: plan.warmupMs,
    });
    if (authzChild.exited) throw authzDied();
    const checks = new Map<number, { perSec: number; cpuUs: number }>();
    for (const concurrency of plan.authzConcurrency) {
      const before = await Promise.all([cpuOf(authzChild.pid), cpuOf(load.pid)]);
      const r = await run<Ok<"authz">>({
        op: "authz",
        socket: authz.socket,
        request: authzRequest,
        concurrency,
        durationMs: plan.authzMs,
      });
      const after = await Promise.all([cpuOf(authzChild.pid), cpuOf(load.pid)]);
      if (authzChild.exited) throw authzDied();
      if (r.errors || r.allowed !== r.calls) {
        console.log(
          `  (${r.errors} errors, ${r.calls - r.allowed} denied: ${r.firstError ?? "see the decision log"})`,
        );
      }
      const perSec = r.allowed / (r.ms / 1000);
      const [cpuUs, clientUs] = [0, 1].map((i) => (after[i] - before[i]) * 1000 / Math.max(1, r.calls));
      checks.set(concurrency, { perSec, cpuUs });
      report.row(
        `checks/s, ${concurrency} in flight`,
        `${perSec.toFixed(0)} /s`,
        `[p50 ${r.latency.p50.toFixed(3)} ms, p99 ${r.latency.p99.toFixed(3)} ms; server CPU ` +
          `${cpuUs.toFixed(1)} µs/check (client ${clientUs.toFixed(1)})]`,
      );
    }
    const at = checks.get(GOALS.checksInFlight)!;
    report.goal(
      `>= ${GOALS.checksPerSec / 1000}k checks/s (cached identity, ${GOALS.checksInFlight} in flight)`,
      `${at.perSec.toFixed(0)} /s`,
      at.perSec >= GOALS.checksPerSec,
    );
    report.goal(
      `<= ${GOALS.cpuPerCheckUs} µs proxy CPU per check (ext_authz server alone)`,
      `${at.cpuUs.toFixed(1)} µs at ${GOALS.checksInFlight} in flight (full path, proxy process with ` +
        `its relay: ${cpuPerRequest(full, "proxy").toFixed(0)} µs/req)`,
      at.cpuUs <= GOALS.cpuPerCheckUs,
    );

    // ---- memory
    console.log(`\n## memory (RSS; the proxy = the main.ts process: relay, ext_authz, admin)`);
    await delay(1000);
    const afterRss = await rssMiB(tailvoy.child.pid);
    report.row("RSS: proxy, idle after start", `${idleRss.toFixed(1)} MiB`, "(one L7 listener)");
    report.row("RSS: proxy, idle after the runs above", `${afterRss.toFixed(1)} MiB`);
    report.row("RSS: its Envoy, idle after start", `${idleEnvoyRss.toFixed(1)} MiB`, "(not counted)");
    report.goal(
      `<= ${GOALS.idleRssMiB} MB idle RSS of the proxy with L7 listeners`,
      `${idleRss.toFixed(1)} MiB after start (${afterRss.toFixed(1)} MiB after the runs)`,
      idleRss <= GOALS.idleRssMiB,
    );

    console.log(`\n## goals (L7)\n${report.goals.map((g) => `  ${g}`).join("\n")}`);
    console.log(`L7 bench took ${((performance.now() - started) / 1000).toFixed(0)} s`);
  } finally {
    await session.close();
  }
}

if (import.meta.main) await benchL7({ quick: Deno.args.includes("--quick") });
