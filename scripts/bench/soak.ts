/**
 * The soak part of `deno task bench`: does the proxy give back what bursts of connections took? The real
 * proxy (`main.ts`, serve ingress, one `tcp` listener, default WhoIs cache) runs beside the gateway of a
 * tailnet in a box; the L4 bench's backend (`bench/l4_sink.ts`) and load generator (`bench/l4_load.ts`)
 * run in their own processes and send the PROXY v2 header tailscaled would (source: alice).
 *
 * Each pass opens (a) many short connections (connect, PROXY header, 1 byte, 1 byte back, close; 32 in
 * flight), then (b) rounds of held connections (opened 64 at a time, held, closed all at once). Once the
 * proxy's descriptors are back, it prints the proxy's open fds (`/proc/<pid>/fd`) and RSS with their
 * deltas against the warm baseline (right after a small warm-up), right away and again after an idle
 * wait: V8 keeps the heap a burst grew until some seconds after the load stops, so RSS right after a
 * pass is its high-water mark (wherever the collector happened to be), and RSS once V8 has given that
 * back (or after 45 s) is what the proxy kept. Two checks are printed PASS/MISS with their figures: fds back to baseline after every
 * pass (a descriptor leak), and the last pass's RSS after the wait within 5% of the first's (a leak grows
 * it pass after pass; a high-water mark that is reused does not).
 *
 * Run with `deno task bench soak [--quick]` (quick about 1.5 minutes, full about 2).
 *
 * @module
 */

import { join } from "node:path";
import type { Tailnet } from "../harness/tailnet.ts";
import type { LoadCommand, LoadResult, ProxyHeaderSpec } from "./l4_protocol.ts";
import { FD_LIMIT, freePort, rssMiB } from "./l4_procs.ts";
import { openBenchSession, type Spawn, startBenchProxy } from "./session.ts";
import { sourceRunArgs } from "../harness/cache.ts";
import { ensurePeers, PROJECT_ROOT } from "../harness/peers.ts";
import { delay } from "../../lib/util/async.ts";

/** Options of {@link benchSoak}. */
export interface BenchSoakOptions {
  /** Smaller passes (about 1.5 minutes in total, most of it idle waits). */
  quick?: boolean;
}

/** Sizes of one run. */
interface Plan {
  passes: number;
  /** Short connections of a pass (at least; the load generator runs them for a duration). */
  shortConns: number;
  /** Rounds of held connections of a pass. */
  holdRounds: number;
  /** Connections held open in one round (each costs the proxy two descriptors). */
  holdCount: number;
  /** Longest idle wait after each pass for V8 to give back its heap before RSS is judged. */
  idleMs: number;
}

const FULL: Plan = { passes: 3, shortConns: 100_000, holdRounds: 20, holdCount: 2000, idleMs: 45_000 };
const QUICK: Plan = { passes: 3, shortConns: 20_000, holdRounds: 5, holdCount: 2000, idleMs: 45_000 };

/** The tailnet port of the soak listener (tailscaled would forward it to us; we connect straight). */
const SERVE_PORT = 15433;
/** Connections in flight during the short-connection bursts (as the L4 bench's rate rows). */
const SHORT_CONCURRENCY = 32;
/** Connections being opened at once in a hold round (as the L4 bench's memory row). */
const HOLD_CONCURRENCY = 64;
/** One request to the load generator runs at most this long (its answer timeout is 120 s). */
const MAX_RATE_RUN_MS = 10_000;
/** How long a pass's descriptors may take to close before the fds check fails. */
const SETTLE_MS = 10_000;
/** RSS is read this long after the fds are back, the same for every pass. */
const RSS_DELAY_MS = 1000;
/** RSS is steady when this many one-second samples in a row are within 1%. */
const STEADY_S = 3;
/** The flatness check: last pass's RSS (after the idle wait) within this fraction of the first pass's. */
const FLAT = 0.05;

type Ok<O> = Extract<LoadResult, { ok: true; op: O }>;

/** The proxy under test. */
interface ProxyUnderTest {
  pid: number;
  port: number;
  proxy: ProxyHeaderSpec;
}

