/**
 * One benchmark run's resources: a temp dir, a tailnet in a box started in the background, every child
 * process, and a cleanup that also runs on Ctrl-C, so a bench never leaves tailscaled, headscale, Envoy
 * or the proxy behind.
 *
 * @module
 */

import { join } from "node:path";
import { LocalApiClient } from "../../lib/localapi/mod.ts";
import { Tailnet } from "../harness/tailnet.ts";
import { sourceRunArgs } from "../harness/cache.ts";
import { PROJECT_ROOT } from "../harness/peers.ts";
import { Child } from "./l4_procs.ts";
import { delay } from "../../lib/util/async.ts";

/** Starts a tracked child process. */
export type Spawn = (name: string, argv: string[], stdin?: boolean) => Child;

/** A bench run's resources. */
export interface BenchSession {
  dir: string;
  children: Child[];
  spawn: Spawn;
  /** The gateway + alice tailnet, started at once (it takes seconds); await it when needed. */
  tailnet: Promise<Tailnet>;
  /** Stops every child and the tailnet and removes the temp dir (idempotent). */
  close(): Promise<void>;
}

/**
 * Opens a session; children get `fdLimit` open files when given; `httpProxy`: the tailscaleds also serve
 * their outbound HTTP proxy (on their SOCKS5 port).
 */
export async function openBenchSession(
  name: string,
  options: { fdLimit?: number; httpProxy?: boolean } = {},
): Promise<BenchSession> {
  const dir = await Deno.makeTempDir({ prefix: `tailvoy-bench-${name}-` });
  const children: Child[] = [];
  const tailnet = Tailnet.start({
    nodes: [{ name: "gw", tags: ["tag:gw"] }, { name: "alice", user: "alice" }],
    httpProxy: options.httpProxy,
  });
  tailnet.catch(() => {});
  const spawn: Spawn = (child, argv, stdin = false) => {
    const c = new Child(child, argv, { stdin, ...(options.fdLimit ? { fdLimit: options.fdLimit } : {}) });
    children.push(c);
    return c;
  };
  let cleaning: Promise<void> | undefined;
  const cleanup = () =>
    cleaning ??= (async () => {
      // Long enough for the proxy to drain and stop its Envoy (a SIGKILL would orphan Envoy).
      await Promise.all(children.map((c) => c.stop(10_000)));
      await (await tailnet.catch(() => undefined))?.release();
      await Deno.remove(dir, { recursive: true }).catch(() => {});
    })();
  const interrupted = () => void cleanup().finally(() => Deno.exit(130));
  Deno.addSignalListener("SIGINT", interrupted);
  Deno.addSignalListener("SIGTERM", interrupted);
  return {
    dir,
    children,
    spawn,
    tailnet,
    close: () => {
      Deno.removeSignalListener("SIGINT", interrupted);
      Deno.removeSignalListener("SIGTERM", interrupted);
      return cleanup();
    },
  };
}

/**
 * The loopback port of the proxy's relay listener that tailscaled's serve entry for tailnet port
 * `servePort` points at, or 0 while there is none (benches connect to it directly, as tailscaled does).
 */
export async function relayPortFor(api: LocalApiClient, servePort: number): Promise<number> {
  const { config } = await api.getServeConfig();
  for (const fg of Object.values(config.Foreground ?? {})) {
    const m = /^127\.0\.0\.1:(\d+)$/.exec(fg.TCP?.[String(servePort)]?.TCPForward ?? "");
    if (m) return Number(m[1]);
  }
  return 0;
}

/** Polls `check` until it holds; gives up after `timeoutMs`, or at once when `child` exits. */
export async function waitUntil(
  child: Child,
  what: string,
  options: { timeoutMs: number; check: () => Promise<boolean> },
): Promise<void> {
  const deadline = performance.now() + options.timeoutMs;
  while (true) {
    if (await options.check().catch(() => false)) return;
    const why = child.exited ? "it exited" : performance.now() > deadline ? "timed out" : "";
    if (why) throw new Error(`${child.name}: ${why} waiting for ${what}; stderr:\n${child.stderrTail()}`);
    await delay(50);
  }
}

/**
 * Starts the real proxy (`main.ts`, as the compiled binary runs) with the config `configText` beside
 * `gw`'s tailscaled, at log level warn (per-flow and per-request info lines off: benches measure the data
 * path, not logging), and waits until tailscaled forwards each of `servePorts` to it. Resolves with the
 * child and the loopback relay port of each serve port.
 */
export async function startBenchProxy(
  spawn: Spawn,
  options: {
    dir: string;
    socket: string;
    configText: string;
    servePorts: readonly number[];
    timeoutMs?: number;
  },
): Promise<{ child: Child; relayPorts: Map<number, number> }> {
  const config = join(options.dir, "tailvoy.yaml");
  await Deno.writeTextFile(config, options.configText);
  const child = spawn("tailvoy", [
    Deno.execPath(),
    ...sourceRunArgs(join(PROJECT_ROOT, "main.ts"), { permissions: ["--allow-all"] }),
    "--config",
    config,
    "--socket",
    options.socket,
    "--log-level",
    "warn",
  ]);
  // Our loopback listeners are the targets of the serve entries we registered with tailscaled.
  using api = new LocalApiClient(options.socket, { timeoutMs: 5000 });
  const relayPorts = new Map<number, number>();
  await waitUntil(child, "its serve entries in tailscaled", {
    timeoutMs: options.timeoutMs ?? 30_000,
    check: async () => {
      for (const port of options.servePorts) relayPorts.set(port, await relayPortFor(api, port));
      return [...relayPorts.values()].every((p) => p > 0);
    },
  });
  return { child, relayPorts };
}
