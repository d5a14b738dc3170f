/**
 * `deno task dev`: the proxy in watch mode, on a fresh machine with no tailscaled and no Tailscale account.
 *
 * Without arguments it installs the test peers, brings up a tailnet in a box on loopback (headscale, a
 * gateway node `gw` tagged `tag:gw`, clients `alice` and `bob`, example grants), runs the proxy against
 * the gateway's LocalAPI with `examples/config.yaml`, and prints commands to try as each client with the
 * decision each should get. Ctrl-C, SIGTERM or SIGHUP tears everything down (proxy, Envoy, backends,
 * tailnet).
 *
 * With arguments (e.g. `deno task dev --config my.yaml`) it runs only the proxy, in watch mode, against
 * your own tailscaled.
 *
 * @module
 */

import { join } from "node:path";
import { cacheDependencies, sourceRunArgs } from "./harness/cache.ts";
import { ensurePeers, PEER_BINS, PROJECT_ROOT } from "./harness/peers.ts";
import { grpcHealthBackend } from "./harness/grpc_health.ts";
import { descendants, killAll } from "./harness/procs.ts";
import { CAP, defaultPolicy, Tailnet } from "./harness/tailnet.ts";

const EXAMPLE_CONFIG = join(PROJECT_ROOT, "examples", "config.yaml");

/** Files whose change restarts the proxy. */
const WATCHED = ["lib", "main.ts"].map((p) => join(PROJECT_ROOT, p));

/** How long the proxy may take to drain and stop its Envoy before it is killed. */
const STOP_GRACE_MS = 15_000;

/**
 * The proxy in watch mode: restarted when a file under `lib/` or `main.ts` changes. Our own watcher
 * rather than `deno run --watch`, so that stopping waits for the proxy itself to exit (and stop its
 * Envoy); `--watch` keeps its process alive after the program exits, and killing it orphans Envoy.
 */
class WatchedProxy {
  #child: Deno.ChildProcess;
  #stopping = false;
  readonly #watcher: Deno.FsWatcher;
  readonly done: Promise<number>;

  constructor(readonly args: string[], readonly env: Record<string, string> = {}) {
    this.#child = this.#spawn();
    this.#watcher = Deno.watchFs(WATCHED, { recursive: true });
    this.done = this.#watch();
  }