/** Open descriptors of `pid` (entries of `/proc/<pid>/fd`). */
async function openFds(pid: number): Promise<number> {
  let n = 0;
  for await (const _ of Deno.readDir(`/proc/${pid}/fd`)) n++;
  return n;
}

/** Peak resident set size of `pid` so far in MiB (VmHWM of `/proc/<pid>/status`). */
async function peakRssMiB(pid: number): Promise<number> {
  const status = await Deno.readTextFile(`/proc/${pid}/status`);
  return Number(/^VmHWM:\s+(\d+)\s+kB/m.exec(status)?.[1]) / 1024;
}

/** The soft open-files limit `pid` runs with (what {@link FD_LIMIT} became under the hard limit). */
async function fdLimitOf(pid: number): Promise<string> {
  const limits = await Deno.readTextFile(`/proc/${pid}/limits`);
  return /^Max open files\s+(\S+)/m.exec(limits)?.[1] ?? "?";
}

const MB = (mib: number) => (mib * 1024 * 1024) / 1e6;
const fmtMB = (mib: number) => `${MB(mib).toFixed(1)} MB`;
const signed = (n: number, digits = 0) => `${n >= 0 ? "+" : ""}${n.toFixed(digits)}`;

async function startTailvoy(
  spawn: Spawn,
  options: { dir: string; tailnet: Tailnet; backendPort: number },
): Promise<ProxyUnderTest> {
  const gw = options.tailnet.node("gw");
  const { child, relayPorts } = await startBenchProxy(spawn, {
    dir: options.dir,
    socket: gw.socket,
    servePorts: [SERVE_PORT],
    configText: [
      "tailscale:",
      "  serviceMappings: {gw: [db]}",
      "listeners:",
      `  db: {port: ${SERVE_PORT}, protocol: tcp, backend: "127.0.0.1:${options.backendPort}"}`,
      "tailvoy:",
      "  ingress: serve",
      // The default WhoIs cache (1 s): its LocalAPI connections come and go during the passes too.
      "  timeouts: {drain: 0s}",
      // Not the default 9002: a `deno task dev` running beside must not make us fail.
      `  adminAddress: "127.0.0.1:${freePort()}"`,
      "",
    ].join("\n"),
  });
  const port = relayPorts.get(SERVE_PORT)!;
  return {
    pid: child.pid,
    port,
    proxy: { source: options.tailnet.node("alice").ipv4, destination: gw.ipv4, destinationPort: SERVE_PORT },
  };
}

/** What a pass measured once it was over. */
interface PassFigures {
  fds: number;
  rss: number;
  /** How long the descriptors took to return to the baseline (undefined: they did not). */
  settleMs?: number;
}

