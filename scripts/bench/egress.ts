/**
 * The egress part of `deno task bench`: our egress proxy (the real proxy process beside the gateway's
 * userspace tailscaled, one listener speaking SOCKS5 and HTTP CONNECT) against tailscaled's own
 * `--socks5-server` and `--outbound-http-proxy-listen` on the same gateway, in the same run. Every
 * connection goes to a backend behind alice (alice's tailscaled forwards her tailnet address's port P to
 * 127.0.0.1:P, where `bench/l4_sink.ts` listens). Prints throughput (1 and 8 streams), new connections/s,
 * connection-setup time and round trips on an open tunnel (p50/p99 and what we add), with the CPU of the
 * gateway's tailscaled and of our proxy per GiB and per connection, and the issue's goals (PASS/MISS).
 *
 * Paths: tailscaled's proxies dial the tailnet in-process; ours adds a hop, the LocalAPI dial
 * (`/localapi/v0/dial`, one unix-socket connection per flow, relayed by tailscaled) plus our relay.
 * Direct loopback to the backend is printed as a floor (no tailnet at all). Load generator, backend,
 * proxy and both tailscaleds are separate processes on 127.0.0.1. Run alone with
 * `deno run -A scripts/bench/egress.ts [--quick]`.
 *
 * @module
 */

import { join } from "node:path";
import { sourceRunArgs } from "../harness/cache.ts";
import { httpConnect } from "../harness/http_connect.ts";
import { ensurePeers, PROJECT_ROOT } from "../harness/peers.ts";
import { closeQuietly } from "../../lib/util/async.ts";
import { errorMessage } from "../../lib/util/error.ts";
import type { ConnectSpec, LoadCommand, LoadResult, TunnelSpec } from "./l4_protocol.ts";
import { cpuMs, freePort } from "./l4_procs.ts";
import { median, percentile, type RecordFigure, Report } from "./report.ts";
import { openBenchSession, startBenchProxy, waitUntil } from "./session.ts";

/** Options of {@link benchEgress}. */
export interface BenchEgressOptions {
  /** Smaller transfers and shorter runs (under a minute in total). */
  quick?: boolean;
  /** Called with every figure, besides printing it. */
  record?: RecordFigure;
}

/** Sizes and durations of one run. */
interface Plan {
  /** Bytes of one throughput run, split evenly over its streams. */
  runBytes: number;
  /** Repetitions of each measurement (the median is reported; latencies are pooled). */
  reps: number;
  /** Duration of one new-connections/s run. */
  rateMs: number;
  /** Connections in flight during the rate runs. */
  rateConcurrency: number;
  /** Sequential connections per target of one connection-setup run. */
  setupCount: number;
  /** Round trips per target of one open-tunnel run, and the pause between rounds. */
  roundTrips: number;
  roundTripIntervalMs: number;
}

const MiB = 1024 * 1024;
const FULL: Plan = {
  runBytes: 128 * MiB,
  reps: 3,
  rateMs: 2000,
  rateConcurrency: 16,
  setupCount: 500,
  roundTrips: 1000,
  roundTripIntervalMs: 2,
};
const QUICK: Plan = {
  runBytes: 32 * MiB,
  reps: 3,
  rateMs: 700,
  rateConcurrency: 16,
  setupCount: 150,
  roundTrips: 300,
  roundTripIntervalMs: 2,
};

/** A way to reach the backend behind alice. */
interface Target {
  key: string;
  label: string;
  connect: ConnectSpec;
  /** The processes whose CPU the path costs on the gateway side (none for direct loopback). */
  pids: number[];
}

/** One of our targets, with the baseline it is judged against. */
interface Pair {
  ours: Target;
  theirs: Target;
}

type Ok<O> = Extract<LoadResult, { ok: true; op: O }>;

/** What the sections share. */
interface Bench {
  plan: Plan;
  report: Report;
  run<R extends LoadResult>(cmd: LoadCommand): Promise<R>;
  direct: Target;
  /** SOCKS5, and HTTP CONNECT when tailscaled serves its HTTP proxy. */
  pairs: Pair[];
  targets: Target[];
}

