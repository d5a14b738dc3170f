/**
 * No gRPC client can take the proxy down (Envoy Gateway mode, on real peers): the gRPC ext_authz server
 * runs in a child process (`tailvoy authz-bridge`), because grpc-js rides on Deno's `node:http2`, which a
 * client can abort inside nghttp2 (denoland/deno#36788). The test drives the real server with what is
 * known to upset it (a session idling then sending GOAWAY, a channel closed after thousands of calls,
 * garbage frames), stops it (checks are denied meanwhile) and kills it as the abort would (the known
 * trigger needs minutes of idling), and checks every time that an open L4 flow keeps relaying and that
 * L7 recovers.
 */

import assert from "node:assert/strict";
import { join } from "node:path";
import * as grpc from "@grpc/grpc-js";
import { allocatePorts } from "../../lib/envoy/mod.ts";
import { loadAuthzProtos } from "../../lib/extauthz/protos.ts";
import { echoBackend, http, readSome } from "../../scripts/harness/clients.ts";
import { closeQuietly, delay } from "../../lib/util/async.ts";
import { fixture, tailnetFixture, tempDir } from "../../scripts/harness/fixture.ts";
import {
  type GatewayCluster,
  GatewayEnvoyConfig,
  type GatewayListener,
} from "../../scripts/harness/gateway_envoy.ts";
import { descendants, isRunning } from "../../scripts/harness/procs.ts";
import { Proxy, tcpEcho } from "../../scripts/harness/proxy.ts";
import { CAP, defaultPolicy, type Policy, waitFor } from "../../scripts/harness/tailnet.ts";

const enc = new TextEncoder();

function policy(): Policy {
  const p = defaultPolicy();
  p.grants = [
    { src: ["*"], dst: ["*"], ip: ["*"] },
    { src: ["group:eng"], dst: ["tag:gw"], app: { [CAP]: [{ listeners: ["http", "default/eg/tcp"] }] } },
  ];
  return p;
}

/** The pid of the proxy's gRPC bridge child, from its command line. */
async function bridgePid(proxyPid: number): Promise<number | undefined> {
  for (const p of await descendants(proxyPid)) {
    const argv = await Deno.readTextFile(`/proc/${p.pid}/cmdline`).catch(() => "");
    if (argv.split("\0").includes("authz-bridge")) return p.pid;
  }
  return undefined;
}

