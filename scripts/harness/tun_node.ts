/**
 * A tailnet node in kernel TUN mode, for tests of what a tailvoy beside such a tailscaled sees: plain
 * `connect()` into the tailnet, and callers arriving with their real tailnet addresses.
 *
 * The node runs in a network namespace of its own (`ip netns add`), so its `tailscale0` interface and
 * routes do not touch the suite's namespace, joined to it by a veth pair. headscale (control and the
 * embedded DERP) listens on 127.0.0.1 of the suite's namespace only: inside the node's namespace a
 * {@link ../netns_bridge.ts} listens on the same address and carries each connection over a unix socket
 * (a file, reachable from both namespaces) to this process, which connects to headscale. STUN is not
 * bridged: the node reaches its peers through DERP. Needs root and `/dev/net/tun`, and refuses to run
 * outside an isolated namespace (`deno task test`), where it would change the host's network.
 *
 * @module
 */

import { join } from "node:path";
import { LocalApiClient } from "../../lib/localapi/mod.ts";
import { sourceRunArgs } from "./cache.ts";
import { bridge } from "./netns_bridge.ts";
import { PEER_BINS, PROJECT_ROOT } from "./peers.ts";
import { isRunning } from "./procs.ts";
import {
  runOk,
  spawnLogged,
  type Tailnet,
  type TailnetNode,
  tailscaledEnv,
  tailscaleUp,
  waitFor,
} from "./tailnet.ts";

/** Interfaces of this module: veth ends are `tvt<id>h` (suite side) and `tvt<id>n` (node side). */
const IFACE_PREFIX = "tvt";

/** Options of {@link startTunNode}: the node's hostname and owner, as in {@link NodeSpec}. */
export interface TunNodeOptions {
  /** Hostname on the tailnet. */
  name: string;
  /** headscale user owning the node. Mutually exclusive with `tags`. */
  user?: string;
  /** Tags of a tag-owned node (must be in the policy's tagOwners). */
  tags?: string[];
}

/** A running TUN-mode node. */
export interface TunNode {
  name: string;
  /** The network namespace it runs in: `ip netns exec <netns> …` runs a command beside it. */
  netns: string;
  /** LocalAPI unix socket of its tailscaled (a file: usable from the suite's namespace). */
  socket: string;
  ipv4: string;
  ipv6: string;
  /** MagicDNS name, without the trailing dot. */
  fqdn: string;
  /** tailscaled's pid. */
  pid: number;
  /** The veth addresses: the suite's end and the node's end. */
  veth: { host: string; node: string };
  /** A command that runs `cmd args` inside the node's namespace. */
  command(cmd: string, args: string[], options?: Omit<Deno.CommandOptions, "args">): Deno.Command;
  /** Stops tailscaled and the bridge and deletes the namespace (and with it the veth pair). */
  close(): Promise<void>;
}

async function ip(args: string[]): Promise<string> {
  return await runOk("ip", args, `ip ${args.join(" ")}`);
}

/**
 * Throws unless this is a namespace of the suite's kind: root, `/dev/net/tun`, and no interfaces but
 * `lo` and this module's veths.
 */
async function checkIsolated(): Promise<void> {
  if (Deno.uid() !== 0) throw new Error("A TUN node needs root (network namespaces, veth, /dev/net/tun)");
  try {
    const tun = await Deno.stat("/dev/net/tun");
    if (!tun.isCharDevice) throw new Error("not a character device");
  } catch (err) {
    throw new Error(`A TUN node needs /dev/net/tun, which is missing here (${err}); load the tun module`);
  }
  const links = (await ip(["-o", "link", "show"])).trim().split("\n")
    .map((line) => line.split(":")[1]?.trim().split("@")[0] ?? "");
  const foreign = links.filter((name) => name !== "lo" && !name.startsWith(IFACE_PREFIX));
  if (foreign.length) {
    throw new Error(
      `A TUN node changes the network namespace it starts in; this one has ${
        foreign.join(", ")
      }: run the test with \`deno task test\` (an isolated namespace)`,
    );
  }
}

/** A /30 of 10.99.0.0/16 not on any interface yet, as [suite end, node end]. */
async function freeSubnet(): Promise<[string, string]> {
  const used = await ip(["-o", "-4", "addr", "show"]);
  for (let block = 0; block < 16384; block++) {
    const base = block * 4;
    const host = `10.99.${base >> 8}.${(base & 255) + 1}`;
    if (!used.includes(` ${host}/`)) return [host, `10.99.${base >> 8}.${(base & 255) + 2}`];
  }
  throw new Error("No free /30 left in 10.99.0.0/16 for a TUN node's veth pair");
}

/** Reads `child`'s stdout until a line equals `line`. */
async function waitForLine(child: Deno.ChildProcess, line: string, what: string): Promise<void> {
  const reader = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
  let seen = "";
  const timer = setTimeout(() => reader.cancel(), 15_000);
  try {
    while (!seen.split("\n").includes(line)) {
      const { value, done } = await reader.read();
      if (done) throw new Error(`${what} ended before printing "${line}" (output: ${seen.slice(0, 300)})`);
      seen += value;
    }
  } finally {
    clearTimeout(timer);
    reader.releaseLock();
  }
}

async function stop(child: Deno.ChildProcess): Promise<void> {
  try {
    child.kill("SIGTERM");
  } catch { /* already gone */ }
  const timer = setTimeout(() => {
    try {
      child.kill("SIGKILL");
    } catch { /* already gone */ }
  }, 3000);
  await child.status.catch(() => {});
  clearTimeout(timer);
}

/**
 * Starts a tailscaled in kernel TUN mode in a new network namespace, logs it in to `tailnet`'s headscale
 * and waits until it and every node of `tailnet` see each other through DERP.
 */
