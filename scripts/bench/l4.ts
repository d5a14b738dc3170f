/**
 * The L4 part of `deno task bench`: our TCP relay (the real proxy process, serve ingress with the PROXY
 * v2 header tailscaled sends, real WhoIs against a tailnet in a box, then cached) against baselines
 * measured in the same run — direct loopback, Envoy's `tcp_proxy` (`--concurrency 1` and 2), `socat`,
 * and our `relay()` alone (`bench/l4_bare_relay.ts`: what the Deno runtime costs before any of our
 * per-connection logic). Prints throughput, new connections/s, added latency and RSS, with the proxy's
 * CPU per GiB and per connection (robust on a shared machine), each goal of the issue next to its figure;
 * and the proxy's CPU for a TLS ClientHello dribbled in 1-byte records against a normal one (issue #16).
 *
 * Every program runs in its own process: the proxy under test, the backend (`bench/l4_sink.ts`) and the
 * load generator (`bench/l4_load.ts`), so none shares an event loop with another. Everything on
 * 127.0.0.1. Run alone with `deno run -A scripts/bench/l4.ts [--quick]` (about 45 s; full about 90 s).
 *
 * @module
 */

import { openBenchSession, type Spawn, startBenchProxy, waitUntil } from "./session.ts";
import { join } from "node:path";
import { encodeProxyV2 } from "../../lib/proxy_protocol/mod.ts";
import { reframe } from "../harness/tls.ts";
import type { Tailnet } from "../harness/tailnet.ts";
import type { LoadCommand, LoadResult, ProxyHeaderSpec } from "./l4_protocol.ts";
import { cpuMs, FD_LIMIT, freePort, onPath, rssMiB, threadCount } from "./l4_procs.ts";
import { sourceRunArgs } from "../harness/cache.ts";
import { ensurePeers, PEER_BINS, PROJECT_ROOT } from "../harness/peers.ts";
import { delay } from "../../lib/util/async.ts";
import { median, percentile, type RecordFigure, Report, ROW_NAME } from "./report.ts";

/** Options of {@link benchL4}. */
export interface BenchL4Options {
  /** Smaller transfers and shorter runs (under a minute in total). */
  quick?: boolean;
  /** Called with every figure, besides printing it. */
  record?: RecordFigure;
}

/** Sizes and durations of one run. */
interface Plan {
  /** Bytes per stream of the throughput rows. */
  streamBytes: number;
  /** Repetitions of each measurement (the median is reported). */
  reps: number;
  /** Duration of one new-connections/s run. */
  rateMs: number;
  /** Connections in flight during the rate runs. */
  rateConcurrency: number;
  /** Sequential connections of one latency run. */
  latencyCount: number;
  /** Connections held open for the RSS row. */
  holdCount: number;
}

const MiB = 1024 * 1024;
const FULL: Plan = {
  streamBytes: 256 * MiB,
  reps: 3,
  rateMs: 2000,
  rateConcurrency: 32,
  latencyCount: 1000,
  holdCount: 10_000,
};
const QUICK: Plan = {
  streamBytes: 32 * MiB,
  reps: 3,
  rateMs: 500,
  rateConcurrency: 32,
  latencyCount: 300,
  holdCount: 10_000,
};

/** The tailnet port of the bench listener (tailscaled would forward it to us; we connect straight). */
const SERVE_PORT = 15432;
/** The tailnet port of the `tls` listener of the ClientHello rows. */
const TLS_SERVE_PORT = 15443;
const ENVOY = PEER_BINS.envoy;

/** Something the load generator can connect to. */
interface Target {
  /** Short key. */
  key: string;
  /** How it is printed. */
  label: string;
  port: number;
  /** Process to read RSS and CPU of (none for direct loopback). */
  pid?: number;
  /** The PROXY v2 header every connection starts with (our serve listener only). */
  proxy?: ProxyHeaderSpec;
  /** The loopback port of its `tls` listener (ours only). */
  tlsPort?: number;
}