  #spawn(): Deno.ChildProcess {
    return new Deno.Command(Deno.execPath(), {
      args: [...sourceRunArgs("main.ts"), ...this.args],
      cwd: PROJECT_ROOT,
      env: this.env,
      stdin: "null",
      stdout: "inherit",
      stderr: "inherit",
    }).spawn();
  }

  // Restarts on a change to a .ts file (debounced); resolves with the proxy's exit code once stopped,
  // or when it exits by itself and nothing changes afterwards.
  async #watch(): Promise<number> {
    let timer: ReturnType<typeof setTimeout> | undefined;
    let change = Promise.withResolvers<"change">();
    (async () => {
      for await (const event of this.#watcher) {
        if (!event.paths.some((p) => p.endsWith(".ts"))) continue;
        clearTimeout(timer);
        timer = setTimeout(() => change.resolve("change"), 200);
      }
    })().catch(() => {});
    while (true) {
      change = Promise.withResolvers<"change">();
      const result = await Promise.race([this.#child.status, change.promise]);
      if (this.#stopping) return (await this.#child.status).code;
      if (result === "change") {
        console.error("dev: a source file changed; restarting the proxy");
        await stopChild(this.#child);
        if (this.#stopping) return (await this.#child.status).code;
        this.#child = this.#spawn();
        continue;
      }
      console.error(`dev: the proxy exited (code ${result.code}); waiting for a file change to restart it`);
      if (await change.promise === "change" && !this.#stopping) this.#child = this.#spawn();
    }
  }

  /** Stops the proxy (SIGTERM; SIGKILL to it and everything it started after a grace period). */
  async stop(): Promise<number> {
    this.#stopping = true;
    this.#watcher.close();
    const code = await stopChild(this.#child);
    return code;
  }
}

/** SIGTERM, then after {@link STOP_GRACE_MS} SIGKILL to the child and every process it started. */
async function stopChild(child: Deno.ChildProcess): Promise<number> {
  const tree = await descendants(child.pid);
  try {
    child.kill("SIGTERM");
  } catch { /* already gone */ }
  let timer: ReturnType<typeof setTimeout> | undefined;
  const late = new Promise<"late">((resolve) => timer = setTimeout(() => resolve("late"), STOP_GRACE_MS));
  const first = await Promise.race([child.status, late]);
  clearTimeout(timer);
  if (first === "late") {
    console.error(`dev: the proxy did not stop within ${STOP_GRACE_MS / 1000} s; killing it and its Envoy`);
    try {
      child.kill("SIGKILL");
    } catch { /* exited */ }
  }
  const status = await child.status;
  // A proxy that was killed (or crashed) cannot stop its Envoy: do it here.
  await killAll([...tree, ...await descendants(child.pid)], "SIGKILL");
  return status.code;
}

/** One command printed for a client, with the result the example grants give. */
export interface TryCommand {
  who: string;
  command: string;
  /** `200`/`403` for curl (the HTTP status it prints), `ALLOW`/`DENY` for `tailvoy check`. */
  expect: string;
}

/** The grants of the dev tailnet: alice (group eng) gets web /api/*, grpc and db; bob gets nothing. */
export function devPolicy(): Record<string, unknown> {
  const policy = defaultPolicy();
  policy.grants = [
    { src: ["*"], dst: ["*"], ip: ["*"] },
    {
      src: ["group:eng"],
      dst: ["tag:gw"],
      app: { [CAP]: [{ listeners: ["web"], routes: ["/api/*"] }, { listeners: ["grpc", "db"] }] },
    },
  ];
  return policy;
}

/** The commands printed for each client: curl through the client's SOCKS5 listener, and `check`. */
export function tryCommands(tailnet: Tailnet): TryCommand[] {
  const gw = tailnet.node("gw");
  const curl = (who: string, path: string) =>
    `curl -s -o /dev/null -w '%{http_code}\\n' --socks5-hostname 127.0.0.1:${
      tailnet.node(who).socksPort
    } http://${gw.ipv4}${path}`;
  // A gRPC health check by hand: an empty request in gRPC framing; the answer's grpc-status is printed.
  const grpc = (who: string) =>
    `printf '\\0\\0\\0\\0\\0' | curl -s --http2-prior-knowledge --socks5-hostname 127.0.0.1:${
      tailnet.node(who).socksPort
    } -H 'content-type: application/grpc' -H 'te: trailers' --data-binary @- -D - -o /dev/null http://${gw.ipv4}:50051/grpc.health.v1.Health/Check | tr -d '\\r' | sed -n 's/^grpc-status: //p'`;
  // Egress: this machine into the tailnet through the example's proxy (127.0.0.1:1055), by alias and by
  // an address its rules never allow (loopback).
  const egress = (url: string) => `curl -s -o /dev/null -w '%{http_code}\\n' -x http://127.0.0.1:1055 ${url}`;
  const check = (who: string, rest: string) =>
    `deno task start check --socket ${gw.socket} --config examples/config.yaml --as ${
      tailnet.node(who).ipv4
    } ${rest}`;
  return [
    { who: "alice", command: curl("alice", "/api/users"), expect: "200" },
    { who: "alice", command: curl("alice", "/admin"), expect: "403" },
    { who: "bob", command: curl("bob", "/api/users"), expect: "403" },
    { who: "alice", command: grpc("alice"), expect: "0" },
    { who: "bob", command: grpc("bob"), expect: "7" },
    { who: "alice", command: check("alice", "--listener db"), expect: "ALLOW" },
    { who: "bob", command: check("bob", "--listener db"), expect: "DENY" },
    { who: "egress", command: egress("http://web.corp.internal:8080/api/users"), expect: "200" },
    { who: "egress", command: egress("http://127.0.0.1:8080/api/users"), expect: "403" },
  ];
}

/**
 * Example backends of examples/config.yaml: HTTP on :8080 (web), gRPC health on :50052 (grpc), TCP echo
 * on :15432 (db).
 */
async function exampleBackends(): Promise<{ close: () => void }> {
  const closers: (() => void)[] = [];
  try {
    const grpc = await grpcHealthBackend({ port: 50052 });
    closers.push(grpc.close);
  } catch (err) {
    console.error(`dev: example gRPC health backend not started on 127.0.0.1:50052: ${err}`);
  }
  try {
    const http = Deno.serve(
      { hostname: "127.0.0.1", port: 8080, onListen: () => {} },
      (req) =>
        Response.json({
          hello: req.headers.get("x-tailscale-user") || "tagged node",
          node: req.headers.get("x-tailscale-node"),
          path: new URL(req.url).pathname,
        }),
    );
    closers.push(() => void http.shutdown());
  } catch (err) {
    console.error(`dev: example HTTP backend not started on 127.0.0.1:8080: ${err}`);
  }
  try {
    const tcp = Deno.listen({ hostname: "127.0.0.1", port: 15432 });
    closers.push(() => tcp.close());
    (async () => {
      for await (const c of tcp) void c.readable.pipeTo(c.writable).catch(() => {});
    })().catch(() => {});
  } catch (err) {
    console.error(`dev: example TCP echo backend not started on 127.0.0.1:15432: ${err}`);
  }
  return { close: () => closers.forEach((c) => c()) };
}

/** Prints the tailnet's nodes and the commands to try, each with the decision it should get. */
function printIntro(tailnet: Tailnet): void {
  const gw = tailnet.node("gw");
  const lines = [
    "",
    `tailnet in a box is up (policy: ${tailnet.description.policyPath}; edit it and send SIGHUP to headscale pid ${tailnet.description.headscalePid} to change grants)`,
    `  gw     ${gw.ipv4}  LocalAPI ${gw.socket}`,
    ...["alice", "bob"].map((n) =>
      `  ${n.padEnd(6)} ${tailnet.node(n).ipv4}  SOCKS5 127.0.0.1:${tailnet.node(n).socksPort}`
    ),
    "",
    "Try, in another terminal:",
    ...tryCommands(tailnet).map((c) => `  # ${c.who}: expect ${c.expect}\n  ${c.command}`),
    "(grpc-status 0 is OK, 7 is PERMISSION_DENIED; backends: HTTP echo on 127.0.0.1:8080, gRPC health on 127.0.0.1:50052, TCP echo on 127.0.0.1:15432; the tls and dns ones in examples/config.yaml are not started; egress: the example's proxy on 127.0.0.1:1055 reaches alice's port 8080, which alice's tailscaled forwards to the HTTP echo)",
    "",
  ];
  console.error(lines.join("\n"));
}

if (import.meta.main) {
  const stopSignals = ["SIGINT", "SIGTERM", "SIGHUP"] as const;
  // Listen before anything starts, so a signal during start-up still tears down what exists.
  let stopRequested = false;
  const stopped = Promise.withResolvers<void>();
  for (const sig of stopSignals) {
    Deno.addSignalListener(sig, () => {
      stopRequested = true;
      stopped.resolve();
    });
  }
  // The proxy runs with --cached-only (as the compiled binary never fetches code): cache it first.
  await cacheDependencies({ entries: ["main.ts"] });
  if (Deno.args.length) {
    const proxy = new WatchedProxy(Deno.args);
    await Promise.race([stopped.promise, proxy.done]);
    Deno.exit(await proxy.stop());
  }
  await ensurePeers({ log: (m) => console.error(`dev: peers: ${m}`) });
  console.error("dev: starting a tailnet in a box (headscale + gw, alice, bob) on loopback");
  const tailnet = await Tailnet.start({
    nodes: [{ name: "gw", tags: ["tag:gw"] }, { name: "alice", user: "alice" }, { name: "bob", user: "bob" }],
    log: (m) => console.error(`dev: ${m}`),
  });
  let backends: { close: () => void } | undefined;
  try {
    if (!stopRequested) {
      await tailnet.setPolicy(devPolicy());
      printIntro(tailnet);
      backends = await exampleBackends();
      // The example's Envoy is the pinned peer (tailvoy.envoyBinary "envoy" defers to ENVOY_BIN).
      const proxy = new WatchedProxy(
        ["--config", EXAMPLE_CONFIG, "--socket", tailnet.node("gw").socket, "--log-format", "text"],
        { ENVOY_BIN: PEER_BINS.envoy },
      );
      await Promise.race([stopped.promise, proxy.done]);
      await proxy.stop();
    }
  } finally {
    backends?.close();
    console.error("dev: tearing down the tailnet in a box");
    await tailnet.release();
  }
  Deno.exit(0);
}
