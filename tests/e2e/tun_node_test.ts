/**
 * A tailscaled in kernel TUN mode (in a network namespace of its own, see scripts/harness/tun_node.ts)
 * joined to the tailnet in a box: its tailnet addresses are on `tailscale0`, a plain connect from its
 * namespace reaches alice's backend through the kernel (the TUN way of dialing into the tailnet), and a
 * listener on its tailnet address there is reached by alice, who is seen with her own tailnet address
 * (direct ingress in TUN mode: no 127.0.0.1 forward, no WhoIs mapping needed).
 */

import assert from "node:assert/strict";
import { LocalApiClient } from "../../lib/localapi/mod.ts";
import { acquireTailnet, waitFor } from "../../scripts/harness/tailnet.ts";
import { startTunNode, type TunNode } from "../../scripts/harness/tun_node.ts";

const enc = new TextEncoder();
const dec = new TextDecoder();

/** Runs `code` with `deno eval` inside the node's namespace; yields each JSON line it prints. */
function evalInside(node: TunNode, code: string) {
  const child = node.command(Deno.execPath(), ["eval", code], {
    env: { DENO_NO_UPDATE_CHECK: "1" },
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const lines = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
  let buffered = "";
  return {
    async next(): Promise<Record<string, unknown>> {
      while (!buffered.includes("\n")) {
        const { value, done } = await lines.read();
        if (done) {
          const err = dec.decode((await child.output().catch(() => undefined))?.stderr ?? new Uint8Array());
          throw new Error(`deno eval in ${node.netns} ended without output: ${err.slice(0, 500)}`);
        }
        buffered += value;
      }
      const nl = buffered.indexOf("\n");
      const line = buffered.slice(0, nl);
      buffered = buffered.slice(nl + 1);
      return JSON.parse(line);
    },
    async [Symbol.asyncDispose]() {
      try {
        child.kill("SIGKILL");
      } catch { /* exited */ }
      await lines.cancel().catch(() => {});
      await child.stderr.cancel().catch(() => {});
      await child.status;
    },
  };
}

Deno.test({
  name:
    "a kernel-TUN tailscaled in its own namespace: addresses on tailscale0, plain connect out, direct ingress",
  sanitizeResources: false,
  sanitizeOps: false,
  fn: async (t) => {
    const tailnet = await acquireTailnet();
    const alice = tailnet.node("alice");
    let tun: TunNode | undefined;
    try {
      tun = await startTunNode(tailnet, { name: "tun-gw", tags: ["tag:gw"] });
      const node = tun;

      await t.step("its tailnet addresses are on its tailscale0 interface", async () => {
        const out = dec.decode(
          (await node.command("ip", ["-o", "addr", "show", "dev", "tailscale0"]).output()).stdout,
        );
        assert.match(out, new RegExp(`inet ${node.ipv4.replaceAll(".", "\\.")}/32`));
        assert.match(out, new RegExp(`inet6 ${node.ipv6}/128`));
      });

      await t.step(
        "a plain connect from its namespace reaches alice's backend through the kernel",
        async () => {
          // Alice's userspace tailscaled forwards her address's port P to 127.0.0.1:P in the suite namespace.
          const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
          const port = (listener.addr as Deno.NetAddr).port;
          try {
            const served = (async () => {
              const conn = await listener.accept();
              const buf = new Uint8Array(100);
              const n = await conn.read(buf);
              const remote = conn.remoteAddr as Deno.NetAddr;
              using aliceApi = new LocalApiClient(alice.socket, { timeoutMs: 3000 });
              const who = await waitFor(() => aliceApi.whois(`127.0.0.1:${remote.port}`, { proto: "tcp" }), {
                what: "alice's WhoIs of the connection from the TUN node",
                timeoutMs: 3000,
              });
              await conn.write(enc.encode(`echo:${dec.decode(buf.subarray(0, n ?? 0))}`));
              conn.close();
              return who.Node.Name;
            })();
            await using script = evalInside(
              node,
              `const c = await Deno.connect({ hostname: "${alice.ipv4}", port: ${port} });
             await c.write(new TextEncoder().encode("from the TUN node"));
             const b = new Uint8Array(100); const n = await c.read(b);
             console.log(JSON.stringify({ local: c.localAddr.hostname, got: new TextDecoder().decode(b.subarray(0, n ?? 0)) }));`,
            );
            // The kernel routed it through tailscale0: its source is the node's tailnet address.
            assert.deepEqual(await script.next(), { local: node.ipv4, got: "echo:from the TUN node" });
            assert.equal(await served, `${node.fqdn}.`);
          } finally {
            listener.close();
          }
        },
      );

      await t.step(
        "a listener on its tailnet address is reached by alice, seen with her tailnet address",
        async () => {
          await using script = evalInside(
            node,
            `const l = Deno.listen({ hostname: "${node.ipv4}", port: 0 });
           console.log(JSON.stringify({ port: l.addr.port }));
           const c = await l.accept();
           console.log(JSON.stringify({ remote: c.remoteAddr.hostname }));
           await c.write(new TextEncoder().encode("hello from the TUN node"));
           c.close();`,
          );
          const { port } = await script.next() as { port: number };
          const conn = await tailnet.dial("alice", node.ipv4, port);
          try {
            assert.deepEqual(await script.next(), { remote: alice.ipv4 });
            const buf = new Uint8Array(100);
            const n = await conn.read(buf);
            assert.equal(dec.decode(buf.subarray(0, n ?? 0)), "hello from the TUN node");
          } finally {
            conn.close();
          }
        },
      );
    } finally {
      await tun?.close();
      await tailnet.release();
    }
  },
});
