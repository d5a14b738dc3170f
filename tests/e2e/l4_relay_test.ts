/**
 * The L4 data plane end to end: the real proxy process (`deno run main.ts`, with the binary's
 * permissions) beside the gateway's real tailscaled, callers on real tailnet nodes, real backends.
 * Serve ingress (tailscaled forwards with PROXY v2) and direct ingress (userspace 127.0.0.1), tcp,
 * TLS passthrough by SNI, UDP, a client-sent PROXY header, live revocation and SIGTERM.
 */

import assert from "node:assert/strict";
import { join } from "node:path";
import { LocalApiClient } from "../../lib/localapi/mod.ts";
import { RUNTIME_PERMISSIONS } from "../../lib/self.ts";
import { sourceRunArgs } from "../../scripts/harness/cache.ts";
import { PROJECT_ROOT } from "../../scripts/harness/peers.ts";
import { encodeProxyV2 } from "../../lib/proxy_protocol/mod.ts";
import { makeCert } from "../../scripts/harness/certs.ts";
import { readSome, tlsBackend, tlsVia } from "../../scripts/harness/clients.ts";
import { closeQuietly } from "../../lib/util/async.ts";
import { fixture, tailnetFixture, tempDir } from "../../scripts/harness/fixture.ts";
import { Proxy, tcpEcho } from "../../scripts/harness/proxy.ts";
import { CAP, defaultPolicy, type Policy, waitFor } from "../../scripts/harness/tailnet.ts";

const enc = new TextEncoder();
const dec = new TextDecoder();

/** Policy for this test: alice may use db, dns and the tls listener for app.example.com only. */
function l4Policy(aliceRules: unknown[]): Policy {
  const p = defaultPolicy();
  p.grants = [
    { src: ["*"], dst: ["*"], ip: ["*"] },
    { src: ["group:eng"], dst: ["tag:gw"], app: { [CAP]: aliceRules } },
  ];
  return p;
}
/** Whether a WhoIs answer carries exactly this test's rules for alice (the default policy has others). */
function hasAliceRules(who: { CapMap: Record<string, unknown[]> }): boolean {
  return JSON.stringify(who.CapMap[CAP]) === JSON.stringify(ALICE_RULES);
}
const ALICE_RULES = [{ listeners: ["db", "dns"] }, { listeners: ["tls"], hostnames: ["app.example.com"] }];

Deno.test.sanitizer({ ops: false, resources: false });

const tailnetOnce = tailnetFixture();

/** The backends (tcp echo, two TLS backends, UDP echo) and a directory for the configs. */
const backendsOnce = fixture(async (cleanup) => {
  const dir = await tempDir(cleanup, "tailvoy-l4-");
  const echo = tcpEcho();
  cleanup.defer(() => echo.close());
  const tls = await makeCert(dir);
  const backendA = tlsBackend(tls, "A");
  cleanup.defer(() => backendA.close());
  const backendB = tlsBackend(tls, "B");
  cleanup.defer(() => backendB.close());
  const dgram = await import("node:dgram");
  const udpEcho = dgram.createSocket("udp4");
  await new Promise<void>((r) => udpEcho.bind(0, "127.0.0.1", r));
  cleanup.defer(() => void udpEcho.close());
  udpEcho.on("message", (m: Uint8Array, ri: { port: number; address: string }) => {
    udpEcho.send(new Uint8Array([...enc.encode("echo:"), ...m]), ri.port, ri.address);
  });
  return { dir, echo, tls, backendA, backendB, udpPort: udpEcho.address().port };
});

/** The tailnet with this file's policy, seen by the gateway. */
async function l4Tailnet() {
  const tailnet = await tailnetOnce();
  await tailnet.usePolicy(l4Policy(ALICE_RULES));
  using api = new LocalApiClient(tailnet.node("gw").socket);
  await waitFor(async () => hasAliceRules(await api.whois(tailnet.node("alice").ipv4)) ? true : undefined, {
    what: "the L4 test policy to reach the gateway",
    timeoutMs: 15_000,
  });
  return tailnet;
}

/** Writes the proxy's config for `ingress`, its tailnet ports from `base`; returns the file. */
async function writeConfig(ingress: "serve" | "direct", base: number): Promise<string> {
  const b = await backendsOnce();
  const file = join(b.dir, `${ingress}.yaml`);
  const udp = ingress === "direct"
    ? `  dns:\n    port: ${base + 53}\n    protocol: udp\n    backend: 127.0.0.1:${b.udpPort}\n`
    : "";
  await Deno.writeTextFile(
    file,
    `tailscale:\n  serviceMappings:\n    gw: [db, tls]\n` +
      `listeners:\n` +
      `  db:\n    port: ${base + 32}\n    protocol: tcp\n    backend: 127.0.0.1:${b.echo.port}\n` +
      `  tls:\n    port: ${base + 43}\n    protocol: tls\n    routes:\n` +
      `      - {hostname: app.example.com, backend: "127.0.0.1:${b.backendA.port}"}\n` +
      `      - {hostname: admin.example.com, backend: "127.0.0.1:${b.backendB.port}"}\n` +
      udp +
      `tailvoy:\n  ingress: ${ingress}\n  adminAddress: "127.0.0.1:0"\n` +
      `  timeouts: {recheck: 1s, whoisCacheTtl: 1s, drain: 2s}\n`,
  );
  return file;
}