export async function startTunNode(tailnet: Tailnet, options: TunNodeOptions): Promise<TunNode> {
  await checkIsolated();
  const desc = tailnet.description;
  const id = crypto.randomUUID().slice(0, 8);
  const netns = `tailvoy-tun-${id}`;
  const [hostIface, nodeIface] = [`${IFACE_PREFIX}${id}h`, `${IFACE_PREFIX}${id}n`];
  const dir = join(desc.dir, `tun-${options.name}-${id}`);
  await Deno.mkdir(dir, { recursive: true });
  const socket = join(dir, "tailscaled.sock");
  const bridgeSocket = join(dir, "headscale.sock");
  const control = new URL(desc.serverUrl);
  const children: Deno.ChildProcess[] = [];
  let bridgeListener: Deno.Listener | undefined;
  let netnsAdded = false;

  const close = async () => {
    for (const child of children.reverse()) await stop(child);
    bridgeListener?.close();
    if (netnsAdded) await ip(["netns", "del", netns]).catch(() => {});
  };

  try {
    const [hostAddr, nodeAddr] = await freeSubnet();
    await ip(["netns", "add", netns]);
    netnsAdded = true;
    const inNs = (args: string[]) => ip(["netns", "exec", netns, "ip", ...args]);
    await inNs(["link", "set", "lo", "up"]);
    await ip(["link", "add", hostIface, "type", "veth", "peer", "name", nodeIface]);
    await ip(["link", "set", nodeIface, "netns", netns]);
    await ip(["addr", "add", `${hostAddr}/30`, "dev", hostIface]);
    await ip(["link", "set", hostIface, "up"]);
    await inNs(["addr", "add", `${nodeAddr}/30`, "dev", nodeIface]);
    await inNs(["link", "set", nodeIface, "up"]);

    // headscale as the node knows it (127.0.0.1:port) inside the namespace, through the unix socket.
    bridgeListener = Deno.listen({ transport: "unix", path: bridgeSocket });
    bridge(bridgeListener, () => Deno.connect({ hostname: control.hostname, port: Number(control.port) }))
      .catch(() => {});
    const bridgeChild = new Deno.Command("ip", {
      args: [
        "netns",
        "exec",
        netns,
        Deno.execPath(),
        ...sourceRunArgs(join(PROJECT_ROOT, "scripts", "harness", "netns_bridge.ts"), {
          permissions: ["--allow-net", "--allow-read", "--allow-write"],
        }),
        control.host,
        bridgeSocket,
      ],
      env: { DENO_NO_UPDATE_CHECK: "1" },
      stdin: "null",
      stdout: "piped",
      stderr: "inherit",
    }).spawn();
    children.push(bridgeChild);
    await waitForLine(bridgeChild, "ready", "the headscale bridge in the TUN node's namespace");
    bridgeChild.stdout.cancel().catch(() => {});

    const child = spawnLogged(children, "ip", [
      "netns",
      "exec",
      netns,
      PEER_BINS.tailscaled,
      "--tun=tailscale0",
      `--statedir=${dir}`,
      `--socket=${socket}`,
      "--port=0",
      "--no-logs-no-support",
    ], { env: tailscaledEnv(dir), logFile: join(dir, "tailscaled.log") });
    await waitFor(() => Deno.stat(socket).then(() => true), {
      what: `TUN tailscaled ${options.name} socket ${socket} (log: ${dir}/tailscaled.log)`,
      timeoutMs: 15_000,
    });
    const key = await tailnet.preauthKey({ user: options.user, tags: options.tags });
    // No iptables/nftables here, and the namespace needs no firewall of its own.
    await tailscaleUp(socket, {
      serverUrl: desc.serverUrl,
      key,
      hostname: options.name,
      extra: ["--netfilter-mode=off"],
    });

    using api = new LocalApiClient(socket, { timeoutMs: 3000 });
    const self = (await api.status()).Self;
    const ips = self?.TailscaleIPs ?? [];
    const node: TunNode = {
      name: options.name,
      netns,
      socket,
      ipv4: ips.find((a) => !a.includes(":")) ?? "",
      ipv6: ips.find((a) => a.includes(":")) ?? "",
      fqdn: (self?.DNSName ?? "").replace(/\.$/, ""),
      pid: child.pid,
      veth: { host: hostAddr, node: nodeAddr },
      command: (cmd, args, commandOptions = {}) =>
        new Deno.Command("ip", { ...commandOptions, args: ["netns", "exec", netns, cmd, ...args] }),
      close,
    };
    await waitMeshedWith(node, tailnet);
    return node;
  } catch (err) {
    await close();
    throw err;
  }
}

/** Waits until `node` has a home DERP and sees every running node of `tailnet`, and they see it. */
async function waitMeshedWith(node: TunNode, tailnet: Tailnet): Promise<void> {
  const others: TailnetNode[] = [];
  for (const other of Object.values(tailnet.nodes)) if (await isRunning(other.pid)) others.push(other);
  const sees = async (socket: string, ips: string[]) => {
    using api = new LocalApiClient(socket, { timeoutMs: 3000 });
    const st = await api.status({ peers: true });
    const reachable = new Set(
      Object.values(st.Peer).flatMap((p) => (p as { Relay?: string }).Relay ? p.TailscaleIPs : []),
    );
    const relay = (st.Self as { Relay?: string } | undefined)?.Relay;
    return Boolean(relay) && ips.every((addr) => reachable.has(addr));
  };
  await waitFor(async () => {
    if (!await sees(node.socket, others.map((o) => o.ipv4))) return undefined;
    for (const other of others) if (!await sees(other.socket, [node.ipv4])) return undefined;
    return true;
  }, { what: `TUN node ${node.name} and the tailnet to see each other`, timeoutMs: 45_000, intervalMs: 250 });
}