function envoyBootstrap(port: number, adminPort: number, backendPort: number): string {
  // Plain tcp_proxy, no proxy_protocol filter; circuit breakers raised so 10k connections are allowed.
  return JSON.stringify({
    admin: { address: { socket_address: { address: "127.0.0.1", port_value: adminPort } } },
    static_resources: {
      listeners: [{
        name: "bench",
        address: { socket_address: { address: "127.0.0.1", port_value: port } },
        filter_chains: [{
          filters: [{
            name: "envoy.filters.network.tcp_proxy",
            typed_config: {
              "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
              stat_prefix: "bench",
              cluster: "sink",
            },
          }],
        }],
      }],
      clusters: [{
        name: "sink",
        type: "STATIC",
        connect_timeout: "5s",
        circuit_breakers: {
          thresholds: [{
            max_connections: 1_000_000,
            max_pending_requests: 1_000_000,
            max_requests: 1_000_000,
          }],
        },
        load_assignment: {
          cluster_name: "sink",
          endpoints: [{
            lb_endpoints: [{
              endpoint: { address: { socket_address: { address: "127.0.0.1", port_value: backendPort } } },
            }],
          }],
        },
      }],
    },
  });
}

async function canConnect(port: number): Promise<boolean> {
  const conn = await Deno.connect({ hostname: "127.0.0.1", port });
  conn.close();
  return true;
}

/** Starts a child process, which is stopped when the bench ends. */

async function startEnvoy(
  spawn: Spawn,
  options: { dir: string; concurrency: number; backendPort: number },
): Promise<Target> {
  const port = freePort();
  const adminPort = freePort();
  const file = join(options.dir, `envoy-${options.concurrency}.json`);
  await Deno.writeTextFile(file, envoyBootstrap(port, adminPort, options.backendPort));
  const child = spawn(`envoy --concurrency ${options.concurrency}`, [
    ENVOY,
    "-c",
    file,
    "--disable-hot-restart",
    "--concurrency",
    String(options.concurrency),
    "--log-level",
    "error",
  ]);
  await waitUntil(child, "/ready to say LIVE", {
    timeoutMs: 20_000,
    check: async () => {
      const r = await fetch(`http://127.0.0.1:${adminPort}/ready`);
      const body = await r.text();
      return r.ok && body.includes("LIVE") && await canConnect(port);
    },
  });
  return {
    key: `envoy${options.concurrency}`,
    label: `envoy tcp_proxy c${options.concurrency}`,
    port,
    pid: child.pid,
  };
}

async function startSocat(spawn: Spawn, backendPort: number): Promise<Target> {
  const port = freePort();
  // -b 65536: the same 64 KiB per direction as our relay (socat's default is 8 KiB).
  const child = spawn("socat", [
    "socat",
    "-b",
    "65536",
    `TCP4-LISTEN:${port},bind=127.0.0.1,reuseaddr,fork,backlog=4096`,
    `TCP4:127.0.0.1:${backendPort}`,
  ]);
  await waitUntil(child, "it to listen", { timeoutMs: 10_000, check: () => canConnect(port) });
  return { key: "socat", label: "socat", port, pid: child.pid };
}

async function startTailvoy(
  spawn: Spawn,
  options: { dir: string; tailnet: Tailnet; backendPort: number },
): Promise<Target> {
  const gw = options.tailnet.node("gw");
  const { child, relayPorts } = await startBenchProxy(spawn, {
    dir: options.dir,
    socket: gw.socket,
    servePorts: [SERVE_PORT, TLS_SERVE_PORT],
    configText: [
      "tailscale:",
      "  serviceMappings: {gw: [db, hello]}",
      "listeners:",
      `  db: {port: ${SERVE_PORT}, protocol: tcp, backend: "127.0.0.1:${options.backendPort}"}`,
      // For the ClientHello rows. Alice has no grant for it and nothing listens on the backend: every
      // connection ends refused once its hello is read (the sink would choke on TLS bytes).
      `  hello: {port: ${TLS_SERVE_PORT}, protocol: tls, routes: [{hostname: app.example.com, ` +
      `backend: "127.0.0.1:${freePort()}"}]}`,
      "tailvoy:",
      "  ingress: serve",
      // Steady state: one WhoIs per minute per caller, not per second (the default TTL is 1 s).
      "  timeouts: {whoisCacheTtl: 60s, drain: 0s}",
      // Not the default 9002: a `deno task dev` running beside must not make us fail.
      `  adminAddress: "127.0.0.1:${freePort()}"`,
      "",
    ].join("\n"),
  });
  const port = relayPorts.get(SERVE_PORT)!;
  const tlsPort = relayPorts.get(TLS_SERVE_PORT)!;
  return {
    key: "tailvoy",
    label: "tailvoy",
    port,
    pid: child.pid,
    proxy: { source: options.tailnet.node("alice").ipv4, destination: gw.ipv4, destinationPort: SERVE_PORT },
    tlsPort,
  };
}

