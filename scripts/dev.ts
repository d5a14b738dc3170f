/**
 * `deno task dev`: the proxy in watch mode, on a fresh machine with no tailscaled and no Tailscale account.
 *
 * Without arguments it installs the test peers, brings up a tailnet in a box on loopback (headscale, a
 * gateway node `gw` tagged `tag:gw`, clients `alice` and `bob`, example grants), runs the proxy against
 * the gateway's LocalAPI with `examples/config.yaml`, and prints commands to try as each client with the
 * decision each should get. Ctrl-C tears everything down.
 *
 * With arguments (e.g. `deno task dev --config my.yaml`) it runs only the proxy, in watch mode, against
 * your own tailscaled.
 *
 * @module
 */

import { join } from "node:path";
import { RUNTIME_PERMISSIONS } from "./compile.ts";
import { ensurePeers, PEER_BINS, PROJECT_ROOT } from "./peers.ts";
import { grpcHealthBackend } from "../tests/harness/grpc_health.ts";
import { CAP, defaultPolicy, Tailnet } from "../tests/harness/tailnet.ts";

const EXAMPLE_CONFIG = join(PROJECT_ROOT, "examples", "config.yaml");

function proxy(args: string[], options: { env?: Record<string, string> } = {}): Deno.ChildProcess {
  return new Deno.Command(Deno.execPath(), {
    args: ["run", ...RUNTIME_PERMISSIONS, "--watch=lib/,main.ts", "main.ts", ...args],
    cwd: PROJECT_ROOT,
    env: options.env,
    stdin: "null",
    stdout: "inherit",
    stderr: "inherit",
  }).spawn();
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

if (import.meta.main) {
  if (Deno.args.length) {
    Deno.exit((await proxy(Deno.args).status).code);
  }
  await ensurePeers({ log: (m) => console.error(`dev: peers: ${m}`) });
  console.error("dev: starting a tailnet in a box (headscale + gw, alice, bob) on loopback");
  const tailnet = await Tailnet.start({
    nodes: [{ name: "gw", tags: ["tag:gw"] }, { name: "alice", user: "alice" }, { name: "bob", user: "bob" }],
    log: (m) => console.error(`dev: ${m}`),
  });
  await tailnet.setPolicy(devPolicy());
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
    "(grpc-status 0 is OK, 7 is PERMISSION_DENIED; backends: HTTP echo on 127.0.0.1:8080, gRPC health on 127.0.0.1:50052, TCP echo on 127.0.0.1:15432; the tls and dns ones in examples/config.yaml are not started)",
    "",
  ];
  console.error(lines.join("\n"));
  const backends = await exampleBackends();
  // The example's Envoy is the pinned peer (tailvoy.envoyBinary "envoy" defers to ENVOY_BIN).
  const child = proxy(["--config", EXAMPLE_CONFIG, "--socket", gw.socket, "--log-format", "text"], {
    env: { ENVOY_BIN: PEER_BINS.envoy },
  });
  const stopped = new Promise<string>((resolve) => {
    for (const sig of ["SIGINT", "SIGTERM"] as const) Deno.addSignalListener(sig, () => resolve(sig));
  });
  const result = await Promise.race([stopped, child.status]);
  if (typeof result === "string") {
    // `deno run --watch` keeps waiting for file changes after its program exits on SIGTERM.
    for (const sig of ["SIGTERM", "SIGKILL"] as const) {
      try {
        child.kill(sig);
      } catch { /* already gone */ }
      const done = await Promise.race([
        child.status.then(() => true),
        new Promise((r) => setTimeout(r, 2000)),
      ]);
      if (done) break;
    }
  }
  backends.close();
  console.error("dev: tearing down the tailnet in a box");
  await tailnet.release();
  Deno.exit(0);
}