/** "[CPU gw 812 + tailvoy 640 ms/GiB]": what the path costs on the gateway side, per unit of work. */
function cpuNote(t: Target, perUnit: number[] | undefined, unit: string): string {
  if (!perUnit) return "";
  const names = t.pids.length === 2 ? ["gw tailscaled", "tailvoy"] : ["gw tailscaled"];
  return `[CPU ${names.map((n, i) => `${n} ${perUnit[i].toFixed(0)}`).join(" + ")} ${unit}]`;
}

/** Measures CPU of `t`'s processes around `fn`, per process. */
async function withCpu<T>(t: Target, fn: () => Promise<T>): Promise<{ result: T; cpu: number[] }> {
  const before = await Promise.all(t.pids.map((p) => cpuMs(p)));
  const result = await fn();
  const after = await Promise.all(t.pids.map((p) => cpuMs(p)));
  return { result, cpu: after.map((a, i) => a - before[i]) };
}

function addInto(
  acc: Map<string, { cpu: number[]; units: number }>,
  key: string,
  cpu: number[],
  units: number,
) {
  const prev = acc.get(key) ?? { cpu: cpu.map(() => 0), units: 0 };
  acc.set(key, { cpu: prev.cpu.map((c, i) => c + cpu[i]), units: prev.units + units });
}

async function benchThroughput(b: Bench): Promise<void> {
  const { plan, report, direct, pairs, targets } = b;
  console.log(
    `\n## throughput (client -> backend behind alice, ${plan.runBytes / MiB} MiB per run split over ` +
      `its streams, 256 KiB writes; MB/s of payload; CPU = user + system of the gateway-side processes ` +
      `per GiB relayed)`,
  );
  const mbps = new Map<string, number[]>();
  const cpu = new Map<string, { cpu: number[]; units: number }>();
  // Round-robin over targets, so drift (other load on the box) hits all alike.
  for (let rep = 0; rep < plan.reps; rep++) {
    for (const streams of [1, 8]) {
      for (const t of targets) {
        const key = `${t.key}/${streams}`;
        const { result: r, cpu: used } = await withCpu(t, () =>
          b.run<Ok<"throughput">>({
            op: "throughput",
            ...t.connect,
            streams,
            bytes: Math.floor(plan.runBytes / streams),
          }));
        mbps.set(key, [...mbps.get(key) ?? [], r.bytes / (r.ms / 1000) / 1e6]);
        addInto(cpu, key, used, r.bytes / (1024 * MiB));
      }
    }
  }
  for (const streams of [1, 8]) {
    const s = streams === 1 ? "1 stream" : `${streams} streams`;
    const name = (t: Target) => `throughput ${s}: ${t.label}`;
    const perGiB = (t: Target) => {
      const c = cpu.get(`${t.key}/${streams}`);
      return c && t.pids.length ? c.cpu.map((ms) => ms / c.units) : undefined;
    };
    const value = (t: Target) => median(mbps.get(`${t.key}/${streams}`)!);
    report.row(name(direct), value(direct), "MB/s", [], "(floor: no tailnet)");
    for (const { ours, theirs } of pairs) {
      report.row(name(theirs), value(theirs), "MB/s", [], cpuNote(theirs, perGiB(theirs), "ms/GiB"));
      report.row(name(ours), value(ours), "MB/s", [name(theirs)], cpuNote(ours, perGiB(ours), "ms/GiB"));
    }
    for (const { ours, theirs } of pairs) {
      const ratio = value(ours) / value(theirs);
      report.goal(`throughput ${s} >= 1.0x ${theirs.label}`, `${ratio.toFixed(3)}x`, ratio >= 1);
    }
  }
}