type Ok<O> = Extract<LoadResult, { ok: true; op: O }>;

/** What the sections share. */
interface Bench {
  plan: Plan;
  report: Report;
  /** Runs one command on the load generator. */
  run<R extends LoadResult>(cmd: LoadCommand): Promise<R>;
  direct: Target;
  tailvoy: Target;
  envoy1: Target;
  envoy2: Target;
  socat?: Target;
  /** Our relay() alone: the Deno floor without header, identity, policy and bookkeeping. */
  bare: Target;
}

/** The open-files limit our children get (see {@link Child}): asked for the way they ask for it. */
async function childFdLimit(): Promise<number> {
  const script = `ulimit -n ${FD_LIMIT} 2>/dev/null || ulimit -n "$(ulimit -Hn)"; ulimit -n`;
  const out = await new Deno.Command("sh", { args: ["-c", script], stdout: "piped" }).output();
  const limit = new TextDecoder().decode(out.stdout).trim();
  return limit === "unlimited" ? FD_LIMIT : Number(limit);
}

async function benchThroughput(b: Bench): Promise<void> {
  const { plan, report, direct, tailvoy, envoy1, socat } = b;
  console.log(
    `\n## throughput (client -> backend, ${plan.streamBytes / MiB} MiB per stream in 256 KiB writes; ` +
      `Gbit/s of payload; proxy CPU = user + system time of all its threads per GiB relayed)`,
  );
  const targets = [direct, tailvoy, b.bare, b.envoy1, b.envoy2, ...(socat ? [socat] : [])];
  const gbps = new Map<string, number[]>();
  const cpu = new Map<string, { ms: number; bytes: number }>();
  // Round-robin over targets, so drift (thermal, page cache, other load) hits all alike.
  for (let rep = 0; rep < plan.reps; rep++) {
    for (const streams of [1, 8]) {
      for (const t of targets) {
        const key = `${t.key}/${streams}`;
        // socat forks a child per connection, whose CPU its parent's counters do not show.
        const pid = t === socat ? undefined : t.pid;
        const cpu0 = pid ? await cpuMs(pid) : 0;
        const r = await b.run<Ok<"throughput">>({
          op: "throughput",
          port: t.port,
          streams,
          bytes: plan.streamBytes,
          proxy: t.proxy,
        });
        gbps.set(key, [...gbps.get(key) ?? [], (r.bytes * 8) / (r.ms / 1000) / 1e9]);
        if (pid) {
          const prev = cpu.get(key) ?? { ms: 0, bytes: 0 };
          cpu.set(key, { ms: prev.ms + await cpuMs(pid) - cpu0, bytes: prev.bytes + r.bytes });
        }
      }
    }
  }
  for (const streams of [1, 8]) {
    const s = streams === 1 ? "1 stream" : `${streams} streams`;
    const name = (t: Target) => `throughput ${s}: ${t.label}`;
    const perGiB = (t: Target) => {
      const c = cpu.get(`${t.key}/${streams}`);
      return c && c.bytes ? c.ms / (c.bytes / (1024 * MiB)) : undefined;
    };
    for (const t of targets) {
      const c = perGiB(t);
      report.row(
        name(t),
        median(gbps.get(`${t.key}/${streams}`)!),
        "Gbit/s",
        t === direct ? [] : t === envoy1 ? [name(direct)] : [name(envoy1), name(direct)],
        c !== undefined ? `[proxy CPU ${c.toFixed(0)} ms/GiB]` : "",
      );
    }
    if (!socat) {
      console.log(
        `${`throughput ${s}: socat`.padEnd(ROW_NAME)} ${"skipped".padStart(14)}  ` +
          "socat is not installed (install it: apt-get install -y socat)",
      );
    }
    const ratio = report.get(name(tailvoy))! / report.get(name(envoy1))!;
    // Throughput on a shared box also depends on what else runs; CPU per GiB says how efficient we are.
    const cpuRatio = (perGiB(tailvoy) ?? NaN) / (perGiB(envoy1) ?? NaN);
    report.goal(
      `throughput ${s} >= 1.0x envoy tcp_proxy c1`,
      `${ratio.toFixed(2)}x (CPU per GiB ${cpuRatio.toFixed(2)}x envoy's)`,
      ratio >= 1,
    );
  }
}