/** HTTP/2 frames: the client preface, an empty SETTINGS, a GOAWAY. */
const PREFACE = enc.encode("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
const SETTINGS = new Uint8Array([0, 0, 0, 4, 0, 0, 0, 0, 0]);
const GOAWAY = new Uint8Array([0, 0, 8, 7, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);

async function send(port: number, ...chunks: (Uint8Array | number)[]): Promise<void> {
  const c = await Deno.connect({ hostname: "127.0.0.1", port });
  try {
    for (const chunk of chunks) {
      if (typeof chunk === "number") await delay(chunk);
      else await c.write(chunk).catch(() => {});
    }
    await readSome(c, 500).catch(() => null);
  } finally {
    try {
      c.close();
    } catch { /* closed by the server */ }
  }
}

Deno.test.sanitizer({ ops: false, resources: false });

const tailnetOnce = tailnetFixture();

/** The tailnet with this file's policy. */
async function isolationTailnet() {
  const tailnet = await tailnetOnce();
  await tailnet.usePolicy(policy());
  return tailnet;
}

/** Envoy Gateway's config, the backends, the proxy, and alice's L4 flow kept open through every test. */
const gatewayOnce = fixture(async (cleanup) => {
  const tailnet = await isolationTailnet();
  const gw = tailnet.node("gw");
  const backend = echoBackend();
  cleanup.defer(() => backend.close());
  const echo = tcpEcho();
  cleanup.defer(() => echo.close());
  const ports = allocatePorts(["admin", "authz", "http", "tcp"]);
  const port = (name: string) => ports.get(name)!;
  const eg = await GatewayEnvoyConfig.create({ adminPort: port("admin"), authzPort: port("authz") });
  cleanup.defer(() => eg.remove());
  const clusters: GatewayCluster[] = [
    { name: "httproute/default/web/rule/0", port: backend.port },
    { name: "tcproute/default/echo/rule/-1", port: echo.port },
  ];
  const listeners: GatewayListener[] = [
    {
      name: "default/eg/http",
      port: port("http"),
      kind: "http",
      routes: [{ prefix: "/", cluster: clusters[0].name, authzListener: "http" }],
    },
    { name: "default/eg/tcp", port: port("tcp"), kind: "tcp", cluster: clusters[1].name },
  ];
  await eg.write(listeners, clusters);
  const dir = await tempDir(cleanup, "tailvoy-isolation-");
  const file = join(dir, "gateway.yaml");
  await Deno.writeTextFile(
    file,
    [
      "tailscale:",
      '  serviceMappings: {gw: ["^default/eg/"]}',
      "discovery:",
      `  envoyAdmin: http://127.0.0.1:${port("admin")}`,
      "  envoyAddress: 127.0.0.1",
      "  pollInterval: 300ms",
      "  proxyProtocol: v2",
      "tailvoy:",
      `  adminAddress: "127.0.0.1:0"`,
      `  envoyBinary: ${join(Deno.cwd(), ".peers", "bin", "envoy")}`,
      "  timeouts: {drain: 1s, unadvertiseGrace: 0s}",
      "",
    ].join("\n"),
  );
  const proxy = new Proxy(file, gw.socket, {
    args: ["--authz-addr", `127.0.0.1:${port("authz")}`, "--", "-c", eg.bootstrapPath],
  });
  cleanup.defer(async () => void await proxy.stop());
  const status = (path: string) =>
    tailnet.dial("alice", gw.ipv4, port("http")).then((c) => http(c, path)).then((r) => r.status);
  try {
    await proxy.waitLog(/discovered 2 Envoy listeners/, "discovery");
    await proxy.waitLog(/gRPC ext_authz process ready/, "the gRPC bridge");
  } catch (err) {
    console.error(proxy.lines.slice(-30).join("\n"));
    throw err;
  }
  const flow = await tailnet.dial("alice", gw.ipv4, port("tcp"));
  cleanup.defer(() => closeQuietly(flow));
  const flowEchoes = async (text: string) => {
    await flow.write(enc.encode(text));
    return await readSome(flow);
  };
  return { proxy, port, status, flow, flowEchoes };
});

/** The running gateway with this file's policy in place. */
async function gateway() {
  const g = await gatewayOnce();
  await isolationTailnet();
  /** After an attack: the proxy runs, the open L4 flow relays, L7 answers alice with 200 again. */
  const survived = async (what: string) => {
    assert.ok(await isRunning(g.proxy.child.pid), `${what}: the proxy process is alive`);
    assert.equal(await g.flowEchoes(what), `echo:${what}`, `${what}: the L4 flow keeps relaying`);
    await waitFor(async () => (await g.status("/x")) === 200 ? true : undefined, {
      what: `${what}: alice's HTTP request allowed again`,
      timeoutMs: 20_000,
      intervalMs: 200,
    });
  };
  return { ...g, survived };
}

/** Runs `fn`; on failure prints the proxy's last log lines, as they explain most failures here. */
function withLog(fn: (g: Awaited<ReturnType<typeof gateway>>) => Promise<void>): () => Promise<void> {
  return async () => {
    const g = await gateway();
    try {
      await fn(g);
    } catch (err) {
      console.error(g.proxy.lines.slice(-30).join("\n"));
      throw err;
    }
  };
}

const NO_CLIENT = "Envoy Gateway mode: no gRPC client can take the proxy down:";

Deno.test(
  `${NO_CLIENT} before any attack, L4 relays, L7 allows alice, the gRPC server is a child process`,
  withLog(async ({ proxy, status, flowEchoes }) => {
    assert.equal(await flowEchoes("hi"), "echo:hi");
    assert.equal(await status("/x"), 200);
    assert.ok(await bridgePid(proxy.child.pid), "the gRPC server runs in a child process of the proxy");
  }),
);

Deno.test(
  `${NO_CLIENT} an HTTP/2 session that idles, then sends GOAWAY`,
  withLog(async ({ port, survived }) => {
    await send(port("authz"), PREFACE, SETTINGS, 3000, GOAWAY, 200);
    await survived("idle-goaway");
  }),
);

Deno.test(
  `${NO_CLIENT} garbage: no preface; a preface then random frames`,
  withLog(async ({ port, survived }) => {
    await send(port("authz"), crypto.getRandomValues(new Uint8Array(4096)));
    await send(port("authz"), PREFACE, crypto.getRandomValues(new Uint8Array(16384)), GOAWAY);
    await survived("garbage");
  }),
);

Deno.test(
  `${NO_CLIENT} a channel closed after thousands of calls`,
  withLog(async ({ port, survived }) => {
    const protos = loadAuthzProtos();
    const Client = grpc.makeGenericClientConstructor(protos.service, "Authorization");
    const client = new Client(`127.0.0.1:${port("authz")}`, grpc.credentials.createInsecure());
    const call = () =>
      new Promise<void>((resolve) =>
        // deno-lint-ignore no-explicit-any
        (client as any).Check({}, () => resolve())
      );
    for (let i = 0; i < 3000; i += 50) await Promise.all(Array.from({ length: 50 }, call));
    client.close();
    await survived("thousands-of-calls");
  }),
);

Deno.test(
  `${NO_CLIENT} the gRPC process hung: checks are denied, never allowed; L4 unaffected`,
  withLog(async ({ proxy, status, flowEchoes, survived }) => {
    const pid = (await bridgePid(proxy.child.pid))!;
    Deno.kill(pid, "SIGSTOP");
    try {
      assert.equal(await status("/x"), 403, "Envoy cannot get an answer: deny");
      assert.equal(await flowEchoes("during"), "echo:during");
    } finally {
      Deno.kill(pid, "SIGCONT");
    }
    await survived("stopped");
  }),
);

Deno.test(
  `${NO_CLIENT} the gRPC process aborted (as nghttp2 does): restarted on the same port`,
  withLog(async ({ proxy, survived }) => {
    const pid = (await bridgePid(proxy.child.pid))!;
    Deno.kill(pid, "SIGKILL");
    await proxy.waitLog(/gRPC ext_authz process exited .*SIGKILL/, "the bridge's death noticed");
    await survived("killed");
    const next = await bridgePid(proxy.child.pid);
    assert.ok(next && next !== pid, "a new gRPC process");
  }),
);

Deno.test(
  `${NO_CLIENT} SIGTERM: the proxy exits 0 and leaves no gRPC process behind`,
  withLog(async ({ proxy, flow }) => {
    const pid = (await bridgePid(proxy.child.pid))!;
    closeQuietly(flow);
    assert.equal(await proxy.stop(), 0);
    assert.equal(await isRunning(pid), false);
  }),
);