async function benchConnections(b: Bench): Promise<void> {
  const { plan, report, direct, pairs, targets } = b;
  console.log(
    `\n## new connections (connect, proxy handshake, 1 byte, 1 byte back, we close first; ` +
      `${plan.rateConcurrency} in flight, ${plan.rateMs} ms per run; CPU per connection as above)`,
  );
  const rates = new Map<string, number[]>();
  const cpu = new Map<string, { cpu: number[]; units: number }>();
  for (let rep = 0; rep < plan.reps; rep++) {
    for (const t of targets) {
      const { result: r, cpu: used } = await withCpu(t, () =>
        b.run<Ok<"rate">>({
          op: "rate",
          ...t.connect,
          durationMs: plan.rateMs,
          concurrency: plan.rateConcurrency,
        }));
      if (r.errors) {
        console.log(`  (${t.label}: ${r.errors} failed connections in a rate run, first: ${r.firstError})`);
      }
      rates.set(t.key, [...rates.get(t.key) ?? [], r.done / (r.ms / 1000)]);
      addInto(cpu, t.key, used, r.done);
    }
  }
  const name = (t: Target) => `new conn/s: ${t.label}`;
  const perConn = (t: Target) => {
    const c = cpu.get(t.key);
    return c && c.units && t.pids.length ? c.cpu.map((ms) => ms * 1000 / c.units) : undefined;
  };
  const value = (t: Target) => median(rates.get(t.key)!);
  report.row(name(direct), value(direct), "conn/s", [], "(floor: no tailnet)");
  for (const { ours, theirs } of pairs) {
    report.row(name(theirs), value(theirs), "conn/s", [], cpuNote(theirs, perConn(theirs), "µs/conn"));
    report.row(name(ours), value(ours), "conn/s", [name(theirs)], cpuNote(ours, perConn(ours), "µs/conn"));
  }
  const { ours, theirs } = pairs[0];
  const ratio = value(ours) / value(theirs);
  report.goal(`new conn/s >= 1.0x ${theirs.label}`, `${ratio.toFixed(3)}x`, ratio >= 1);
}

/** Prints p50/p99 of each target and what ours add over their baseline; returns the added p99 per pair. */
function latencyRows(b: Bench, what: string, samples: Map<string, number[]>): number[] {
  const sorted = new Map([...samples].map(([k, v]) => [k, [...v].sort((x, y) => x - y)]));
  const pct = (t: Target, p: number) => percentile(sorted.get(t.key)!, p);
  for (const p of [0.5, 0.99]) b.report.row(`${what} p${p * 100}: ${b.direct.label}`, pct(b.direct, p), "ms");
  return b.pairs.map(({ ours, theirs }) => {
    for (const p of [0.5, 0.99]) b.report.row(`${what} p${p * 100}: ${theirs.label}`, pct(theirs, p), "ms");
    for (const p of [0.5, 0.99]) {
      b.report.row(`${what} p${p * 100}: ${ours.label}`, pct(ours, p), "ms", [
        `${what} p${p * 100}: ${theirs.label}`,
      ]);
    }
    const added = pct(ours, 0.99) - pct(theirs, 0.99);
    b.report.row(`added p99 (${what}): ${ours.label}`, added, "ms", [], `(over ${theirs.label})`);
    return added;
  });
}