/** Runs the soak passes once and prints every figure; see the module doc. */
export async function benchSoak(options: BenchSoakOptions = {}): Promise<void> {
  const plan = options.quick ? QUICK : FULL;
  const started = performance.now();
  console.log(
    `\n# soak: memory and descriptors after bursts (${options.quick ? "quick" : "full"}: ${plan.passes} ` +
      `passes of ${plan.shortConns} short connections + ${plan.holdRounds} x ${plan.holdCount} held; ` +
      `${navigator.hardwareConcurrency} CPUs shared by load generator, backend and proxy; all on 127.0.0.1)`,
  );
  await ensurePeers();
  const session = await openBenchSession("soak", { fdLimit: FD_LIMIT });
  const { dir, spawn } = session;
  try {
    const helper = (file: string) => [
      Deno.execPath(),
      ...sourceRunArgs(join(PROJECT_ROOT, "scripts/bench", file), { permissions: ["--allow-net"] }),
    ];
    const sink = spawn("backend", helper("l4_sink.ts"));
    const load = spawn("load generator", helper("l4_load.ts"), true);
    const backendPort = (JSON.parse(await sink.nextLine(30_000)) as { port: number }).port;
    const target = await startTailvoy(spawn, { dir, tailnet: await session.tailnet, backendPort });
    const { pid } = target;
    const run = async <R extends LoadResult>(cmd: LoadCommand) => {
      const res = await load.request<LoadResult>(cmd, 120_000);
      if (!res.ok) throw new Error(`load generator: ${res.error}`);
      return res as R;
    };
    const load1 = Number((await Deno.readTextFile("/proc/loadavg")).split(" ")[0]);
    console.log(
      `setup ${((performance.now() - started) / 1000).toFixed(1)} s; proxy open-files limit ` +
        `${await fdLimitOf(pid)}${load1 > 1 ? `; warning: load average ${load1} before we start` : ""}`,
    );

    /** At least `count` short connections, in runs of at most MAX_RATE_RUN_MS. */
    const shortBurst = async (count: number) => {
      let done = 0;
      let errors = 0;
      let ms = 0;
      let runMs = 1000;
      while (done < count) {
        const r = await run<Ok<"rate">>({
          op: "rate",
          port: target.port,
          durationMs: runMs,
          concurrency: SHORT_CONCURRENCY,
          proxy: target.proxy,
        });
        done += r.done;
        errors += r.errors;
        ms += r.ms;
        // Size the next run from the rate so far, so the burst ends close to `count`.
        const perMs = done / ms;
        runMs = Math.max(200, Math.min(MAX_RATE_RUN_MS, (count - done) / Math.max(perMs, 0.1)));
      }
      return { done, errors, ms };
    };
    /** `rounds` rounds of `count` held connections; the proxy's peak fds and RSS while they are open. */
    const holdRounds = async (rounds: number, count: number) => {
      let open = 0;
      let errors = 0;
      let firstError: string | undefined;
      let peakFds = 0;
      let peakRss = 0;
      for (let i = 0; i < rounds; i++) {
        const r = await run<Ok<"hold">>({
          op: "hold",
          port: target.port,
          count,
          concurrency: HOLD_CONCURRENCY,
          proxy: target.proxy,
        });
        open += r.open;
        errors += r.errors;
        firstError ??= r.firstError;
        peakFds = Math.max(peakFds, await openFds(pid));
        peakRss = Math.max(peakRss, await rssMiB(pid));
        await run({ op: "release" });
      }
      return { open, errors, firstError, peakFds, peakRss };
    };
    /** Waits until the proxy's fds are back to `baseline` (or SETTLE_MS), then reads fds and RSS. */
    const settle = async (baseline: number): Promise<PassFigures> => {
      const t0 = performance.now();
      let settleMs: number | undefined;
      while (performance.now() - t0 < SETTLE_MS) {
        if (await openFds(pid) <= baseline) {
          settleMs = performance.now() - t0;
          break;
        }
        await delay(100);
      }
      await delay(RSS_DELAY_MS);
      return { fds: await openFds(pid), rss: await rssMiB(pid), settleMs };
    };

    /**
     * Idles until V8 has given back the heap a burst grew (RSS 10% below `from`, then steady for a few
     * seconds) or for `plan.idleMs` at most, sampling every second: when it does that varies (its memory
     * reducer waits for seconds without load), so a fixed wait would judge some passes too early.
     */
    const idle = async (from: number) => {
      const t0 = performance.now();
      let fellAt: number | undefined;
      const recent: number[] = [];
      let s = 0;
      while (s < plan.idleMs / 1000) {
        await delay(t0 + ++s * 1000 - performance.now());
        const rss = await rssMiB(pid);
        if (fellAt === undefined && rss <= from * 0.9) fellAt = s;
        recent.push(rss);
        const last = recent.slice(-STEADY_S);
        if (
          fellAt !== undefined && last.length === STEADY_S && Math.max(...last) / Math.min(...last) < 1.01
        ) {
          break;
        }
      }
      return { fds: await openFds(pid), rss: await rssMiB(pid), fellAt, ms: s * 1000 };
    };
    const fell = (at?: number) => at === undefined ? "RSS not given back" : `RSS given back after ${at} s`;

    // Warm-up: JIT, the WhoIs cache and the first buffers, so the baseline is the proxy at work, not cold.
    const cold = { fds: await openFds(pid), rss: await rssMiB(pid) };
    const warmShort = Math.min(2000, plan.shortConns);
    const warmHeld = Math.min(500, plan.holdCount);
    await shortBurst(warmShort);
    await holdRounds(1, warmHeld);
    await delay(RSS_DELAY_MS);
    // V8 may not shrink its heap after so small a warm-up (no full collection yet): the baseline is the
    // proxy right after it, as each pass's first figure is; the idle figures are also compared with cold.
    const base = { fds: await openFds(pid), rss: await rssMiB(pid) };
    console.log(
      `before any traffic: ${cold.fds} fds, RSS ${fmtMB(cold.rss)}; warm baseline (${warmShort} short + ` +
        `${warmHeld} held, ${RSS_DELAY_MS / 1000} s later): ${base.fds} fds, RSS ${fmtMB(base.rss)}`,
    );

    const delta = (f: { fds: number; rss: number }) =>
      `fds ${f.fds} (${signed(f.fds - base.fds)}), RSS ${fmtMB(f.rss)} ` +
      `(${signed(MB(f.rss - base.rss), 1)} MB, ${signed((f.rss / base.rss - 1) * 100, 1)}% vs warm baseline)`;
    const vsCold = (rss: number) => `${signed((rss / cold.rss - 1) * 100, 1)}% vs before any traffic`;
    const passes: { after: PassFigures; idle: { fds: number; rss: number; fellAt?: number } }[] = [];
    for (let p = 1; p <= plan.passes; p++) {
      const t0 = performance.now();
      const s = await shortBurst(plan.shortConns);
      const h = await holdRounds(plan.holdRounds, plan.holdCount);
      const after = await settle(base.fds);
      const failed = s.errors + h.errors
        ? `; failed: ${s.errors} short, ${h.errors} held${h.firstError ? ` (${h.firstError})` : ""}`
        : "";
      console.log(
        `pass ${p}: ${s.done} short conns (${(s.done / (s.ms / 1000)).toFixed(0)}/s), ${h.open} held in ` +
          `${plan.holdRounds} rounds of ${plan.holdCount} (peak ${h.peakFds} fds, RSS ${fmtMB(h.peakRss)})` +
          `${failed}; ${((performance.now() - t0) / 1000).toFixed(1)} s`,
      );
      const back = after.settleMs === undefined
        ? `fds not back within ${SETTLE_MS / 1000} s`
        : `fds back in ${(after.settleMs / 1000).toFixed(1)} s`;
      console.log(`  right after: ${delta(after)}; ${back}; VmHWM ${fmtMB(await peakRssMiB(pid))}`);
      const rested = await idle(after.rss);
      console.log(
        `  after ${rested.ms / 1000} s idle: ${delta(rested)}, ${vsCold(rested.rss)}; ${fell(rested.fellAt)}`,
      );
      passes.push({ after, idle: rested });
    }
    const final = { fds: await openFds(pid), rss: await rssMiB(pid) };
    console.log(`final, after the last idle wait: ${delta(final)}, ${vsCold(final.rss)}`);

    const fdsOk = passes.every((f) => f.after.fds <= base.fds && f.idle.fds <= base.fds);
    const first = passes[0].idle.rss;
    const drift = passes[passes.length - 1].idle.rss / first - 1;
    const list = (xs: number[]) => xs.map((x) => MB(x).toFixed(1)).join(", ");
    const goals = [
      `${fdsOk ? "PASS" : "MISS"}  fds return to baseline after each pass: baseline ${base.fds}, ` +
      `after passes ${passes.map((f) => f.after.fds).join(", ")}`,
      `${Math.abs(drift) <= FLAT ? "PASS" : "MISS"}  RSS of the last pass within ${FLAT * 100}% of the ` +
      `first pass's: ${list(passes.map((f) => f.idle.rss))} MB after the idle waits ` +
      `(${signed(drift * 100, 1)}%${
        passes.some((f) => f.idle.fellAt === undefined) ? "; V8 did not give back every pass's heap" : ""
      }); right after each pass (not judged: wherever V8's collector was) ` +
      list(passes.map((f) => f.after.rss)) + " MB",
    ];
    console.log(`\n## goals (soak)\n${goals.map((g) => `  ${g}`).join("\n")}`);
    console.log(`soak bench took ${((performance.now() - started) / 1000).toFixed(0)} s`);
  } finally {
    await session.close();
  }
}

if (import.meta.main) await benchSoak({ quick: Deno.args.includes("--quick") });
