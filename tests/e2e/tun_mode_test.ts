/**
 * tailvoy beside a kernel-TUN tailscaled (in its own network namespace, `scripts/harness/tun_node.ts`):
 * direct ingress binds the node's tailnet addresses and sees callers by their tailnet address (WhoIs on
 * it, no loopback mapping); egress dials tailnet peers with a plain connect that the kernel routes over
 * `tailscale0` (no LocalAPI dial). The proxy and the egress client run inside the node's namespace; the
 * ingress caller is alice on the suite's tailnet; the backend is alice's echo, reached over the tailnet.
 */

import assert from "node:assert/strict";
import { join } from "node:path";
import { closeQuietly } from "../../lib/util/async.ts";
import { readSome } from "../../scripts/harness/clients.ts";
import { fixture, tempDir } from "../../scripts/harness/fixture.ts";
import { Proxy, tcpEcho } from "../../scripts/harness/proxy.ts";
import { acquireTailnet, CAP, defaultPolicy, waitFor } from "../../scripts/harness/tailnet.ts";
import { startTunNode } from "../../scripts/harness/tun_node.ts";

Deno.test.sanitizer({ ops: false, resources: false });

const DB_PORT = 5432;
const EGRESS_PORT = 18080;

const tunProxy = fixture(async (cleanup) => {
  const tailnet = await acquireTailnet();
  cleanup.defer(() => tailnet.release());
  const policy = defaultPolicy();
  policy.grants = [
    { src: ["*"], dst: ["*"], ip: ["*"] },
    { src: ["group:eng"], dst: ["tag:gw"], app: { [CAP]: [{ listeners: ["db"] }] } },
  ];
  await tailnet.usePolicy(policy);
  const echo = tcpEcho();
  cleanup.defer(() => echo.close());
  const tun = await startTunNode(tailnet, { name: "tun-proxy", tags: ["tag:gw"] });
  cleanup.defer(() => tun.close());
  const alice = tailnet.node("alice");
  const dir = await tempDir(cleanup, "tailvoy-tun-");
  const config = join(dir, "config.yaml");
  await Deno.writeTextFile(
    config,
    [
      "listeners:",
      // The backend is alice's echo, over the tailnet: the namespace has nothing else.
      `  db: {port: ${DB_PORT}, protocol: tcp, backend: "${alice.ipv4}:${echo.port}", ingress: direct}`,
      "egress:",
      `  rules: [{name: alice-echo, hosts: [alice], ports: [${echo.port}]}]`,
      `  listeners: {proxy: {address: "127.0.0.1:${EGRESS_PORT}", protocols: [http, socks5]}}`,
      'tailvoy: {adminAddress: "127.0.0.1:0", timeouts: {drain: 1s}}',
      "",
    ].join("\n"),
  );
  const proxy = new Proxy(config, tun.socket, { prefix: ["ip", "netns", "exec", tun.netns] });
  cleanup.defer(async () => void await proxy.stop());
  await proxy.waitLog(/ready: /, "the proxy to be ready");
  return { tailnet, tun, proxy, echo, alice };
});

Deno.test("TUN mode: the proxy sees a kernel TUN and binds direct listeners on the tailnet addresses", async () => {
  const { proxy, tun } = await tunProxy();
  const started = proxy.records().find((r) => /is running as/.test(r.message ?? ""));
  assert.ok(started, "the start line");
  assert.equal(started.mode, "kernel TUN");
  const listening = proxy.records().find((r) => r.logger === "tailvoy.l4" && r.name === "db" && r.addrs);
  assert.ok(listening, "the db listener's line");
  assert.match(listening.addrs, new RegExp(`${tun.ipv4.replaceAll(".", "\\.")}:${DB_PORT}`));
});

Deno.test("TUN mode: direct ingress sees alice by her tailnet address and lets her grant through", async () => {
  const { proxy, tailnet, tun, alice } = await tunProxy();
  const conn = await tailnet.dial("alice", tun.ipv4, DB_PORT);
  try {
    await conn.write(new TextEncoder().encode("in"));
    assert.equal(await readSome(conn), "echo:in");
  } finally {
    closeQuietly(conn);
  }
  const decision = await waitFor(
    () =>
      proxy.records().find((r) =>
        r.logger === "tailvoy.decision" && r.event === "decision" && r.listener === "db"
      ),
    { what: "the decision-log record" },
  );
  assert.equal(decision.decision, "allow");
  assert.match(
    decision.callerIp,
    new RegExp(`^${alice.ipv4.replaceAll(".", "\\.")}:\\d+$`),
    "not a loopback address",
  );
  assert.match(decision.user, /^alice/);
  const bob = await tailnet.dial("bob", tun.ipv4, DB_PORT);
  try {
    assert.equal(await readSome(bob), null, "bob holds no grant for db: closed");
  } finally {
    closeQuietly(bob);
  }
});

Deno.test("TUN mode: egress dials alice with a plain connect through the kernel", async () => {
  const { proxy, tun, alice, echo } = await tunProxy();
  // The client runs in the node's namespace (the proxy listens on its loopback).
  const client = `
    const conn = await Deno.connect({ hostname: "127.0.0.1", port: ${EGRESS_PORT} });
    const enc = new TextEncoder(), dec = new TextDecoder();
    await conn.write(enc.encode("CONNECT alice:${echo.port} HTTP/1.1\\r\\nHost: alice\\r\\n\\r\\n"));
    const buf = new Uint8Array(4096);
    let head = "";
    while (!head.includes("\\r\\n\\r\\n")) { const n = await conn.read(buf); if (n === null) break; head += dec.decode(buf.subarray(0, n)); }
    await conn.write(enc.encode("tun"));
    const n = await conn.read(buf);
    console.log(JSON.stringify({ head: head.split("\\r\\n")[0], body: n === null ? null : dec.decode(buf.subarray(0, n)) }));
    conn.close();
  `;
  const out = await tun.command(Deno.execPath(), ["eval", client], { stdout: "piped", stderr: "piped" })
    .output();
  assert.ok(out.success, new TextDecoder().decode(out.stderr));
  const result = JSON.parse(new TextDecoder().decode(out.stdout));
  assert.equal(result.head, "HTTP/1.1 200 Connection established");
  assert.equal(result.body, "echo:tun");
  const record = await waitFor(
    () =>
      proxy.records().find((r) => r.event === "egress" && r.result === "allow" && r.bytesUp !== undefined),
    { what: "the egress record" },
  );
  assert.equal(record.resolved, `${alice.ipv4}:${echo.port}`);
  assert.equal(record.via, "peer");
  assert.equal(record.rule, "alice-echo");
});