async function benchLatency(b: Bench): Promise<void> {
  const { plan, report, targets, pairs } = b;
  console.log(
    `\n## latency (connection setup = connect + proxy handshake + 1-byte request until its response ` +
      `byte, ${plan.setupCount} per target per run, one at a time; round trip = 1 byte there and back on ` +
      `an open tunnel, ${plan.roundTrips} per target per run, ${plan.roundTripIntervalMs} ms apart; ` +
      `targets interleaved; ${plan.reps} runs pooled)`,
  );
  const setup = new Map<string, number[]>();
  const trips = new Map<string, number[]>();
  const specs = targets.map((t) => t.connect);
  for (let rep = 0; rep < plan.reps; rep++) {
    const l = await b.run<Ok<"latency">>({ op: "latency", targets: specs, count: plan.setupCount });
    const r = await b.run<Ok<"roundtrip">>({
      op: "roundtrip",
      targets: specs,
      count: plan.roundTrips,
      intervalMs: plan.roundTripIntervalMs,
    });
    targets.forEach((t, i) => {
      if (l.errors[i]) {
        console.log(
          `  (${t.label}: ${l.errors[i]} failed connections in a setup run, first: ${l.firstErrors[i]})`,
        );
      }
      setup.set(t.key, [...setup.get(t.key) ?? [], ...l.latenciesMs[i]]);
      trips.set(t.key, [...trips.get(t.key) ?? [], ...r.latenciesMs[i]]);
    });
  }
  const addedTrip = latencyRows(b, "round trip", trips);
  const addedSetup = latencyRows(b, "connection setup", setup);
  report.goal(
    `added p99 round trip <= 1 ms (vs ${pairs[0].theirs.label})`,
    `${addedTrip[0].toFixed(3)} ms`,
    addedTrip[0] <= 1,
  );
  report.goal(
    `added p99 connection setup <= 1 ms (vs ${pairs[0].theirs.label})`,
    `${addedSetup[0].toFixed(3)} ms`,
    addedSetup[0] <= 1,
  );
}

/** Whether `proxy` (tailscaled's SOCKS5 port) also answers HTTP CONNECT to `target`. */
async function answersConnect(
  proxy: number,
  target: { host: string; port: number },
): Promise<string | undefined> {
  try {
    closeQuietly(await httpConnect({ hostname: "127.0.0.1", port: proxy }, target));
    return undefined;
  } catch (err) {
    return errorMessage(err);
  }
}

