/**
 * SIGHUP reload of the real proxy process against the real tailnet: an added listener starts while an
 * open flow on another keeps going; an invalid config is rejected and the running one stays.
 */

import assert from "node:assert/strict";
import { join } from "node:path";
import { LocalApiClient } from "../../lib/localapi/mod.ts";
import { Proxy, tcpEcho } from "../../scripts/harness/proxy.ts";
import { acquireTailnet, CAP, defaultPolicy, waitFor } from "../../scripts/harness/tailnet.ts";

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

Deno.test({
  name: "SIGHUP reload",
  sanitizeResources: false,
  sanitizeOps: false,
  fn: async (t) => {
    const tailnet = await acquireTailnet();
    const gw = tailnet.node("gw");
    const dir = await Deno.makeTempDir({ prefix: "tailvoy-reload-" });
    const echo = tcpEcho();
    using api = new LocalApiClient(gw.socket);
    const policy = defaultPolicy();
    policy.grants = [
      { src: ["*"], dst: ["*"], ip: ["*"] },
      { src: ["group:eng"], dst: ["tag:gw"], app: { [CAP]: [{ listeners: ["one", "two"] }] } },
    ];
    await tailnet.setPolicy(policy);
    const file = join(dir, "reload.yaml");
    const listener = (name: string, port: number) =>
      `  ${name}: {port: ${port}, protocol: tcp, backend: "127.0.0.1:${echo.port}"}\n`;
    const tail = `tailvoy:\n  ingress: direct\n  adminAddress: "127.0.0.1:0"\n`;
    await Deno.writeTextFile(file, `listeners:\n${listener("one", 17701)}${tail}`);
    const proxy = new Proxy(file, gw.socket);
    try {
      await waitFor(async () => {
        const caps = (await api.whois(tailnet.node("alice").ipv4)).CapMap[CAP];
        return JSON.stringify(caps) === JSON.stringify([{ listeners: ["one", "two"] }]) ? true : undefined;
      }, { what: "the reload test policy", timeoutMs: 15_000 });
      await proxy.waitLog(/"message":"ready:/, "ready");
      const open = await tailnet.dial("alice", gw.ipv4, 17701);
      assert.equal(await roundTrip(open, "a"), "echo:a");

      await t.step("an added listener starts; an open flow on another keeps going", async () => {
        await Deno.writeTextFile(
          file,
          `listeners:\n${listener("one", 17701)}${listener("two", 17702)}${tail}`,
        );
        proxy.child.kill("SIGHUP");
        await proxy.waitLog(/reloaded .*added \[\\"two\\"\].*kept \[\\"one\\"\]/, "reload summary");
        assert.equal(await roundTrip(open, "b"), "echo:b", "the open flow survived the reload");
        const two = await tailnet.dial("alice", gw.ipv4, 17702);
        assert.equal(await roundTrip(two, "c"), "echo:c");
        two.close();
      });

      await t.step("an invalid config is rejected and the running one stays", async () => {
        await Deno.writeTextFile(file, `listeners:\n  one: {port: 17701, protocol: tcpp}\n${tail}`);
        proxy.child.kill("SIGHUP");
        const line = await proxy.waitLog(/reload rejected/, "rejection");
        assert.match(line, /listeners\.one\.protocol/);
        assert.equal(await roundTrip(open, "d"), "echo:d");
        const two = await tailnet.dial("alice", gw.ipv4, 17702);
        assert.equal(await roundTrip(two, "e"), "echo:e");
        two.close();
        const admin = JSON.parse(await proxy.waitLog(/"logger":"tailvoy.admin"/, "admin")).addr;
        const metrics = await (await fetch(`http://${admin}/metrics`)).text();
        assert.match(metrics, /tailvoy_config_reloads_total\{result="ok"\} 1/);
        assert.match(metrics, /tailvoy_config_reloads_total\{result="invalid"\} 1/);
      });

      await t.step("a removed listener stops accepting", async () => {
        await Deno.writeTextFile(file, `listeners:\n${listener("one", 17701)}${tail}`);
        proxy.child.kill("SIGHUP");
        await proxy.waitLog(/reloaded .*removed \[\\"two\\"\]/, "removal");
        const two = await tailnet.dial("alice", gw.ipv4, 17702).catch(() => undefined);
        assert.equal(two ? await roundTrip(two, "f") : null, null);
        try {
          two?.close();
        } catch { /* closed */ }
      });
      open.close();
    } finally {
      const code = await proxy.stop();
      await tailnet.setPolicy(defaultPolicy());
      echo.close();
      await Deno.remove(dir, { recursive: true });
      await tailnet.release();
      assert.equal(code, 0, proxy.lines.slice(-5).join("\n"));
    }
  },
});