/** "[proxy CPU 123 µs/conn]": what one connection costs the proxy, whatever else runs on the machine. */
function perConn(c?: { ms: number; conns: number }): string {
  return c && c.conns ? `[proxy CPU ${(c.ms * 1000 / c.conns).toFixed(0)} µs/conn]` : "";
}

async function benchConnections(b: Bench, cold: number): Promise<void> {
  const { plan, report, direct, tailvoy, envoy1 } = b;
  console.log(
    `\n## new connections (connect, PROXY header if any, 1 byte, 1 byte back, close; ` +
      `${plan.rateConcurrency} in flight for the rate; latency = connect to response byte, 1 at a time, ` +
      `targets interleaved)`,
  );
  const targets = [direct, tailvoy, b.bare, envoy1, b.envoy2];
  const rates = new Map<string, number[]>();
  const lat = new Map<string, number[]>();
  const cpu = new Map<string, { ms: number; conns: number }>();
  for (let rep = 0; rep < plan.reps; rep++) {
    for (const t of targets) {
      const cpu0 = t.pid ? await cpuMs(t.pid) : 0;
      const r = await b.run<Ok<"rate">>({
        op: "rate",
        port: t.port,
        durationMs: plan.rateMs,
        concurrency: plan.rateConcurrency,
        proxy: t.proxy,
      });
      if (r.errors) console.log(`  (${t.label}: ${r.errors} failed connections in a rate run)`);
      rates.set(t.key, [...rates.get(t.key) ?? [], r.done / (r.ms / 1000)]);
      if (t.pid) {
        const prev = cpu.get(t.key) ?? { ms: 0, conns: 0 };
        cpu.set(t.key, { ms: prev.ms + await cpuMs(t.pid) - cpu0, conns: prev.conns + r.done });
      }
    }
  }
  // Latency: one connection at a time, the targets interleaved connection by connection.
  for (let rep = 0; rep < plan.reps; rep++) {
    const l = await b.run<Ok<"latency">>({
      op: "latency",
      targets: targets.map((t) => ({ port: t.port, proxy: t.proxy })),
      count: plan.latencyCount,
    });
    targets.forEach((t, i) => {
      if (l.errors[i]) console.log(`  (${t.label}: ${l.errors[i]} failed connections in a latency run)`);
      lat.set(t.key, [...lat.get(t.key) ?? [], ...l.latenciesMs[i]]);
    });
  }
  const rateName = (t: Target) => `new conn/s: ${t.label}`;
  for (const t of targets) {
    report.row(
      rateName(t),
      median(rates.get(t.key)!),
      "conn/s",
      t === direct ? [] : t === envoy1 ? [rateName(direct)] : [rateName(envoy1), rateName(direct)],
      perConn(cpu.get(t.key)),
    );
  }
  const rate = report.get(rateName(tailvoy))!;
  // What one fully used core would give at our measured CPU cost, whatever else shares the box.
  const c = cpu.get(tailvoy.key);
  const perCore = c && c.conns
    ? ` (${(c.conns / c.ms * 1000).toFixed(0)}/s per core-second of proxy CPU)`
    : "";
  report.goal(">= 3k new conn/s", `${rate.toFixed(0)} conn/s${perCore}`, rate >= 3000);

  const sorted = new Map([...lat].map(([k, v]) => [k, [...v].sort((x, y) => x - y)]));
  const pct = (t: Target, p: number) => percentile(sorted.get(t.key)!, p);
  report.row("connect latency p50: direct loopback", pct(direct, 0.5), "ms");
  report.row("connect latency p99: direct loopback", pct(direct, 0.99), "ms");
  for (const t of targets.slice(1)) {
    for (const p of [0.5, 0.99]) {
      const tag = `p${p * 100}`;
      report.row(
        `added latency ${tag}: ${t.label}`,
        pct(t, p) - pct(direct, p),
        "ms",
        [],
        `(${tag} ${pct(t, p).toFixed(3)} ms)`,
      );
    }
  }
  report.row("first connection (WhoIs miss, cold JIT): tailvoy", cold, "ms");
  const added = pct(tailvoy, 0.99) - pct(direct, 0.99);
  report.goal("added latency p99 <= 1 ms", `${added.toFixed(3)} ms`, added <= 1);
}

