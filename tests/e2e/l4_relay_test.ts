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
import { Proxy, tcpEcho } from "../../scripts/harness/proxy.ts";
import { acquireTailnet, CAP, defaultPolicy, type Policy, waitFor } from "../../scripts/harness/tailnet.ts";

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

Deno.test({
  name: "L4 data plane against the real tailnet",
  sanitizeResources: false,
  sanitizeOps: false,
  fn: async (t) => {
    const tailnet = await acquireTailnet();
    const gw = tailnet.node("gw");
    const alice = tailnet.node("alice");
    const dir = await Deno.makeTempDir({ prefix: "tailvoy-l4-" });
    const echo = tcpEcho();
    const tls = await makeCert(dir);
    const backendA = tlsBackend(tls, "A");
    const backendB = tlsBackend(tls, "B");
    const dgram = await import("node:dgram");
    const udpEcho = dgram.createSocket("udp4");
    await new Promise<void>((r) => udpEcho.bind(0, "127.0.0.1", r));
    udpEcho.on("message", (m: Uint8Array, ri: { port: number; address: string }) => {
      udpEcho.send(new Uint8Array([...enc.encode("echo:"), ...m]), ri.port, ri.address);
    });
    using api = new LocalApiClient(gw.socket);
    const writeConfig = async (file: string, ingress: "serve" | "direct", base: number) => {
      const udp = ingress === "direct"
        ? `  dns:\n    port: ${
          base + 53
        }\n    protocol: udp\n    backend: 127.0.0.1:${udpEcho.address().port}\n`
        : "";
      await Deno.writeTextFile(
        file,
        `tailscale:\n  serviceMappings:\n    gw: [db, tls]\n` +
          `listeners:\n` +
          `  db:\n    port: ${base + 32}\n    protocol: tcp\n    backend: 127.0.0.1:${echo.port}\n` +
          `  tls:\n    port: ${base + 43}\n    protocol: tls\n    routes:\n` +
          `      - {hostname: app.example.com, backend: "127.0.0.1:${backendA.port}"}\n` +
          `      - {hostname: admin.example.com, backend: "127.0.0.1:${backendB.port}"}\n` +
          udp +
          `tailvoy:\n  ingress: ${ingress}\n  adminAddress: "127.0.0.1:0"\n` +
          `  timeouts: {recheck: 1s, whoisCacheTtl: 1s, drain: 2s}\n`,
      );
      return file;
    };
    await tailnet.setPolicy(l4Policy(ALICE_RULES));
    try {
      await waitFor(async () => hasAliceRules(await api.whois(alice.ipv4)) ? true : undefined, {
        what: "the L4 test policy to reach the gateway",
        timeoutMs: 15_000,
      });

      // ---- serve ingress: tailscaled forwards gw:SERVE+32 etc. to our loopback listeners with PROXY v2.
      const SERVE = 17400;
      const serveProxy = new Proxy(await writeConfig(join(dir, "serve.yaml"), "serve", SERVE), gw.socket);
      try {
        await serveProxy.waitLog(/"message":"ready:/, "ready");

        await t.step("serve: tailscaled's serve config forwards our ports with PROXY v2", async () => {
          const { config } = await api.getServeConfig();
          const fg = Object.values(config.Foreground ?? {});
          assert.equal(fg.length, 1);
          assert.equal(fg[0].TCP?.[String(SERVE + 32)]?.ProxyProtocol, 2);
          assert.match(fg[0].TCP?.[String(SERVE + 32)]?.TCPForward ?? "", /^127\.0\.0\.1:\d+$/);
        });

        await t.step(
          "serve: a local process of another user sending a PROXY header naming alice is refused; tailscaled's are served",
          async () => {
            const { config } = await api.getServeConfig();
            const forward =
              Object.values(config.Foreground ?? {})[0]?.TCP?.[String(SERVE + 32)]?.TCPForward ?? "";
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
            assert.equal(
              new TextDecoder().decode(asNobody.stdout),
              "closed",
              new TextDecoder().decode(asNobody.stderr),
            );
            await serveProxy.waitLog(
              /refused on .*db.*runs as uid 65534, not tailscaled's 0/,
              "the refusal names the uid",
            );
            // tailscaled itself is still believed.
            const a = await tailnet.dial("alice", gw.ipv4, SERVE + 32);
            await a.write(enc.encode("ok"));
            assert.equal(await readSome(a), "echo:ok");
            a.close();
          },
        );

        await t.step("serve: alice reaches the tcp backend, bob's connection is closed", async () => {
          const a = await tailnet.dial("alice", gw.ipv4, SERVE + 32);
          await a.write(enc.encode("hi"));
          assert.equal(await readSome(a), "echo:hi");
          a.close();
          const b = await tailnet.dial("bob", gw.ipv4, SERVE + 32);
          await b.write(enc.encode("hi")).catch(() => {});
          assert.equal(await readSome(b), null);
          try {
            b.close();
          } catch { /* closed */ }
          await serveProxy.waitLog(/refused on .*db.*no valid tailvoy rules/, "bob refused with the reason");
        });

        await t.step("serve: /metrics counts the decisions; the decision log has every field", async () => {
          const adminLine = await serveProxy.waitLog(/"logger":"tailvoy.admin"/, "admin server address");
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
          const records = serveProxy.records().filter((r) => r.logger === "tailvoy.decision");
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

        await t.step("serve: TLS passthrough routes by SNI; the hostname grant admits only app", async () => {
          assert.equal(await tlsVia(tailnet, "alice", SERVE + 43, "app.example.com", tls.ca), "backend A");
          assert.equal(await tlsVia(tailnet, "alice", SERVE + 43, "admin.example.com", tls.ca), null);
          await serveProxy.waitLog(
            /SNI \\"admin.example.com\\" matches none/,
            "admin refused by hostname",
          );
        });

        await t.step(
          "serve: revoking alice's grant closes her open connection and refuses new ones",
          async () => {
            const a = await tailnet.dial("alice", gw.ipv4, SERVE + 32);
            await a.write(enc.encode("before"));
            assert.equal(await readSome(a), "echo:before");
            await tailnet.setPolicy(l4Policy([{ listeners: ["tls"], hostnames: ["app.example.com"] }]));
            // Propagation (headscale batch + netmap), then at most one re-check interval plus one TTL.
            assert.equal(await readSome(a, 15_000), null, "the open connection was closed");
            await serveProxy.waitLog(/closing flow .* no longer allowed/, "revocation logged");
            const again = await tailnet.dial("alice", gw.ipv4, SERVE + 32);
            await again.write(enc.encode("after")).catch(() => {});
            assert.equal(await readSome(again), null);
            try {
              again.close();
            } catch { /* closed */ }
            await tailnet.setPolicy(l4Policy(ALICE_RULES));
            await waitFor(
              async () => hasAliceRules(await api.whois(alice.ipv4)) ? true : undefined,
              {
                what: "alice's grant to come back",
                timeoutMs: 15_000,
              },
            );
          },
        );
      } finally {
        const code = await serveProxy.stop();
        await t.step("serve: SIGTERM exits 0 and removes our serve entries", async () => {
          assert.equal(code, 0, serveProxy.lines.slice(-5).join("\n"));
          const { config } = await api.getServeConfig();
          assert.deepEqual(config.Foreground ?? {}, {});
        });
      }

      await t.step(
        "serve: without the means to check who connects, the proxy refuses to start and says why",
        async () => {
          const out = await new Deno.Command(Deno.execPath(), {
            args: [
              ...sourceRunArgs(join(PROJECT_ROOT, "main.ts"), {
                permissions: RUNTIME_PERMISSIONS.filter((p) => p !== "--allow-ffi"),
              }),
              "--config",
              join(dir, "serve.yaml"),
              "--socket",
              gw.socket,
            ],
            stdin: "null",
          }).output();
          const text = new TextDecoder().decode(out.stderr) + new TextDecoder().decode(out.stdout);
          assert.equal(out.code, 1, text);
          assert.match(text, /run with --allow-ffi/);
          assert.match(text, /tailvoy\.servePeerCheck: false/);
          const { config } = await api.getServeConfig();
          assert.deepEqual(config.Foreground ?? {}, {}, "nothing was served");
        },
      );

      // ---- direct ingress: userspace tailscaled delivers gw:PORT to 127.0.0.1:PORT.
      const DIRECT = 17500;
      const directProxy = new Proxy(await writeConfig(join(dir, "direct.yaml"), "direct", DIRECT), gw.socket);
      try {
        await directProxy.waitLog(/"message":"ready:/, "ready");

        await t.step("direct: alice reaches the backend, bob is closed", async () => {
          const a = await tailnet.dial("alice", gw.ipv4, DIRECT + 32);
          await a.write(enc.encode("yo"));
          assert.equal(await readSome(a), "echo:yo");
          a.close();
          const b = await tailnet.dial("bob", gw.ipv4, DIRECT + 32);
          await b.write(enc.encode("yo")).catch(() => {});
          assert.equal(await readSome(b), null);
          try {
            b.close();
          } catch { /* closed */ }
        });

        await t.step("direct: a PROXY header sent by a client does not change who it is", async () => {
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
          try {
            b.close();
          } catch { /* closed */ }
          // alice's header claiming bob is only payload: she is allowed, and the backend gets the bytes.
          const a = await tailnet.dial("alice", gw.ipv4, DIRECT + 32);
          const header = forged(tailnet.node("bob").ipv4);
          await a.write(header);
          const got = await readSome(a);
          assert.ok(got?.startsWith("echo:"), String(got));
          a.close();
        });

        await t.step("direct: UDP echo for alice, nothing for bob", async () => {
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
          await directProxy.waitLog(/refused on .*dns.*no valid tailvoy rules/, "bob's UDP refused");
        });
      } finally {
        assert.equal(await directProxy.stop(), 0);
      }
    } finally {
      await tailnet.setPolicy(defaultPolicy());
      echo.close();
      backendA.close();
      backendB.close();
      udpEcho.close();
      await Deno.remove(dir, { recursive: true });
      await tailnet.release();
    }
  },
});
