/**
 * The L4 part of `deno task bench`: our TCP relay (the real proxy process, serve ingress with the PROXY
 * v2 header tailscaled sends, real WhoIs against a tailnet in a box, then cached) against baselines
 * measured in the same run — direct loopback, Envoy's `tcp_proxy` and `socat`. Prints throughput,
 * new connections/s, added latency and RSS, each goal of the issue next to its figure.
 *
 * Every program runs in its own process: the proxy under test, the backend (`bench/l4_sink.ts`) and the
 * load generator (`bench/l4_load.ts`), so none shares an event loop with another. Everything on
 * 127.0.0.1. Run alone with `deno run -A scripts/bench_l4.ts [--quick]`.
 *
 * @module
 */

import { join } from "node:path";
import { LocalApiClient } from "../lib/localapi/mod.ts";
import { Tailnet } from "../tests/harness/tailnet.ts";
import type { LoadCommand, LoadResult, ProxyHeaderSpec } from "./bench/l4_protocol.ts";
import { Child, cpuMs, freePort, onPath, rssMiB, threadCount } from "./bench/l4_procs.ts";
import { ensurePeers, PEER_BINS, PROJECT_ROOT } from "./peers.ts";

/** Receives each figure: name, value, unit, and the name of the figure it is compared with. */
export type RecordFigure = (name: string, value: number, unit: string, baseline?: string) => void;

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
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const mid = s.length >> 1;
  return s.length % 2 ? s[mid] : (s[mid - 1] + s[mid]) / 2;
}

function percentile(sorted: number[], p: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor(sorted.length * p))];
}

function formatValue(value: number, unit: string): string {
  const digits = unit === "conn/s" ? 0 : unit === "ms" ? 3 : value >= 100 ? 0 : value >= 10 ? 1 : 2;
  return `${value.toFixed(digits)} ${unit}`;
}

/** Prints figures with ratios against figures printed before, and hands them to `record`. */
class Report {
  readonly #values = new Map<string, number>();
  readonly #record?: RecordFigure;
  readonly goals: string[] = [];

  constructor(record?: RecordFigure) {
    this.#record = record;
  }

  get(name: string): number | undefined {
    return this.#values.get(name);
  }

  /** One row; `baselines` are names of earlier rows (the first is passed to `record`). */
  row(name: string, value: number, unit: string, baselines: string[] = [], note = ""): void {
    this.#values.set(name, value);
    const ratios = baselines.flatMap((b) => {
      const base = this.#values.get(b);
      return base ? [`${(value / base).toFixed(2)}x ${b}`] : [];
    });
    const tail = [ratios.join(", "), note].filter(Boolean).join("  ");
    console.log(`${name.padEnd(52)} ${formatValue(value, unit).padStart(14)}  ${tail}`);
    this.#record?.(name, value, unit, baselines[0]);
  }