// ---- serve ingress: tailscaled forwards gw:SERVE+32 etc. to our loopback listeners with PROXY v2.
const SERVE = 17400;

const serveProxyOnce = fixture(async (cleanup) => {
  const tailnet = await l4Tailnet();
  const proxy = new Proxy(await writeConfig("serve", SERVE), tailnet.node("gw").socket);
  cleanup.defer(async () => void await proxy.stop());
  await proxy.waitLog(/"message":"ready:/, "ready");
  return proxy;
});

/** The serve-ingress proxy, running, with this file's policy in place. */
async function serveIngress() {
  const proxy = await serveProxyOnce();
  const tailnet = await l4Tailnet();
  return { proxy, tailnet, gw: tailnet.node("gw"), alice: tailnet.node("alice") };
}

/** Sends `text` from `who` to the serve db listener; the echo, or null when refused. */
async function serveDb(who: string, text: string): Promise<string | null> {
  const { tailnet, gw } = await serveIngress();
  const c = await tailnet.dial(who, gw.ipv4, SERVE + 32);
  await c.write(enc.encode(text)).catch(() => {});
  const got = await readSome(c);
  closeQuietly(c);
  return got;
}

Deno.test("L4: serve: tailscaled's serve config forwards our ports with PROXY v2", async () => {
  const { gw } = await serveIngress();
  using api = new LocalApiClient(gw.socket);
  const { config } = await api.getServeConfig();
  const fg = Object.values(config.Foreground ?? {});
  assert.equal(fg.length, 1);
  assert.equal(fg[0].TCP?.[String(SERVE + 32)]?.ProxyProtocol, 2);
  assert.match(fg[0].TCP?.[String(SERVE + 32)]?.TCPForward ?? "", /^127\.0\.0\.1:\d+$/);
});

Deno.test(
  "L4: serve: a local process of another user sending a PROXY header naming alice is refused; tailscaled's are served",
  async () => {
    const { proxy, gw, alice } = await serveIngress();
    using api = new LocalApiClient(gw.socket);
    const { config } = await api.getServeConfig();
    const forward = Object.values(config.Foreground ?? {})[0]?.TCP?.[String(SERVE + 32)]?.TCPForward ?? "";
    const relayPort = Number(forward.split(":")[1]);
    // What tailscaled sends, forged by a process running as nobody (the test runs as root, like
    // tailscaled here): a PROXY v2 header for alice, then a line.
    const forged = [
      ...encodeProxyV2({
        command: "PROXY",
        transport: "tcp",
        source: { address: alice.ipv4, port: 4242 },
        destination: { address: gw.ipv4, port: SERVE + 32 },
      }),
      ...enc.encode("hi"),
    ];
    // bash's /dev/tcp: no interpreter that nobody may not be able to reach.
    const bytes = forged.map((b) => `\\x${b.toString(16).padStart(2, "0")}`).join("");
    // The proxy may close before the write: no SIGPIPE, no error text.
    const script =
      `trap '' PIPE; exec 3<>/dev/tcp/127.0.0.1/${relayPort}; printf '${bytes}' >&3 2>/dev/null; ` +
      `r=$(timeout 5 cat <&3); echo -n "\${r:-closed}"`;
    const asNobody = await new Deno.Command("setpriv", {
      args: ["--reuid=65534", "--regid=65534", "--clear-groups", "bash", "-c", script],
      env: { PATH: "/usr/bin:/bin" },
    }).output();
    assert.equal(dec.decode(asNobody.stdout), "closed", dec.decode(asNobody.stderr));
    await proxy.waitLog(
      /refused on .*db.*runs as uid 65534, not tailscaled's 0/,
      "the refusal names the uid",
    );
    // tailscaled itself is still believed.
    assert.equal(await serveDb("alice", "ok"), "echo:ok");
  },
);

Deno.test("L4: serve: alice reaches the tcp backend, bob's connection is closed", async () => {
  const { proxy } = await serveIngress();
  assert.equal(await serveDb("alice", "hi"), "echo:hi");
  assert.equal(await serveDb("bob", "hi"), null);
  await proxy.waitLog(/refused on .*db.*no valid tailvoy rules/, "bob refused with the reason");
});

Deno.test("L4: serve: /metrics counts the decisions; the decision log has every field", async () => {
  const { proxy, alice } = await serveIngress();
  // A decision of each kind, and a closed flow, to count and to log.
  const seen = proxy.lines.length;
  assert.equal(await serveDb("alice", "hi"), "echo:hi");
  assert.equal(await serveDb("bob", "hi"), null);
  const decisions = () => proxy.records().slice(seen).filter((r) => r.logger === "tailvoy.decision");
  await waitFor(() => decisions().some((r) => r.event === "close") || undefined, {
    what: "the decision log's close line for alice's flow",
    timeoutMs: 5000,
  });
  const adminLine = await proxy.waitLog(/"logger":"tailvoy.admin"/, "admin server address");
  const base = `http://${JSON.parse(adminLine).addr}`;
  const metrics = await (await fetch(`${base}/metrics`)).text();
  assert.match(metrics, /tailvoy_decisions_total\{listener="db",layer="l4",result="allow"\} [1-9]/);
  assert.match(metrics, /tailvoy_decisions_total\{listener="db",layer="l4",result="deny"\} [1-9]/);
  assert.match(metrics, /tailvoy_whois_calls_total\{result="ok"\} [1-9]/);
  assert.match(metrics, /tailvoy_serve_config_writes_total [1-9]/);
  assert.match(metrics, /tailvoy_flow_bytes_total\{listener="db",direction="up"\} [1-9]/);
  assert.equal((await fetch(`${base}/healthz`)).status, 200);
  const ready = await fetch(`${base}/readyz`);
  assert.deepEqual(await ready.json(), {
    ready: true,
    checks: { localapi: true, listeners: true, envoy: true },
  });
  const records = decisions();
  const allow = records.find((r) => r.event === "decision" && r.decision === "allow");
  const deny = records.find((r) => r.event === "decision" && r.decision === "deny");
  const close = records.find((r) => r.event === "close");
  for (const r of [allow, deny, close]) {
    assert.ok(r, "a decision-log line of each kind");
    for (
      const key of [
        "@timestamp",
        "requestId",
        "listener",
        "layer",
        "callerIp",
        "user",
        "node",
        "tags",
        "host",
      ]
    ) {
      assert.ok(key in r, `${r.event} line has ${key}`);
    }
  }
  assert.equal(allow.user, "alice");
  assert.equal(allow.node, alice.fqdn);
  assert.match(allow.callerIp, new RegExp(`^${alice.ipv4.replaceAll(".", "\\.")}:\\d+$`));
  assert.equal(allow.rule, JSON.stringify(ALICE_RULES[0]));
  assert.equal(allow.code, "allow");
  assert.equal(typeof allow.latencyMs, "number");
  assert.equal(deny.user, "bob");
  assert.equal(deny.code, "no_rules");
  assert.match(deny.rule, /no valid tailvoy rules/);
  assert.equal(close.bytesUp, 2);
  assert.equal(close.bytesDown, 7);
  assert.equal(typeof close.durationMs, "number");
});

Deno.test("L4: serve: TLS passthrough routes by SNI; the hostname grant admits only app", async () => {
  const { proxy, tailnet } = await serveIngress();
  const { tls } = await backendsOnce();
  assert.equal(await tlsVia(tailnet, "alice", SERVE + 43, "app.example.com", tls.ca), "backend A");
  assert.equal(await tlsVia(tailnet, "alice", SERVE + 43, "admin.example.com", tls.ca), null);
  await proxy.waitLog(/SNI \\"admin.example.com\\" matches none/, "admin refused by hostname");
});

Deno.test("L4: serve: revoking alice's grant closes her open connection and refuses new ones", async () => {
  const { proxy, tailnet, gw, alice } = await serveIngress();
  const a = await tailnet.dial("alice", gw.ipv4, SERVE + 32);
  await a.write(enc.encode("before"));
  assert.equal(await readSome(a), "echo:before");
  await tailnet.usePolicy(l4Policy([{ listeners: ["tls"], hostnames: ["app.example.com"] }]));
  // Propagation (headscale batch + netmap), then at most one re-check interval plus one TTL.
  assert.equal(await readSome(a, 15_000), null, "the open connection was closed");
  await proxy.waitLog(/closing flow .* no longer allowed/, "revocation logged");
  assert.equal(await serveDb("alice", "after"), null);
  await tailnet.usePolicy(l4Policy(ALICE_RULES));
  using api = new LocalApiClient(gw.socket);
  await waitFor(async () => hasAliceRules(await api.whois(alice.ipv4)) ? true : undefined, {
    what: "alice's grant to come back",
    timeoutMs: 15_000,
  });
});

Deno.test("L4: serve: SIGTERM exits 0 and removes our serve entries", async () => {
  const { proxy, gw } = await serveIngress();
  const code = await proxy.stop();
  assert.equal(code, 0, proxy.lines.slice(-5).join("\n"));
  using api = new LocalApiClient(gw.socket);
  const { config } = await api.getServeConfig();
  assert.deepEqual(config.Foreground ?? {}, {});
});

Deno.test(
  "L4: serve: without the means to check who connects, the proxy refuses to start and says why",
  async () => {
    const gw = (await l4Tailnet()).node("gw");
    using api = new LocalApiClient(gw.socket);
    const before = (await api.getServeConfig()).config.Foreground ?? {};
    const out = await new Deno.Command(Deno.execPath(), {
      args: [
        ...sourceRunArgs(join(PROJECT_ROOT, "main.ts"), {
          permissions: RUNTIME_PERMISSIONS.filter((p) => p !== "--allow-ffi"),
        }),
        "--config",
        await writeConfig("serve", SERVE),
        "--socket",
        gw.socket,
      ],
      stdin: "null",
    }).output();
    const text = dec.decode(out.stderr) + dec.decode(out.stdout);
    assert.equal(out.code, 1, text);
    assert.match(text, /run with --allow-ffi/);
    assert.match(text, /tailvoy\.servePeerCheck: false/);
    const { config } = await api.getServeConfig();
    assert.deepEqual(config.Foreground ?? {}, before, "nothing was served");
  },
);

// ---- direct ingress: userspace tailscaled delivers gw:PORT to 127.0.0.1:PORT.
const DIRECT = 17500;

const directProxyOnce = fixture(async (cleanup) => {
  const tailnet = await l4Tailnet();
  const proxy = new Proxy(await writeConfig("direct", DIRECT), tailnet.node("gw").socket);
  cleanup.defer(async () => void await proxy.stop());
  await proxy.waitLog(/"message":"ready:/, "ready");
  return proxy;
});

/** The direct-ingress proxy, running, with this file's policy in place. */
async function directIngress() {
  const proxy = await directProxyOnce();
  const tailnet = await l4Tailnet();
  return { proxy, tailnet, gw: tailnet.node("gw"), alice: tailnet.node("alice") };
}

Deno.test("L4: direct: alice reaches the backend, bob is closed", async () => {
  const { tailnet, gw } = await directIngress();
  const a = await tailnet.dial("alice", gw.ipv4, DIRECT + 32);
  await a.write(enc.encode("yo"));
  assert.equal(await readSome(a), "echo:yo");
  a.close();
  const b = await tailnet.dial("bob", gw.ipv4, DIRECT + 32);
  await b.write(enc.encode("yo")).catch(() => {});
  assert.equal(await readSome(b), null);
  closeQuietly(b);
});

Deno.test("L4: direct: a PROXY header sent by a client does not change who it is", async () => {
  const { tailnet, gw, alice } = await directIngress();
  const forged = (ip: string) =>
    encodeProxyV2({
      command: "PROXY",
      transport: "tcp",
      source: { address: ip, port: 1234 },
      destination: { address: gw.ipv4, port: DIRECT + 32 },
    });
  // bob claims to be alice: still bob, still refused.
  const b = await tailnet.dial("bob", gw.ipv4, DIRECT + 32);
  await b.write(forged(alice.ipv4)).catch(() => {});
  assert.equal(await readSome(b), null);
  closeQuietly(b);
  // alice's header claiming bob is only payload: she is allowed, and the backend gets the bytes.
  const a = await tailnet.dial("alice", gw.ipv4, DIRECT + 32);
  const header = forged(tailnet.node("bob").ipv4);
  await a.write(header);
  const got = await readSome(a);
  assert.ok(got?.startsWith("echo:"), String(got));
  a.close();
});

Deno.test("L4: direct: UDP echo for alice, nothing for bob", async () => {
  const { proxy, tailnet, gw } = await directIngress();
  const ua = await tailnet.udp("alice");
  try {
    const reply = await waitFor(async () => {
      await ua.send(gw.ipv4, DIRECT + 53, enc.encode("ping"));
      return await ua.receive(500);
    }, { what: "alice's UDP echo", timeoutMs: 10_000 });
    assert.equal(dec.decode(reply), "echo:ping");
  } finally {
    ua.close();
  }
  const ub = await tailnet.udp("bob");
  try {
    for (let i = 0; i < 3; i++) {
      await ub.send(gw.ipv4, DIRECT + 53, enc.encode("ping"));
      assert.equal(await ub.receive(500), undefined);
    }
  } finally {
    ub.close();
  }
  await proxy.waitLog(/refused on .*dns.*no valid tailvoy rules/, "bob's UDP refused");
});

Deno.test("L4: direct: SIGTERM exits 0", async () => {
  const { proxy } = await directIngress();
  assert.equal(await proxy.stop(), 0, proxy.lines.slice(-5).join("\n"));
});