async function benchMemory(
  b: Bench,
  idle: Map<Target, number>,
  fdLimit: number,
): Promise<void> {
  const { report, tailvoy } = b;
  const goalCount = b.plan.holdCount;
  // Each relayed connection costs the proxy two descriptors; keep some for listeners, LocalAPI, logs.
  const count = Math.min(goalCount, Math.floor((fdLimit - 100) / 2));
  console.log(
    `\n## memory (VmRSS; ${count} connections held open through the proxy, opened 64 at a time` +
      (count < goalCount
        ? `; capped by the open-files limit ${fdLimit}, which we may not raise: figures for ${goalCount} ` +
          "are extrapolated linearly from idle"
        : "") +
      ")",
  );
  const mb = (mib: number) => (mib * MiB) / 1e6;
  for (const [t, rss] of idle) report.row(`RSS idle: ${t.label}`, mb(rss), "MB");
  const hold = async (t: Target) => {
    const idleRss = idle.get(t)!;
    const r = await b.run<Ok<"hold">>({ op: "hold", port: t.port, count, concurrency: 64, proxy: t.proxy });
    if (r.errors) console.log(`  (${t.label}: ${r.errors} connections failed: ${r.firstError})`);
    const rss = await rssMiB(t.pid!);
    await b.run({ op: "release" });
    const perConn = (rss - idleRss) / r.open;
    report.row(
      `RSS ${r.open} conns: ${t.label}`,
      mb(rss),
      "MB",
      [],
      `(${(perConn * 1024).toFixed(1)} KiB/conn over idle; opened in ${(r.ms / 1000).toFixed(1)} s)`,
    );
    const at = idleRss + perConn * goalCount;
    if (r.open !== goalCount) report.row(`RSS ${goalCount} conns (extrapolated): ${t.label}`, mb(at), "MB");
    return { at, open: r.open };
  };
  const ours = await hold(tailvoy);
  await delay(1000);
  report.row(
    "RSS 1 s after closing them: tailvoy",
    mb(await rssMiB(tailvoy.pid!)),
    "MB",
    [],
    "(freed ArrayBuffers return only after a GC)",
  );
  await hold(b.bare);
  await hold(b.envoy1);
  const extrapolated = ours.open !== goalCount ? ` (extrapolated from ${ours.open})` : "";
  report.goal(
    `<= 300 MB RSS at ${goalCount / 1000}k connections`,
    `${mb(ours.at).toFixed(0)} MB${extrapolated}`,
    mb(ours.at) <= 300 && ours.open >= count,
  );
}

/** Connections per ClientHello row (CPU comes in 10 ms ticks: 0.01 and 0.05 ms per connection). */
const HELLO_CONNS = { normal: 1000, dribbled: 200 };

/**
 * `hello` (one handshake record) padded with a padding extension (RFC 7685) to a 2,704-byte message and
 * framed in 1-byte records: 16,224 bytes, the most the 16 KiB cap lets through in such records.
 */