  /** A goal of the issue, with PASS/MISS, printed again in the summary. */
  goal(text: string, measured: string, pass: boolean): void {
    const line = `${pass ? "PASS" : "MISS"}  ${text.padEnd(44)} measured ${measured}`;
    this.goals.push(line);
    console.log(`  goal: ${line}`);
  }
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

async function waitUntil(what: string, timeoutMs: number, check: () => Promise<boolean>): Promise<void> {
  const deadline = performance.now() + timeoutMs;
  while (true) {
    if (await check().catch(() => false)) return;
    if (performance.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

async function canConnect(port: number): Promise<boolean> {
  const conn = await Deno.connect({ hostname: "127.0.0.1", port });
  conn.close();
  return true;
}

async function startEnvoy(
  children: Child[],
  options: { dir: string; concurrency: number; backendPort: number },
): Promise<Target> {
  const port = freePort();
  const adminPort = freePort();
  const file = join(options.dir, `envoy-${options.concurrency}.json`);
  await Deno.writeTextFile(file, envoyBootstrap(port, adminPort, options.backendPort));
  const child = new Child(`envoy --concurrency ${options.concurrency}`, [
    ENVOY,
    "-c",
    file,
    "--disable-hot-restart",
    "--concurrency",
    String(options.concurrency),
    "--log-level",
    "error",
  ]);
  children.push(child);
  await waitUntil(`${child.name} to be ready (${child.stderrTail()})`, 20_000, async () => {
    const r = await fetch(`http://127.0.0.1:${adminPort}/ready`);
    const body = await r.text();
    return r.ok && body.includes("LIVE") && await canConnect(port);
  });
  return {
    key: `envoy${options.concurrency}`,
    label: `envoy tcp_proxy c${options.concurrency}`,
    port,
    pid: child.pid,
  };
}

async function startSocat(children: Child[], backendPort: number): Promise<Target> {
  const port = freePort();
  // -b 65536: the same 64 KiB per direction as our relay (socat's default is 8 KiB).
  const child = new Child("socat", [
    "socat",
    "-b",
    "65536",
    `TCP4-LISTEN:${port},bind=127.0.0.1,reuseaddr,fork,backlog=4096`,
    `TCP4:127.0.0.1:${backendPort}`,
  ]);
  children.push(child);
  await waitUntil("socat to listen", 10_000, () => canConnect(port));
  return { key: "socat", label: "socat (fork per conn)", port, pid: child.pid };
}

async function startTailvoy(
  children: Child[],
  options: { dir: string; tailnet: Tailnet; backendPort: number },
): Promise<Target> {
  const gw = options.tailnet.node("gw");
  const config = join(options.dir, "tailvoy.yaml");
  await Deno.writeTextFile(
    config,
    [
      "tailscale:",
      "  serviceMappings: {gw: [db]}",
      "listeners:",
      `  db: {port: ${SERVE_PORT}, protocol: tcp, backend: "127.0.0.1:${options.backendPort}"}`,
      "tailvoy:",
      "  ingress: serve",
      // Steady state: one WhoIs per minute per caller, not per second (the default TTL is 1 s).
      "  timeouts: {whoisCacheTtl: 60s, drain: 1s}",
      "",
    ].join("\n"),
  );
  const child = new Child("tailvoy", [
    Deno.execPath(),
    "run",
    "--allow-all",
    join(PROJECT_ROOT, "main.ts"),
    "--config",
    config,
    "--socket",
    gw.socket,
    "--log-level",
    "warn",
  ]);
  children.push(child);
  // Our loopback listener is the target of the serve entry we registered with tailscaled.
  using api = new LocalApiClient(gw.socket, { timeoutMs: 5000 });
  let port = 0;
  await waitUntil(`tailvoy's serve entry (stderr: ${child.stderrTail()})`, 30_000, async () => {
    const { config } = await api.getServeConfig();
    for (const fg of Object.values(config.Foreground ?? {})) {
      const forward = fg.TCP?.[String(SERVE_PORT)]?.TCPForward;
      const m = forward && /^127\.0\.0\.1:(\d+)$/.exec(forward);
      if (m) port = Number(m[1]);
    }
    return port > 0;
  });
  return {
    key: "tailvoy",
    label: "tailvoy relay (+PROXY v2, identity, policy)",
    port,
    pid: child.pid,
    proxy: { source: options.tailnet.node("alice").ipv4, destination: gw.ipv4, destinationPort: SERVE_PORT },
  };
}

/** Runs the L4 benchmarks once and prints (and records) every figure; see the module doc. */
export async function benchL4(options: BenchL4Options = {}): Promise<void> {
  const plan = options.quick ? QUICK : FULL;
  const report = new Report(options.record);
  const started = performance.now();
  console.log(
    `\n# L4 data plane (${options.quick ? "quick" : "full"}: ${plan.streamBytes / MiB} MiB per stream, ` +
      `median of ${plan.reps}; ${navigator.hardwareConcurrency} CPUs shared by load generator, backend and proxy)`,
  );
  await ensurePeers();
  const dir = await Deno.makeTempDir({ prefix: "tailvoy-bench-l4-" });
  const children: Child[] = [];
  // Started first (it takes seconds), awaited only when the proxy needs it; released in any case.
  const tailnetStarting = Tailnet.start({
    nodes: [{ name: "gw", tags: ["tag:gw"] }, { name: "alice", user: "alice" }],
  });
  tailnetStarting.catch(() => {});
  try {
    const helper = (
      file: string,
    ) => [Deno.execPath(), "run", "--allow-net", join(PROJECT_ROOT, "scripts/bench", file)];
    const sink = new Child("backend", helper("l4_sink.ts"));
    children.push(sink);
    const load = new Child("load generator", helper("l4_load.ts"), { stdin: true });
    children.push(load);
    const backendPort = (JSON.parse(await sink.nextLine(30_000)) as { port: number }).port;

    const direct: Target = { key: "direct", label: "direct loopback", port: backendPort };
    const envoy1 = await startEnvoy(children, { dir, concurrency: 1, backendPort });
    const envoy2 = await startEnvoy(children, { dir, concurrency: 2, backendPort });
    let socat: Target | undefined;
    if (await onPath("socat")) socat = await startSocat(children, backendPort);
    const tailnet = await tailnetStarting;
    const tailvoy = await startTailvoy(children, { dir, tailnet, backendPort });
    console.log(
      `setup ${((performance.now() - started) / 1000).toFixed(1)} s; proxy pid ${tailvoy.pid} ` +
        `(${await threadCount(tailvoy.pid!)} threads), envoy c1 ${await threadCount(envoy1.pid!)} threads; ` +
        `envoy, direct and socat get no PROXY header, tailvoy does (and resolves + authorizes it); ` +
        `WhoIs cache TTL 60 s`,
    );

    const run = async <R extends LoadResult>(cmd: LoadCommand, timeoutMs = 120_000): Promise<R> => {
      const res = await load.request<LoadResult>(cmd, timeoutMs);
      if (!res.ok) throw new Error(`load generator: ${res.error}`);
      return res as R;
    };
    type Ok<O> = Extract<LoadResult, { ok: true; op: O }>;

    // ---- RSS idle, before any traffic.
    const idleRss = await rssMiB(tailvoy.pid!);
    const idleRssEnvoy = await rssMiB(envoy1.pid!);

    // ---- the first connection: WhoIs miss, cold JIT.
    const cold = await run<Ok<"latency">>({
      op: "latency",
      port: tailvoy.port,
      count: 1,
      proxy: tailvoy.proxy,
    });
    if (cold.errors) {
      const proxy = children.find((c) => c.pid === tailvoy.pid);
      throw new Error(`tailvoy refused the bench connection; its stderr:\n${proxy?.stderrTail()}`);
    }

    // ---- throughput: round-robin over targets so drift hits all alike.
    console.log("\n## throughput (client -> backend, 256 KiB writes; Gbit/s of payload)");
    const tpTargets = [direct, tailvoy, envoy1, envoy2, ...(socat ? [socat] : [])];
    const gbps = new Map<string, number[]>();
    const cpuPerGiB = new Map<string, number[]>();
    for (let rep = 0; rep < plan.reps; rep++) {
      for (const streams of [1, 8]) {
        for (const t of tpTargets) {
          const cpu0 = t.pid && t !== socat ? await cpuMs(t.pid) : 0;
          const r = await run<Ok<"throughput">>({
            op: "throughput",
            port: t.port,
            streams,
            bytes: plan.streamBytes,
            proxy: t.proxy,
          });
          const key = `${t.key}/${streams}`;
          gbps.set(key, [...gbps.get(key) ?? [], (r.bytes * 8) / (r.ms / 1000) / 1e9]);
          if (t.pid && t !== socat) {
            const perGiB = (await cpuMs(t.pid) - cpu0) / (r.bytes / (1024 * MiB));
            cpuPerGiB.set(key, [...cpuPerGiB.get(key) ?? [], perGiB]);
          }
        }
      }
    }
    for (const streams of [1, 8]) {
      const s = streams === 1 ? "1 stream" : `${streams} streams`;
      const name = (t: Target) => `throughput ${s}: ${t.label}`;
      for (const t of tpTargets) {
        const cpu = cpuPerGiB.get(`${t.key}/${streams}`);
        report.row(
          name(t),
          median(gbps.get(`${t.key}/${streams}`)!),
          "Gbit/s",
          t === direct ? [] : t === envoy1 ? [name(direct)] : [name(envoy1), name(direct)],
          cpu ? `[proxy CPU ${median(cpu).toFixed(0)} ms/GiB]` : "",
        );
      }
      if (!socat) {
        console.log(
          `${`throughput ${s}: socat`.padEnd(52)} ${"skipped".padStart(14)}  ` +
            "socat is not installed (apt-get install -y socat)",
        );
      }
      const ratio = report.get(name(tailvoy))! / report.get(name(envoy1))!;
      report.goal(`throughput ${s} >= 1.0x envoy tcp_proxy c1`, `${ratio.toFixed(2)}x`, ratio >= 1);
    }

    // ---- new connections/s and latency, identity cached.
    console.log(
      `\n## new connections (connect, PROXY header if any, 1 byte, 1 byte back, close; ` +
        `${plan.rateConcurrency} in flight for the rate, 1 at a time for latency)`,
    );
    const connTargets = [direct, tailvoy, envoy1, envoy2];
    const rates = new Map<string, number[]>();
    const lat = new Map<string, number[]>();
    for (let rep = 0; rep < plan.reps; rep++) {
      for (const t of connTargets) {
        const r = await run<Ok<"rate">>({
          op: "rate",
          port: t.port,
          durationMs: plan.rateMs,
          concurrency: plan.rateConcurrency,
          proxy: t.proxy,
        });
        if (r.errors) console.log(`  (${t.label}: ${r.errors} failed connections in a rate run)`);
        rates.set(t.key, [...rates.get(t.key) ?? [], r.done / (r.ms / 1000)]);
        const l = await run<Ok<"latency">>({
          op: "latency",
          port: t.port,
          count: plan.latencyCount,
          proxy: t.proxy,
        });
        lat.set(t.key, [...lat.get(t.key) ?? [], ...l.latenciesMs]);
      }
    }
    const rateName = (t: Target) => `new conn/s: ${t.label}`;
    for (const t of connTargets) {
      report.row(
        rateName(t),
        median(rates.get(t.key)!),
        "conn/s",
        t === direct ? [] : t === envoy1 ? [rateName(direct)] : [rateName(envoy1), rateName(direct)],
      );
    }
    const tvRate = report.get(rateName(tailvoy))!;
    report.goal(">= 3k new conn/s", `${tvRate.toFixed(0)} conn/s`, tvRate >= 3000);
    const pct = (t: Target, p: number) => percentile([...lat.get(t.key)!].sort((a, b) => a - b), p);
    report.row("connect latency p50: direct loopback", pct(direct, 0.5), "ms");
    report.row("connect latency p99: direct loopback", pct(direct, 0.99), "ms");
    for (const t of connTargets.slice(1)) {
      report.row(
        `added latency p50: ${t.label}`,
        pct(t, 0.5) - pct(direct, 0.5),
        "ms",
        [],
        `(p50 ${pct(t, 0.5).toFixed(3)} ms)`,
      );
      report.row(
        `added latency p99: ${t.label}`,
        pct(t, 0.99) - pct(direct, 0.99),
        "ms",
        [],
        `(p99 ${pct(t, 0.99).toFixed(3)} ms)`,
      );
    }
    report.row("first connection (WhoIs miss, cold): tailvoy", cold.latenciesMs[0], "ms");
    const addedP99 = pct(tailvoy, 0.99) - pct(direct, 0.99);
    report.goal("added latency p99 <= 1 ms", `${addedP99.toFixed(3)} ms`, addedP99 <= 1);

    // ---- RSS idle and with many open connections.
    console.log(`\n## memory (VmRSS; ${plan.holdCount} connections held open through the proxy)`);
    const mb = (mib: number) => (mib * MiB) / 1e6;
    report.row("RSS idle: tailvoy", mb(idleRss), "MB");
    report.row("RSS idle: envoy tcp_proxy c1", mb(idleRssEnvoy), "MB");
    const holdRss = async (t: Target): Promise<{ rss: number; open: number }> => {
      const r = await run<Ok<"hold">>({
        op: "hold",
        port: t.port,
        count: plan.holdCount,
        concurrency: 64,
        proxy: t.proxy,
      });
      if (r.errors) console.log(`  (${t.label}: ${r.errors} connections failed: ${r.firstError})`);
      const rss = await rssMiB(t.pid!);
      await run({ op: "release" });
      return { rss, open: r.open };
    };
    const held = await holdRss(tailvoy);
    report.row(
      `RSS ${held.open} conns: tailvoy`,
      mb(held.rss),
      "MB",
      [],
      `(${((held.rss - idleRss) * 1024 / held.open).toFixed(1)} KiB/conn over idle)`,
    );
    await new Promise((r) => setTimeout(r, 1000));
    report.row("RSS after closing them: tailvoy", mb(await rssMiB(tailvoy.pid!)), "MB");
    const heldEnvoy = await holdRss(envoy1);
    report.row(
      `RSS ${heldEnvoy.open} conns: envoy tcp_proxy c1`,
      mb(heldEnvoy.rss),
      "MB",
      [],
      `(${((heldEnvoy.rss - idleRssEnvoy) * 1024 / heldEnvoy.open).toFixed(1)} KiB/conn over idle)`,
    );
    report.goal(
      `<= 300 MB RSS at ${plan.holdCount / 1000}k connections`,
      `${mb(held.rss).toFixed(0)} MB with ${held.open} open`,
      mb(held.rss) <= 300 && held.open === plan.holdCount,
    );

    console.log(`\n## goals (L4)\n${report.goals.map((g) => `  ${g}`).join("\n")}`);
    console.log(`L4 bench took ${((performance.now() - started) / 1000).toFixed(0)} s`);
  } finally {
    await Promise.all(children.map((c) => c.stop()));
    await (await tailnetStarting.catch(() => undefined))?.release();
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
}

if (import.meta.main) await benchL4({ quick: Deno.args.includes("--quick") });
