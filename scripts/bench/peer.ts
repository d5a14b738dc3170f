/**
 * The serve-ingress peer check: what asking the kernel who opened a connection (`lib/sockdiag/`, one
 * exact netlink lookup) costs per accept with 10k loopback connections open, against reading
 * `/proc/net/tcp` once (what a scan-based check would do per accept). Goal: ≤ 20 µs per lookup.
 *
 * The other ends of the connections live in a child process (its own fd limit), so this process holds
 * one end of each.
 *
 * @module
 */

import { join } from "node:path";
import { SockDiag } from "../../lib/sockdiag/mod.ts";
import { sourceRunArgs } from "../harness/cache.ts";
import { PROJECT_ROOT } from "../harness/peers.ts";
import { closeQuietly } from "../../lib/util/async.ts";

/** Options of {@link benchPeer}. */
export interface BenchPeerOptions {
  /** Fewer connections and lookups. */
  quick?: boolean;
}

const GOAL_US = 20;

// The child: opens `count` connections to the port on stdin's first line, says "ok", holds them.
const CHILD = `
const [port, count] = (await new Response(Deno.stdin.readable).text()).trim().split(" ").map(Number);
const conns = [];
for (let i = 0; i < count; i++) conns.push(await Deno.connect({ hostname: "127.0.0.1", port }));
console.log("ok");
setInterval(() => {}, 1 << 30); // held until killed
`;

/** Runs the peer-check section and prints its rows. */
export async function benchPeer(options: BenchPeerOptions = {}): Promise<void> {
  const count = options.quick ? 2_000 : 10_000;
  const lookups = options.quick ? 20_000 : 100_000;
  console.log(
    `\n# serve-ingress peer check: kernel socket diagnostics by 4-tuple, ${count} connections open`,
  );
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const dir = await Deno.makeTempDir({ prefix: "tailvoy-bench-peer-" });
  const script = join(dir, "child.ts");
  await Deno.writeTextFile(script, CHILD);
  const child = new Deno.Command(Deno.execPath(), {
    args: sourceRunArgs(script, { permissions: ["--allow-net"] }),
    cwd: PROJECT_ROOT,
    stdin: "piped",
    stdout: "piped",
    stderr: "inherit",
  }).spawn();
  const accepted: Deno.Conn[] = [];
  const diag = SockDiag.open();
  try {
    const accepting = (async () => {
      for await (const conn of listener) {
        accepted.push(conn);
        if (accepted.length === count) return;
      }
    })();
    const writer = child.stdin.getWriter();
    await writer.write(new TextEncoder().encode(`${listener.addr.port} ${count}\n`));
    await writer.close();
    await accepting;
    const sample = accepted[accepted.length - 1];
    const peer = sample.remoteAddr as Deno.NetAddr;
    const local = { ip: "127.0.0.1", port: listener.addr.port };
    const owner = diag.tcpOwner({ ip: peer.hostname, port: peer.port }, local);
    if (owner?.uid !== Deno.uid()) throw new Error(`lookup answered ${JSON.stringify(owner)}`);
    const t0 = performance.now();
    for (let i = 0; i < lookups; i++) {
      const p = accepted[i % accepted.length].remoteAddr as Deno.NetAddr;
      diag.tcpOwner({ ip: p.hostname, port: p.port }, local);
    }
    const perLookupUs = (performance.now() - t0) * 1000 / lookups;
    const s0 = performance.now();
    const scans = options.quick ? 20 : 50;
    let bytes = 0;
    for (let i = 0; i < scans; i++) bytes += (await Deno.readFile("/proc/net/tcp")).length;
    const perScanUs = (performance.now() - s0) * 1000 / scans;
    console.log(
      `sock_diag lookup by 4-tuple            ${
        perLookupUs.toFixed(1).padStart(8)
      } µs   (${lookups} lookups)`,
    );
    console.log(
      `baseline: read /proc/net/tcp once      ${perScanUs.toFixed(0).padStart(8)} µs   (${
        Math.round(bytes / scans / 1024)
      } KiB; a scan per accept)   lookup = ${(perScanUs / perLookupUs).toFixed(0)}x faster`,
    );
    console.log(
      `${
        perLookupUs <= GOAL_US ? "PASS" : "MISS"
      }  ≤ ${GOAL_US} µs per accept at ${count} open connections   measured ${perLookupUs.toFixed(1)} µs`,
    );
  } finally {
    diag.close();
    for (const c of accepted) c.close();
    closeQuietly(listener);
    try {
      child.kill("SIGKILL");
    } catch { /* exited */ }
    await child.status;
    await child.stdout.cancel();
    await Deno.remove(dir, { recursive: true });
  }
}
