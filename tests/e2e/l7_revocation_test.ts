/**
 * Long-lived L7 connections and revocation, on the real tailnet, Envoy and proxy: ext_authz judges each
 * request as it starts, so a WebSocket or a streaming response opened before a grant is taken away
 * would outlive it; the relay re-checks every connection it handed to Envoy and closes those whose
 * caller's grants for the listener changed, while other callers' connections stay.
 */

import assert from "node:assert/strict";
import { join } from "node:path";
import { bridge } from "../../scripts/harness/clients.ts";
import { fixture, tailnetFixture, tempDir } from "../../scripts/harness/fixture.ts";
import { Proxy } from "../../scripts/harness/proxy.ts";
import { CAP, defaultPolicy, type Policy, waitFor } from "../../scripts/harness/tailnet.ts";

const PORT = 17780;

function policy(withAlice: boolean): Policy {
  const p = defaultPolicy();
  p.grants = [
    { src: ["*"], dst: ["*"], ip: ["*"] },
    ...(withAlice
      ? [{ src: ["group:eng"], dst: ["tag:gw"], app: { [CAP]: [{ listeners: ["live"] }] } }]
      : []),
    { src: ["tag:ci"], dst: ["tag:gw"], app: { [CAP]: [{ listeners: ["live"] }] } },
  ];
  return p;
}

/** A backend with a WebSocket echo at /ws and an endless chunked stream at /stream. */
function liveBackend(): { port: number; close: () => Promise<void> } {
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen: () => {} }, (req) => {
    if (req.headers.get("upgrade") === "websocket") {
      const { socket, response } = Deno.upgradeWebSocket(req);
      socket.onmessage = (e) => socket.send(`echo:${e.data}`);
      return response;
    }
    let timer: ReturnType<typeof setInterval>;
    const body = new ReadableStream<Uint8Array>({
      start(controller) {
        timer = setInterval(() => controller.enqueue(new TextEncoder().encode("tick\n")), 100);
      },
      cancel() {
        clearInterval(timer);
      },
    });
    return new Response(body, { headers: { "content-type": "text/plain" } });
  });
  return { port: server.addr.port, close: () => server.shutdown() };
}

/** A WebSocket from `url`: resolves once open; `closed` resolves when it closes. */
async function openSocket(url: string) {
  const ws = new WebSocket(url);
  const messages: string[] = [];
  const closed = new Promise<void>((resolve) => ws.onclose = () => resolve());
  ws.onmessage = (e) => messages.push(String(e.data));
  await new Promise<void>((resolve, reject) => {
    ws.onopen = () => resolve();
    ws.onerror = () => reject(new Error(`WebSocket ${url} did not open`));
  });
  const echoes = async (text: string) => {
    const before = messages.length;
    ws.send(text);
    await waitFor(() => messages.length > before ? true : undefined, {
      what: `echo of ${text}`,
      timeoutMs: 5000,
    });
    return messages.at(-1);
  };
  return { ws, closed, echoes, isOpen: () => ws.readyState === WebSocket.OPEN };
}

Deno.test.sanitizer({ ops: false, resources: false });

const tailnetOnce = tailnetFixture();