function dribbledHello(hello: Uint8Array): Uint8Array {
  const body = 9; // after the record and handshake headers
  // The extensions block ends the hello; its length follows version, random, session id, suites and
  // compression methods.
  let ext = body + 2 + 32;
  ext += 1 + hello[ext];
  ext += 2 + (hello[ext] << 8 | hello[ext + 1]);
  ext += 1 + hello[ext];
  const pad = 2704 - (hello.length - 5) - 4;
  const padded = new Uint8Array(hello.length + 4 + pad);
  padded.set(hello);
  const view = new DataView(padded.buffer);
  view.setUint16(3, padded.length - 5);
  view.setUint32(5, 1 << 24 | (padded.length - body)); // client_hello, 24-bit length
  view.setUint16(ext, view.getUint16(ext) + 4 + pad);
  view.setUint16(hello.length, 21);
  view.setUint16(hello.length + 2, pad);
  return reframe(padded, [1]);
}

/**
 * One connection to our `tls` listener: PROXY header, then `hello` in one write, or dribbled one
 * 6-byte record per write a millisecond apart (so the proxy reads them one by one) until the proxy
 * closes. Resolves once the proxy has closed the connection.
 */
async function sendHello(t: Target, hello: Uint8Array, dribble: boolean): Promise<void> {
  const conn = await Deno.connect({ hostname: "127.0.0.1", port: t.tlsPort! });
  conn.setNoDelay(true);
  let closed = false;
  const closing = conn.read(new Uint8Array(64)).catch(() => null).finally(() => closed = true);
  const header = encodeProxyV2({
    command: "PROXY",
    transport: "tcp",
    source: { address: t.proxy!.source, port: 1024 + Math.floor(Math.random() * 64000) },
    destination: { address: t.proxy!.destination, port: TLS_SERVE_PORT },
  });
  try {
    const chunks = dribble ? [header] : [header, hello];
    for (let at = 0; dribble && at < hello.length; at += 6) chunks.push(hello.subarray(at, at + 6));
    for (const chunk of chunks) {
      if (closed) break;
      for (let at = 0; at < chunk.length;) at += await conn.write(chunk.subarray(at));
      if (dribble) await delay(1);
    }
    await closing;
  } catch {
    /* the proxy closed first */
  } finally {
    conn.close();
  }
}

async function benchHello(b: Bench): Promise<void> {
  const { report, tailvoy } = b;
  const normal = Deno.readFileSync(new URL("../../tests/fixtures/client_hello/go.bin", import.meta.url));
  const dribbled = dribbledHello(normal);
  console.log(
    `\n## TLS ClientHello, read before the caller is authorized (proxy CPU per connection over ` +
      `${HELLO_CONNS.normal} normal and ${HELLO_CONNS.dribbled} dribbled connections, 20 at a time; ` +
      `each refused after its hello: no grant)`,
  );
  const perConn = async (hello: Uint8Array, dribble: boolean, count: number) => {
    const one = () => sendHello(tailvoy, hello, dribble);
    const cpu0 = await cpuMs(tailvoy.pid!);
    for (let i = 0; i < count; i += 20) await Promise.all(Array.from({ length: 20 }, one));
    return (await cpuMs(tailvoy.pid!) - cpu0) / count;
  };
  await perConn(normal, false, 100); // warm-up: JIT, WhoIs cache
  const normalName = "hello CPU: normal (Go, 1,525 B, 1 record)";
  report.row(normalName, await perConn(normal, false, HELLO_CONNS.normal), "ms");
  const dribbledName = "hello CPU: 16 KiB in 1-byte records, dribbled";
  const cpu = await perConn(dribbled, true, HELLO_CONNS.dribbled);
  report.row(dribbledName, cpu, "ms", [normalName]);
  report.goal("dribbled hello <= 5 ms proxy CPU", `${cpu.toFixed(2)} ms`, cpu <= 5);
}

