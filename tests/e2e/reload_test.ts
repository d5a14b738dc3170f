/**
 * SIGHUP reload of the real proxy process against the real tailnet: an added listener starts while an
 * open flow on another keeps going; an invalid config is rejected and the running one stays.
 */

import assert from "node:assert/strict";
import { join } from "node:path";
import { LocalApiClient } from "../../lib/localapi/mod.ts";
import { closeQuietly } from "../../lib/util/async.ts";
import { fixture, tailnetFixture, tempDir } from "../../scripts/harness/fixture.ts";
import { Proxy, tcpEcho } from "../../scripts/harness/proxy.ts";
import { CAP, defaultPolicy, waitFor } from "../../scripts/harness/tailnet.ts";

const enc = new TextEncoder();
const dec = new TextDecoder();

async function roundTrip(conn: Deno.Conn, text: string): Promise<string | null> {
  await conn.write(enc.encode(text));
  const buf = new Uint8Array(256);
  try {
    const n = await conn.read(buf);
    return n === null ? null : dec.decode(buf.subarray(0, n));
  } catch {
    return null;
  }
}

Deno.test.sanitizer({ ops: false, resources: false });

const PORTS: Record<string, number> = { one: 17701, two: 17702 };
const TAIL = `tailvoy:\n  ingress: direct\n  adminAddress: "127.0.0.1:0"\n`;

const tailnetOnce = tailnetFixture();

/** The tailnet with this file's policy (alice may use one and two), seen by the gateway. */
async function reloadTailnet() {
  const tailnet = await tailnetOnce();
  const policy = defaultPolicy();
  policy.grants = [
    { src: ["*"], dst: ["*"], ip: ["*"] },
    { src: ["group:eng"], dst: ["tag:gw"], app: { [CAP]: [{ listeners: ["one", "two"] }] } },
  ];
  await tailnet.usePolicy(policy);
  using api = new LocalApiClient(tailnet.node("gw").socket);
  await waitFor(async () => {
    const caps = (await api.whois(tailnet.node("alice").ipv4)).CapMap[CAP];
    return JSON.stringify(caps) === JSON.stringify([{ listeners: ["one", "two"] }]) ? true : undefined;
  }, { what: "the reload test policy", timeoutMs: 15_000 });
  return tailnet;
}

/** The proxy, started with listener one, and alice's flow on it, kept open through every test. */
const proxyOnce = fixture(async (cleanup) => {
  const tailnet = await reloadTailnet();
  const gw = tailnet.node("gw");
  const dir = await tempDir(cleanup, "tailvoy-reload-");
  const echo = tcpEcho();
  cleanup.defer(() => echo.close());
  const file = join(dir, "reload.yaml");
  const configOf = (names: string[]) =>
    `listeners:\n${
      names.map((n) => `  ${n}: {port: ${PORTS[n]}, protocol: tcp, backend: "127.0.0.1:${echo.port}"}\n`)
        .join("")
    }${TAIL}`;
  await Deno.writeTextFile(file, configOf(["one"]));
  const proxy = new Proxy(file, gw.socket);
  cleanup.defer(async () => void await proxy.stop());
  await proxy.waitLog(/"message":"ready:/, "ready");
  const open = await tailnet.dial("alice", gw.ipv4, PORTS.one);
  cleanup.defer(() => closeQuietly(open));
  assert.equal(await roundTrip(open, "a"), "echo:a");
  // The listeners the proxy runs now.
  let running = ["one"];
  /** Writes `config` (or the config with `names`), sends SIGHUP, and returns the proxy's answer line. */
  const reload = async (config: string | string[]) => {
    await Deno.writeTextFile(file, typeof config === "string" ? config : configOf(config));
    const seen = proxy.lines.length;
    proxy.child.kill("SIGHUP");
    const line = await waitFor(
      () => proxy.lines.slice(seen).find((l) => /reloaded|reload rejected/.test(l)),
      {
        what: "proxy log: the reload's outcome",
        timeoutMs: 20_000,
      },
    );
    if (typeof config !== "string" && /reloaded/.test(line)) running = config;
    return line;
  };
  /** Runs `names` (by a reload when the proxy runs others). */
  const runs = async (names: string[]) => {
    if (JSON.stringify(running) !== JSON.stringify(names)) assert.match(await reload(names), /reloaded/);
  };
  const admin = JSON.parse(await proxy.waitLog(/"logger":"tailvoy.admin"/, "admin")).addr;
  /** The reload counter of `result` in /metrics. */
  const reloads = async (result: string) => {
    const metrics = await (await fetch(`http://${admin}/metrics`)).text();
    return Number(
      new RegExp(`tailvoy_config_reloads_total\\{result="${result}"\\} (\\d+)`).exec(metrics)?.[1] ?? 0,
    );
  };
  return { proxy, open, reload, runs, reloads };
});

/** The running proxy with this file's policy in place, and a connection from alice to a listener. */
async function gateway() {
  const p = await proxyOnce();
  const tailnet = await reloadTailnet();
  const dial = (name: string) => tailnet.dial("alice", tailnet.node("gw").ipv4, PORTS[name]);
  return { ...p, dial };
}

Deno.test("SIGHUP reload: an added listener starts; an open flow on another keeps going", async () => {
  const { open, reload, runs, reloads, dial } = await gateway();
  await runs(["one"]);
  const ok = await reloads("ok");
  assert.match(await reload(["one", "two"]), /reloaded .*added \[\\"two\\"\].*kept \[\\"one\\"\]/);
  assert.equal(await roundTrip(open, "b"), "echo:b", "the open flow survived the reload");
  const two = await dial("two");
  assert.equal(await roundTrip(two, "c"), "echo:c");
  two.close();
  assert.equal(await reloads("ok"), ok + 1, "counted in /metrics");
});

Deno.test("SIGHUP reload: an invalid config is rejected and the running one stays", async () => {
  const { open, reload, runs, reloads, dial } = await gateway();
  await runs(["one", "two"]);
  const [ok, invalid] = [await reloads("ok"), await reloads("invalid")];
  const line = await reload(`listeners:\n  one: {port: 17701, protocol: tcpp}\n${TAIL}`);
  assert.match(line, /reload rejected/);
  assert.match(line, /listeners\.one\.protocol/);
  assert.equal(await roundTrip(open, "d"), "echo:d");
  const two = await dial("two");
  assert.equal(await roundTrip(two, "e"), "echo:e");
  two.close();
  assert.equal(await reloads("invalid"), invalid + 1, "counted in /metrics as invalid");
  assert.equal(await reloads("ok"), ok, "and not as ok");
});

Deno.test("SIGHUP reload: a removed listener stops accepting", async () => {
  const { reload, runs, dial } = await gateway();
  await runs(["one", "two"]);
  assert.match(await reload(["one"]), /reloaded .*removed \[\\"two\\"\]/);
  const two = await dial("two").catch(() => undefined);
  assert.equal(two ? await roundTrip(two, "f") : null, null);
  try {
    two?.close();
  } catch { /* closed */ }
});

Deno.test("SIGHUP reload: the proxy exits 0 on SIGTERM", async () => {
  const { proxy, open } = await gateway();
  closeQuietly(open); // else SIGTERM waits for it to drain
  assert.equal(await proxy.stop(), 0, proxy.lines.slice(-5).join("\n"));
});