/** The backend, the proxy, and local bridges into the tailnet as alice and as ci. */
const gatewayOnce = fixture(async (cleanup) => {
  const tailnet = await tailnetOnce();
  await tailnet.usePolicy(policy(true));
  const gw = tailnet.node("gw");
  const backend = liveBackend();
  cleanup.defer(() => backend.close());
  const dir = await tempDir(cleanup, "tailvoy-revoke-");
  const file = join(dir, "live.yaml");
  await Deno.writeTextFile(
    file,
    [
      "tailscale:",
      "  serviceMappings: {gw: [live]}",
      "listeners:",
      `  live: {port: ${PORT}, protocol: http, backend: "127.0.0.1:${backend.port}"}`,
      "tailvoy:",
      `  adminAddress: "127.0.0.1:0"`,
      `  envoyBinary: ${join(Deno.cwd(), ".peers", "bin", "envoy")}`,
      "  timeouts: {recheck: 1s, whoisCacheTtl: 1s, drain: 1s}",
      "",
    ].join("\n"),
  );
  const proxy = new Proxy(file, gw.socket);
  cleanup.defer(async () => void await proxy.stop());
  const alice = bridge(tailnet, "alice", gw.ipv4, PORT);
  cleanup.defer(() => alice.close());
  const ci = bridge(tailnet, "ci", gw.ipv4, PORT);
  cleanup.defer(() => ci.close());
  const sockets: WebSocket[] = [];
  cleanup.defer(() => sockets.forEach((ws) => ws.close()));
  await proxy.waitLog(/"message":"ready:/, "ready");
  /** A WebSocket to /ws through `via`'s bridge, closed at the end of the file. */
  const socket = async (via: { port: number }) => {
    const s = await openSocket(`ws://127.0.0.1:${via.port}/ws`);
    sockets.push(s.ws);
    return s;
  };
  /** alice's streaming response, once it flows. */
  const stream = async () => {
    const res = await fetch(`http://127.0.0.1:${alice.port}/stream`);
    assert.equal(res.status, 200);
    const reader = res.body!.getReader();
    cleanup.defer(() => reader.cancel().catch(() => {}));
    assert.ok((await reader.read()).value, "the stream flows");
    return reader;
  };
  return { tailnet, proxy, alice, ci, socket, stream };
});

/** The running gateway, with alice's grant (`withAlice`) or without. */
async function gateway(withAlice = true) {
  const g = await gatewayOnce();
  await g.tailnet.usePolicy(policy(withAlice));
  return g;
}

Deno.test("L7 revocation: before: both callers' WebSockets echo, alice's stream flows", async () => {
  const { alice, ci, socket, stream } = await gateway();
  const aliceWs = await socket(alice);
  const ciWs = await socket(ci);
  await stream();
  assert.equal(await aliceWs.echoes("a1"), "echo:a1");
  assert.equal(await ciWs.echoes("c1"), "echo:c1");
});

Deno.test(
  "L7 revocation: alice's grant removed: her WebSocket and stream are closed; ci's stays",
  async () => {
    const { tailnet, proxy, alice, ci, socket, stream } = await gateway();
    const aliceWs = await socket(alice);
    const ciWs = await socket(ci);
    const reader = await stream();
    await tailnet.usePolicy(policy(false));
    await aliceWs.closed; // the re-check (1 s) after WhoIs shows the change
    let ended = false;
    while (!ended) ended = (await reader.read().catch(() => ({ done: true }))).done;
    assert.equal(await ciWs.echoes("c2"), "echo:c2", "an unaffected caller keeps its connection");
    assert.ok(ciWs.isOpen());
    await proxy.waitLog(
      /closing flow .*live.*no tailvoy grant for listener \\"live\\" any more/,
      "the reason",
    );
    const metrics = proxy.records().find((r) => r.logger === "tailvoy.admin");
    const text = await (await fetch(`http://${metrics!.addr}/metrics`)).text();
    assert.match(text, /tailvoy_flows_revoked_total\{listener="live"\} [1-9]/);
    const close = proxy.records().find((r) =>
      r.logger === "tailvoy.decision" && r.event === "close" && /access revoked/.test(r.reason ?? "")
    );
    assert.ok(close, "the decision log says why the flow closed");
  },
);

Deno.test(
  "L7 revocation: a reconnecting alice is judged afresh: denied now, allowed once her grant is back",
  async () => {
    const { tailnet, alice, socket } = await gateway(false);
    await assert.rejects(openSocket(`ws://127.0.0.1:${alice.port}/ws`));
    await tailnet.usePolicy(policy(true));
    // Within the identity cache's TTL (1 s) of tailscaled having the grant again.
    const again = await waitFor(() => socket(alice), {
      what: "alice's WebSocket to open again",
      timeoutMs: 10_000,
      intervalMs: 250,
    });
    assert.equal(await again.echoes("a2"), "echo:a2");
  },
);