/** Runs the L4 benchmarks once and prints (and records) every figure; see the module doc. */
export async function benchL4(options: BenchL4Options = {}): Promise<void> {
  const plan = options.quick ? QUICK : FULL;
  const started = performance.now();
  console.log(
    `\n# L4 data plane (${options.quick ? "quick" : "full"}: median of ${plan.reps} runs; ` +
      `${navigator.hardwareConcurrency} CPUs shared by load generator, backend and proxy; all on 127.0.0.1)`,
  );
  await ensurePeers();
  const fdLimit = await childFdLimit();
  const session = await openBenchSession("l4", { fdLimit });
  const { dir, children, spawn } = session;
  const tailnetStarting = session.tailnet;
  try {
    const helper = (
      file: string,
    ) => [
      Deno.execPath(),
      ...sourceRunArgs(join(PROJECT_ROOT, "scripts/bench", file), { permissions: ["--allow-net"] }),
    ];
    const sink = spawn("backend", helper("l4_sink.ts"));
    const load = spawn("load generator", helper("l4_load.ts"), true);
    const backendPort = (JSON.parse(await sink.nextLine(30_000)) as { port: number }).port;

    const direct: Target = { key: "direct", label: "direct loopback", port: backendPort };
    const envoy1 = await startEnvoy(spawn, { dir, concurrency: 1, backendPort });
    const envoy2 = await startEnvoy(spawn, { dir, concurrency: 2, backendPort });
    const socat = await onPath("socat") ? await startSocat(spawn, backendPort) : undefined;
    const bareChild = spawn("bare relay", [...helper("l4_bare_relay.ts"), String(backendPort)]);
    const bare: Target = {
      key: "bare",
      label: "bare relay()",
      port: (JSON.parse(await bareChild.nextLine(30_000)) as { port: number }).port,
      pid: bareChild.pid,
    };
    const tailvoy = await startTailvoy(spawn, { dir, tailnet: await tailnetStarting, backendPort });
    console.log(
      `setup ${((performance.now() - started) / 1000).toFixed(1)} s. Our proxy: its own process ` +
        `(${await threadCount(tailvoy.pid!)} threads, one JS thread), serve ingress, WhoIs cache TTL 60 s ` +
        `(default 1 s). Envoy: tcp_proxy, --concurrency 1 (one worker, the same core budget as our JS ` +
        `thread; ${await threadCount(envoy1.pid!)} threads) and 2. Clients of envoy, socat and direct send ` +
        `no PROXY header; ours send one, which tailvoy parses, resolves (WhoIs, cached) and authorizes. ` +
        `"bare relay()" is lib/l4/relay.ts alone in a Deno process (accept, dial, relay; nothing else).`,
    );
    const load1 = Number((await Deno.readTextFile("/proc/loadavg")).split(" ")[0]);
    if (load1 > 1) {
      console.log(
        `warning: load average ${load1} before we start: other processes compete for the ` +
          `${navigator.hardwareConcurrency} CPUs; absolute figures suffer, CPU per GiB and per connection less`,
      );
    }
    const bench: Bench = {
      plan,
      report: new Report(options.record),
      run: async <R extends LoadResult>(cmd: LoadCommand) => {
        const res = await load.request<LoadResult>(cmd, 120_000);
        if (!res.ok) throw new Error(`load generator: ${res.error}`);
        return res as R;
      },
      direct,
      tailvoy,
      envoy1,
      envoy2,
      socat,
      bare,
    };

    // Before any traffic.
    const idle = new Map<Target, number>();
    for (const t of [tailvoy, bare, envoy1]) idle.set(t, await rssMiB(t.pid!));
    // The first connection: a real WhoIs (then cached), cold JIT.
    const cold = await bench.run<Ok<"latency">>({
      op: "latency",
      targets: [{ port: tailvoy.port, proxy: tailvoy.proxy }],
      count: 1,
    });
    if (cold.errors[0]) {
      const proxy = children.find((c) => c.pid === tailvoy.pid);
      throw new Error(`tailvoy refused the bench connection; its stderr:\n${proxy?.stderrTail()}`);
    }
    const section = async (fn: () => Promise<void>) => {
      const t0 = performance.now();
      await fn();
      console.log(`(${((performance.now() - t0) / 1000).toFixed(1)} s)`);
    };
    await section(() => benchThroughput(bench));
    await section(() => benchConnections(bench, cold.latenciesMs[0][0]));
    await section(() => benchMemory(bench, idle, fdLimit));
    await section(() => benchHello(bench));

    console.log(`\n## goals (L4)\n${bench.report.goals.map((g) => `  ${g}`).join("\n")}`);
    console.log(`L4 bench took ${((performance.now() - started) / 1000).toFixed(0)} s`);
  } finally {
    await session.close();
  }
}

if (import.meta.main) await benchL4({ quick: Deno.args.includes("--quick") });