/** Runs the egress benchmarks once and prints (and records) every figure; see the module doc. */
export async function benchEgress(options: BenchEgressOptions = {}): Promise<void> {
  const plan = options.quick ? QUICK : FULL;
  const started = performance.now();
  console.log(
    `\n# egress proxy vs tailscaled's own proxies (${options.quick ? "quick" : "full"}: median of ` +
      `${plan.reps} runs; ${navigator.hardwareConcurrency} CPUs shared by load generator, backend, ` +
      `proxy and two tailscaleds; all on 127.0.0.1)`,
  );
  await ensurePeers();
  const session = await openBenchSession("egress", { httpProxy: true });
  const { spawn } = session;
  try {
    const helper = (file: string) => [
      Deno.execPath(),
      ...sourceRunArgs(join(PROJECT_ROOT, "scripts/bench", file), { permissions: ["--allow-net"] }),
    ];
    const sink = spawn("backend", helper("l4_sink.ts"));
    const load = spawn("load generator", helper("l4_load.ts"), true);
    const sinkPort = (JSON.parse(await sink.nextLine(30_000)) as { port: number }).port;
    const tailnet = await session.tailnet;
    const gw = tailnet.node("gw");
    const alice = tailnet.node("alice");
    const egressPort = freePort();
    const { child } = await startBenchProxy(spawn, {
      dir: session.dir,
      socket: gw.socket,
      servePorts: [],
      configText: [
        "egress:",
        "  rules:",
        `    - {name: sink, hosts: [alice], ports: [${sinkPort}]}`,
        "  listeners:",
        `    proxy: {address: "127.0.0.1:${egressPort}", protocols: [http, socks5]}`,
        "tailvoy:",
        "  timeouts: {drain: 0s}",
        // Not the default 9002: a `deno task dev` running beside must not make us fail.
        `  adminAddress: "127.0.0.1:${freePort()}"`,
        "",
      ].join("\n"),
    });
    await waitUntil(child, "its egress listener", {
      timeoutMs: 30_000,
      check: async () => {
        closeQuietly(await Deno.connect({ hostname: "127.0.0.1", port: egressPort }));
        return true;
      },
    });

    const to = (kind: TunnelSpec["kind"]): TunnelSpec => ({ kind, host: alice.ipv4, port: sinkPort });
    const gwPids = [gw.pid];
    const direct: Target = {
      key: "direct",
      label: "direct loopback",
      connect: { port: sinkPort, callerCloses: true },
      pids: [],
    };
    const pairs: Pair[] = [{
      theirs: {
        key: "ts-socks5",
        label: "tailscaled socks5",
        connect: { port: gw.socksPort, tunnel: to("socks5"), callerCloses: true },
        pids: gwPids,
      },
      ours: {
        key: "tv-socks5",
        label: "tailvoy socks5",
        connect: { port: egressPort, tunnel: to("socks5"), callerCloses: true },
        pids: [...gwPids, child.pid],
      },
    }];
    const noHttp = await answersConnect(gw.socksPort, to("http"));
    if (noHttp) {
      console.log(`tailscaled's HTTP proxy does not answer on its SOCKS5 port (${noHttp}): no HTTP rows`);
    } else {
      pairs.push({
        theirs: {
          key: "ts-http",
          label: "tailscaled http",
          connect: { port: gw.socksPort, tunnel: to("http"), callerCloses: true },
          pids: gwPids,
        },
        ours: {
          key: "tv-http",
          label: "tailvoy http",
          connect: { port: egressPort, tunnel: to("http"), callerCloses: true },
          pids: [...gwPids, child.pid],
        },
      });
    }
    const targets = [direct, ...pairs.flatMap((p) => [p.theirs, p.ours])];
    const bench: Bench = {
      plan,
      report: new Report(options.record),
      run: async <R extends LoadResult>(cmd: LoadCommand) => {
        const res = await load.request<LoadResult>(cmd, 120_000);
        if (!res.ok) throw new Error(`load generator: ${res.error}`);
        return res as R;
      },
      direct,
      pairs,
      targets,
    };
    // Warm-up: JIT, our first status snapshot of the tailnet, WireGuard and netstack paths.
    const warm = await bench.run<Ok<"latency">>({
      op: "latency",
      targets: targets.map((t) => t.connect),
      count: 20,
    });
    targets.forEach((t, i) => {
      if (warm.errors[i]) {
        throw new Error(
          `${t.label}: ${warm.errors[i]} of 20 warm-up connections failed` +
            (t.pids.length === 2 ? `; tailvoy's stderr:\n${child.stderrTail()}` : ""),
        );
      }
    });
    console.log(
      `setup ${((performance.now() - started) / 1000).toFixed(1)} s. Backend on 127.0.0.1:${sinkPort}, ` +
        `reached as ${alice.ipv4}:${sinkPort} (alice's tailscaled forwards it). Baseline: gw's tailscaled ` +
        `--socks5-server and --outbound-http-proxy-listen on one port (${gw.socksPort}). Ours: tailvoy ` +
        `beside gw (userspace mode: each flow is a LocalAPI dial), one listener [http, socks5], log level ` +
        `warn. CPU notes: the gateway's tailscaled (both paths) plus tailvoy (ours).`,
    );
    const load1 = Number((await Deno.readTextFile("/proc/loadavg")).split(" ")[0]);
    if (load1 > 1) {
      console.log(
        `warning: load average ${load1} before we start: other processes compete for the ` +
          `${navigator.hardwareConcurrency} CPUs; absolute figures suffer, CPU per GiB and per connection less`,
      );
    }
    const section = async (fn: () => Promise<void>) => {
      const t0 = performance.now();
      await fn();
      console.log(`(${((performance.now() - t0) / 1000).toFixed(1)} s)`);
    };
    await section(() => benchThroughput(bench));
    // Before the rate runs: tens of thousands of connections leave the netstacks' TIME_WAIT tables full.
    await section(() => benchLatency(bench));
    await section(() => benchConnections(bench));

    console.log(`\n## goals (egress)\n${bench.report.goals.map((g) => `  ${g}`).join("\n")}`);
    console.log(`egress bench took ${((performance.now() - started) / 1000).toFixed(0)} s`);
  } finally {
    await session.close();
  }
}

if (import.meta.main) await benchEgress({ quick: Deno.args.includes("--quick") });
