/**
 * Tailnet in a box: a real headscale control server (embedded DERP and STUN on 127.0.0.1, sqlite in a
 * temp dir, a grants policy file) and real `tailscaled --tun=userspace-networking` nodes logged in with
 * pre-auth keys, all on loopback, with every phone-home path turned off.
 *
 * `deno task test` starts one tailnet for the whole suite (inside a network namespace with only `lo`)
 * and hands its description to the test processes through `TAILVOY_TEST_TAILNET`; a test file run on its
 * own starts a private one. Either way tests use {@link acquireTailnet} and {@link Tailnet.release}.
 *
 * @module
 */

import { join } from "node:path";
import { allocatePorts } from "../../lib/envoy/process.ts";
import { LocalApiClient } from "../../lib/localapi/mod.ts";
import { PEER_BINS } from "./peers.ts";
import { isRunning } from "./procs.ts";
import { socks5Connect, socks5UdpAssociate, type UdpAssociation } from "./socks5.ts";
import { delay } from "../../lib/util/async.ts";

/**
 * A capability {@link Tailnet.setPolicy} grants to everyone with a fresh value each time, to see when a
 * node has received the new policy. tailvoy ignores it (it reads only its own capabilities).
 */
export const GENERATION_CAP = "tailvoy.test/cap/policy-generation";

/** The capability tailvoy reads, as used in test policies. */
export const CAP = "rajsingh.info/cap/tailvoy";

/** One node to start: a user's device (`user`) or a tagged device (`tags`). */
export interface NodeSpec {
  /** Hostname, also the key in {@link Tailnet.nodes}. */
  name: string;
  /** headscale user owning the node (created if missing). Mutually exclusive with `tags`. */
  user?: string;
  /** Tags for a tag-owned node, e.g. `["tag:gw"]`. */
  tags?: string[];
}

/** A running node. */
export interface TailnetNode {
  name: string;
  user?: string;
  tags: string[];
  /** LocalAPI unix socket of this node's tailscaled. */
  socket: string;
  /** tailscaled's SOCKS5 listener on 127.0.0.1 (also its HTTP proxy when the tailnet has `httpProxy`). */
  socksPort: number;
  ipv4: string;
  ipv6: string;
  /** MagicDNS name, without the trailing dot. */
  fqdn: string;
  pid: number;
}

/** What another process needs to use a running tailnet (JSON-serialisable). */
export interface TailnetDescription {
  dir: string;
  serverUrl: string;
  headscaleConfig: string;
  headscalePid: number;
  policyPath: string;
  nodes: Record<string, TailnetNode>;
  pids: number[];
  /** Milliseconds from start to all nodes seeing each other. */
  startupMs: number;
  /** Whether every tailscaled also serves its outbound HTTP proxy on its SOCKS5 port. */
  httpProxy?: boolean;
}

/** Tailnet policy (HuJSON subset: plain JSON), as headscale reads it. */
export type Policy = Record<string, unknown>;

/** The default test policy: users alice and bob, group eng, tags gw and ci, and tailvoy app grants. */
export function defaultPolicy(): Policy {
  return {
    groups: { "group:eng": ["alice@"] },
    tagOwners: { "tag:gw": ["alice@"], "tag:ci": ["alice@"] },
    grants: [
      // Network reachability for everyone; tailvoy decides per listener.
      { src: ["*"], dst: ["*"], ip: ["*"] },
      {
        src: ["group:eng"],
        dst: ["tag:gw"],
        app: { [CAP]: [{ listeners: ["web"], routes: ["/api/*"] }, { listeners: ["db"] }] },
      },
      { src: ["tag:ci"], dst: ["tag:gw"], app: { [CAP]: [{ listeners: ["db"], methods: ["GET"] }] } },
    ],
    // Captive-portal detection would probe Tailscale's public hosts.
    nodeAttrs: [{ target: ["*"], attr: ["disable-captive-portal-detection"] }],
  };
}

/** The default node set: a tagged gateway, two users, and a tagged CI client. */
export const DEFAULT_NODES: NodeSpec[] = [
  { name: "gw", tags: ["tag:gw"] },
  { name: "alice", user: "alice" },
  { name: "bob", user: "bob" },
  { name: "ci", tags: ["tag:ci"] },
];

// Below the ephemeral range, so no outgoing connection can take it before the peer binds it.
function freePort(): number {
  return allocatePorts(["port"]).get("port")!;
}

/** Runs `cmd` to completion; resolves to its stdout, or throws with its stderr when it fails. */
export async function runOk(cmd: string, args: string[], what: string): Promise<string> {
  const out = await new Deno.Command(cmd, { args, stdin: "null" }).output();
  const dec = new TextDecoder();
  if (!out.success) {
    throw new Error(
      `${what} failed (exit ${out.code}): ${dec.decode(out.stderr).trim() || dec.decode(out.stdout)}`,
    );
  }
  return dec.decode(out.stdout);
}

/** `tailscale up` against the box's headscale with `key`, no DNS or routes taken; `extra` flags appended. */
export async function tailscaleUp(
  socket: string,
  options: { serverUrl: string; key: string; hostname: string; extra?: string[] },
): Promise<void> {
  await runOk(PEER_BINS.tailscale, [
    `--socket=${socket}`,
    "up",
    `--login-server=${options.serverUrl}`,
    `--auth-key=${options.key}`,
    `--hostname=${options.hostname}`,
    "--accept-dns=false",
    "--accept-routes=false",
    ...options.extra ?? [],
    "--timeout=30s",
  ], `tailscale up for ${options.hostname}`);
}

/** Polls `fn` every `intervalMs` until it returns a non-undefined value or `timeoutMs` passes. */
export async function waitFor<T>(
  fn: () => Promise<T | undefined> | T | undefined,
  options: { timeoutMs?: number; intervalMs?: number; what: string },
): Promise<T> {
  const deadline = Date.now() + (options.timeoutMs ?? 30_000);
  let last: unknown;
  while (true) {
    try {
      const v = await fn();
      if (v !== undefined) return v;
    } catch (err) {
      last = err;
    }
    if (Date.now() > deadline) {
      throw new Error(`Timed out waiting for ${options.what}${last ? `: ${last}` : ""}`);
    }
    await delay(options.intervalMs ?? 100);
  }
}

// Environment that keeps tailscaled on loopback and quiet: no log upload, no portmapper (UPnP/NAT-PMP to
// the LAN gateway), DERP over plain HTTP to headscale's embedded server, no update or version checks.
/** Environment of every test tailscaled: quiet, on loopback, logs under `logsDir`. */
export function tailscaledEnv(logsDir: string): Record<string, string> {
  return {
    TS_NO_LOGS_NO_SUPPORT: "true",
    TS_LOGS_DIR: logsDir,
    TS_DISABLE_PORTMAPPER: "1",
    TS_DEBUG_USE_DERP_HTTP: "1",
    TS_ASSUME_NETWORK_UP_FOR_TEST: "1",
    TS_PANIC_IF_HIT_MAIN_CONTROL: "1",
    TS_DISABLE_UPNP: "true",
    TS_NO_SERVE_CONFIG_UPDATE_CHECK: "1",
    HOME: logsDir,
  };
}

function headscaleConfig(dir: string, ports: Record<string, number>): string {
  // JSON is valid YAML; headscale reads it with viper.
  return JSON.stringify(
    {
      server_url: `http://127.0.0.1:${ports.http}`,
      listen_addr: `127.0.0.1:${ports.http}`,
      metrics_listen_addr: `127.0.0.1:${ports.metrics}`,
      grpc_listen_addr: `127.0.0.1:${ports.grpc}`,
      grpc_allow_insecure: false,
      noise: { private_key_path: join(dir, "noise_private.key") },
      prefixes: { v4: "100.64.0.0/10", v6: "fd7a:115c:a1e0::/48", allocation: "sequential" },
      derp: {
        server: {
          enabled: true,
          region_id: 999,
          region_code: "box",
          region_name: "Tailnet in a box",
          stun_listen_addr: `127.0.0.1:${ports.stun}`,
          private_key_path: join(dir, "derp_server_private.key"),
          automatically_add_embedded_derp_region: true,
          ipv4: "127.0.0.1",
        },
        urls: [],
        paths: [],
        auto_update_enabled: false,
      },
      disable_check_updates: true,
      node: { ephemeral: { inactivity_timeout: "30m" } },
      database: { type: "sqlite", sqlite: { path: join(dir, "db.sqlite"), write_ahead_log: true } },
      log: { level: "warn", format: "text" },
      policy: { mode: "file", path: join(dir, "policy.json") },
      dns: {
        magic_dns: true,
        base_domain: "box.test",
        override_local_dns: false,
        nameservers: { global: [], split: {} },
        search_domains: [],
        extra_records: [],
      },
      unix_socket: join(dir, "headscale.sock"),
      unix_socket_permission: "0770",
      logtail: { enabled: false },
      taildrop: { enabled: false },
      tuning: { batch_change_delay: "100ms" },
    },
    null,
    2,
  );
}

/** Starts `cmd` with its output appended to `options.logFile`, and adds it to `children`. */
export function spawnLogged(
  children: Deno.ChildProcess[],
  cmd: string,
  args: string[],
  options: { env?: Record<string, string>; logFile: string },
): Deno.ChildProcess {
  const file = Deno.openSync(options.logFile, { write: true, create: true, append: true });
  const child = new Deno.Command(cmd, {
    args,
    env: options.env,
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  })
    .spawn();
  // Logs go to files so a failing test can show them; pipes must be drained or children block.
  const sink = () => new WritableStream<Uint8Array>({ write: (c) => void file.writeSync(c) });
  Promise.allSettled([child.stdout.pipeTo(sink()), child.stderr.pipeTo(sink())]).finally(() => file.close());
  children.push(child);
  return child;
}

function headscaleCli(configPath: string, ...args: string[]): Promise<string> {
  return runOk(PEER_BINS.headscale, ["-c", configPath, ...args, "-o", "json"], `headscale ${args.join(" ")}`);
}

async function userId(configPath: string, user: string): Promise<string> {
  const users = JSON.parse(await headscaleCli(configPath, "users", "list")) as {
    id: string | number;
    name: string;
  }[];
  const found = (users ?? []).find((u) => u.name === user);
  if (found) return String(found.id);
  const created = JSON.parse(await headscaleCli(configPath, "users", "create", user)) as {
    id: string | number;
  };
  return String(created.id);
}

interface ControlInfo {
  dir: string;
  serverUrl: string;
  headscaleConfig: string;
  httpProxy?: boolean;
}

function tailscaledArgs(
  nodeDir: string,
  socket: string,
  options: { socksPort: number; httpProxy?: boolean },
): string[] {
  const proxy = `127.0.0.1:${options.socksPort}`;
  return [
    "--tun=userspace-networking",
    `--statedir=${nodeDir}`,
    `--socket=${socket}`,
    "--port=0",
    `--socks5-server=${proxy}`,
    // The same address: tailscaled serves both on one port, told apart by the first byte.
    ...options.httpProxy ? [`--outbound-http-proxy-listen=${proxy}`] : [],
    "--no-logs-no-support",
  ];
}

// Starts one tailscaled and logs it in with a fresh pre-auth key (user- or tag-owned).
async function launchNode(
  control: ControlInfo,
  spec: NodeSpec,
  children: Deno.ChildProcess[],
): Promise<TailnetNode> {
  const keyArgs = ["preauthkeys", "create", "--expiration", "1h"];
  if (spec.user) keyArgs.push("--user", await userId(control.headscaleConfig, spec.user));
  if (spec.tags?.length) keyArgs.push("--tags", spec.tags.join(","));
  const key = (JSON.parse(await headscaleCli(control.headscaleConfig, ...keyArgs)) as { key: string }).key;
  const nodeDir = join(control.dir, spec.name);
  await Deno.mkdir(nodeDir, { recursive: true });
  const socket = join(nodeDir, "tailscaled.sock");
  const socksPort = freePort();
  const args = tailscaledArgs(nodeDir, socket, { socksPort, httpProxy: control.httpProxy });
  const child = spawnLogged(children, PEER_BINS.tailscaled, args, {
    env: tailscaledEnv(nodeDir),
    logFile: join(nodeDir, "tailscaled.log"),
  });
  await waitFor(() => Deno.stat(socket).then(() => true), {
    what: `tailscaled ${spec.name} socket ${socket}`,
    timeoutMs: 15_000,
  });
  await tailscaleUp(socket, { serverUrl: control.serverUrl, key, hostname: spec.name });
  const status = JSON.parse(
    await runOk(PEER_BINS.tailscale, [`--socket=${socket}`, "status", "--json", "--peers=false"], "status"),
  ) as { Self: { TailscaleIPs: string[]; DNSName: string } };
  const ips = status.Self.TailscaleIPs;
  return {
    name: spec.name,
    user: spec.user,
    tags: spec.tags ?? [],
    socket,
    socksPort,
    ipv4: ips.find((ip) => !ip.includes(":"))!,
    ipv6: ips.find((ip) => ip.includes(":"))!,
    fqdn: status.Self.DNSName.replace(/\.$/, ""),
    pid: child.pid,
  };
}

// A peer is reachable once its home DERP is known (netcheck takes a few seconds after login); before
// that the first WireGuard handshake is dropped and retried only 5 s later.
async function waitMeshed(node: TailnetNode, others: TailnetNode[]): Promise<void> {
  await waitFor(async () => {
    const st = JSON.parse(
      await runOk(PEER_BINS.tailscale, [`--socket=${node.socket}`, "status", "--json"], "status"),
    ) as { Self?: { Relay?: string }; Peer?: Record<string, { TailscaleIPs: string[]; Relay?: string }> };
    const seen = new Set(Object.values(st.Peer ?? {}).flatMap((p) => p.Relay ? p.TailscaleIPs : []));
    const ready = Boolean(st.Self?.Relay) && others.every((o) => o === node || seen.has(o.ipv4));
    return ready ? true : undefined;
  }, {
    what: `node ${node.name} to see its peers and pick its home DERP`,
    timeoutMs: 30_000,
    intervalMs: 200,
  });
}

/** A running tailnet in a box. */
export class Tailnet {
  /** The running nodes by name. */
  readonly nodes: Record<string, TailnetNode>;
  readonly #desc: TailnetDescription;
  readonly #owned: boolean;
  // Processes this object started (all of them if it owns the tailnet; added nodes otherwise).
  readonly #children: Deno.ChildProcess[];
  readonly #bare = new Map<string, { socket: string; socksPort: number; pid: number }>();

  private constructor(desc: TailnetDescription, owned: boolean, children: Deno.ChildProcess[] = []) {
    this.#desc = desc;
    this.nodes = { ...desc.nodes };
    this.#owned = owned;
    this.#children = children;
  }

  /** The description another process can {@link Tailnet.attach} to. */
  get description(): TailnetDescription {
    return this.#desc;
  }

  /** The node named `name`; throws if there is none. */
  node(name: string): TailnetNode {
    const n = this.nodes[name];
    if (!n) {
      throw new Error(`No node "${name}" in this tailnet (have: ${Object.keys(this.nodes).join(", ")})`);
    }
    return n;
  }

  /** Uses a tailnet started by another process. {@link release} leaves it running. */
  static attach(desc: TailnetDescription): Tailnet {
    return new Tailnet(desc, false);
  }

  /**
   * Starts headscale and one tailscaled per node, logs the nodes in, and waits until every node sees
   * every other node. On any failure everything started so far is torn down. `httpProxy`: every
   * tailscaled also serves `--outbound-http-proxy-listen` on its SOCKS5 port (for the egress bench).
   */
  static async start(
    options: { nodes?: NodeSpec[]; policy?: Policy; httpProxy?: boolean; log?: (msg: string) => void } = {},
  ): Promise<Tailnet> {
    const t0 = performance.now();
    const specs = options.nodes ?? DEFAULT_NODES;
    const log = options.log ?? (() => {});
    const dir = await Deno.makeTempDir({ prefix: "tailvoy-tailnet-" });
    const children: Deno.ChildProcess[] = [];
    try {
      const ports = { http: freePort(), metrics: freePort(), grpc: freePort(), stun: 0 };
      ports.stun = freePort();
      const configPath = join(dir, "headscale.yaml");
      const policyPath = join(dir, "policy.json");
      await Deno.writeTextFile(configPath, headscaleConfig(dir, ports));
      await Deno.writeTextFile(policyPath, JSON.stringify(options.policy ?? defaultPolicy(), null, 2));
      const hs = spawnLogged(children, PEER_BINS.headscale, ["-c", configPath, "serve"], {
        logFile: join(dir, "headscale.log"),
      });
      const serverUrl = `http://127.0.0.1:${ports.http}`;
      await waitFor(async () => {
        const r = await fetch(`${serverUrl}/health`).catch(() => undefined);
        await r?.body?.cancel();
        return r?.ok ? true : undefined;
      }, {
        what: `headscale at ${serverUrl} to answer /health (log: ${dir}/headscale.log)`,
        timeoutMs: 20_000,
      });
      log(`headscale up in ${Math.round(performance.now() - t0)} ms`);

      const control: ControlInfo = {
        dir,
        serverUrl,
        headscaleConfig: configPath,
        httpProxy: options.httpProxy,
      };
      // Users first: concurrent creation of the same user would race.
      for (const user of new Set(specs.flatMap((s) => s.user ? [s.user] : []))) {
        await userId(configPath, user);
      }
      const started = await Promise.all(specs.map((spec) => launchNode(control, spec, children)));
      const nodes = Object.fromEntries(started.map((n) => [n.name, n]));
      log(`${specs.length} nodes logged in after ${Math.round(performance.now() - t0)} ms`);
      for (const node of started) await waitMeshed(node, started);
      const desc: TailnetDescription = {
        ...control,
        headscalePid: hs.pid,
        policyPath,
        nodes,
        pids: children.map((c) => c.pid),
        startupMs: Math.round(performance.now() - t0),
      };
      log(`tailnet ready in ${desc.startupMs} ms`);
      return new Tailnet(desc, true, children);
    } catch (err) {
      await stopAll(children);
      await Deno.remove(dir, { recursive: true }).catch(() => {});
      throw err;
    }
  }

  /**
   * Adds a node to the running tailnet (also when attached) and waits until it and the existing nodes
   * see each other. It is stopped by {@link release}.
   */
  async addNode(spec: NodeSpec): Promise<TailnetNode> {
    if (this.nodes[spec.name]) throw new Error(`Node "${spec.name}" already exists`);
    const node = await launchNode(this.#desc, spec, this.#children);
    this.nodes[spec.name] = node;
    const all = Object.values(this.nodes);
    for (const n of all) await waitMeshed(n, all);
    return node;
  }

  /** A fresh pre-auth key (valid 1 h) for a user's node or a tagged node. */
  async preauthKey(spec: { user?: string; tags?: string[] }): Promise<string> {
    const cfg = this.#desc.headscaleConfig;
    const args = ["preauthkeys", "create", "--expiration", "1h"];
    if (spec.user) args.push("--user", await userId(cfg, spec.user));
    if (spec.tags?.length) args.push("--tags", spec.tags.join(","));
    return (JSON.parse(await headscaleCli(cfg, ...args)) as { key: string }).key;
  }

  /**
   * Starts a tailscaled that is NOT logged in (for tests of tailvoy logging it in). Once something
   * has logged it in, {@link adoptNode} makes it a full node of this tailnet.
   */
  async startBareNode(name: string): Promise<{ socket: string; pid: number; serverUrl: string }> {
    const nodeDir = join(this.#desc.dir, name);
    await Deno.mkdir(nodeDir, { recursive: true });
    const socket = join(nodeDir, "tailscaled.sock");
    const socksPort = freePort();
    const child = spawnLogged(
      this.#children,
      PEER_BINS.tailscaled,
      tailscaledArgs(nodeDir, socket, { socksPort, httpProxy: this.#desc.httpProxy }),
      {
        env: tailscaledEnv(nodeDir),
        logFile: join(nodeDir, "tailscaled.log"),
      },
    );
    await waitFor(() => Deno.stat(socket).then(() => true), {
      what: `tailscaled ${name} socket`,
      timeoutMs: 15_000,
    });
    this.#bare.set(name, { socket, socksPort, pid: child.pid });
    return { socket, pid: child.pid, serverUrl: this.#desc.serverUrl };
  }

  /** Registers a bare node that has been logged in, and waits until it and the others are meshed. */
  async adoptNode(name: string): Promise<TailnetNode> {
    const bare = this.#bare.get(name);
    if (!bare) throw new Error(`No bare node "${name}"; start it with startBareNode`);
    const status = JSON.parse(
      await runOk(
        PEER_BINS.tailscale,
        [`--socket=${bare.socket}`, "status", "--json", "--peers=false"],
        "status",
      ),
    ) as { Self: { TailscaleIPs: string[]; DNSName: string; Tags?: string[] } };
    const ips = status.Self.TailscaleIPs;
    const node: TailnetNode = {
      name,
      tags: status.Self.Tags ?? [],
      socket: bare.socket,
      socksPort: bare.socksPort,
      ipv4: ips.find((ip) => !ip.includes(":"))!,
      ipv6: ips.find((ip) => ip.includes(":"))!,
      fqdn: status.Self.DNSName.replace(/\.$/, ""),
      pid: bare.pid,
    };
    this.nodes[name] = node;
    const all = Object.values(this.nodes);
    for (const n of all) await waitMeshed(n, all);
    return node;
  }

  /** Stops a node's tailscaled (SIGTERM) and waits for it to exit; its state stays for {@link restartNode}. */
  async stopNode(name: string): Promise<void> {
    const child = this.#children.find((c) => c.pid === this.node(name).pid);
    if (!child) throw new Error(`Node "${name}" was not started by this process; add it with addNode`);
    await stopAll([child]);
  }

  /** Starts a stopped node again from its state directory (it logs back in by itself). */
  async restartNode(name: string): Promise<TailnetNode> {
    const node = this.node(name);
    const nodeDir = join(this.#desc.dir, name);
    const child = spawnLogged(
      this.#children,
      PEER_BINS.tailscaled,
      tailscaledArgs(nodeDir, node.socket, { socksPort: node.socksPort, httpProxy: this.#desc.httpProxy }),
      {
        env: tailscaledEnv(nodeDir),
        logFile: join(nodeDir, "tailscaled.log"),
      },
    );
    const restarted = { ...node, pid: child.pid };
    this.nodes[name] = restarted;
    await waitMeshed(restarted, Object.values(this.nodes));
    return restarted;
  }

  /**
   * Replaces the tailnet policy, tells headscale to reload it (SIGHUP) and waits until every running
   * node has it: the policy gets a grant of {@link GENERATION_CAP} to everyone with a fresh value, and
   * each node's WhoIs of a peer must show that value. So a test may act on the new grants at once.
   */
  async setPolicy(policy: Policy): Promise<void> {
    const generation = crypto.randomUUID();
    const grants = [...(policy.grants as unknown[] | undefined ?? [])];
    grants.push({ src: ["*"], dst: ["*"], app: { [GENERATION_CAP]: [{ generation }] } });
    await Deno.writeTextFile(this.#desc.policyPath, JSON.stringify({ ...policy, grants }, null, 2));
    Deno.kill(this.#desc.headscalePid, "SIGHUP");
    // Stopped (or SIGSTOPped) nodes get the policy when they run again; the others must have it now.
    const running: TailnetNode[] = [];
    for (const node of Object.values(this.nodes)) if (await isRunning(node.pid)) running.push(node);
    await Promise.all(running.map((node) => {
      const peer = running.find((n) => n !== node);
      if (!peer) return;
      return waitFor(async () => {
        using api = new LocalApiClient(node.socket);
        const caps = (await api.whois(peer.ipv4)).CapMap[GENERATION_CAP] as
          | { generation?: string }[]
          | undefined;
        return caps?.some((c) => c.generation === generation) ? true : undefined;
      }, { what: `node ${node.name} to receive the new policy (WhoIs of ${peer.name})`, timeoutMs: 30_000 });
    }));
  }

  /**
   * Makes `policy` the tailnet's policy: {@link setPolicy} unless the policy file already holds it (its
   * generation grant aside). Each test asks for the grants it needs; that costs nothing when an earlier
   * test left them in place.
   */
  async usePolicy(policy: Policy): Promise<void> {
    const current = JSON.parse(await Deno.readTextFile(this.#desc.policyPath)) as Policy;
    const grants = (current.grants as { app?: Record<string, unknown> }[] | undefined)
      ?.filter((g) => !g.app?.[GENERATION_CAP]);
    const wanted = JSON.stringify(JSON.parse(JSON.stringify(policy)));
    if (JSON.stringify({ ...current, grants }) === wanted) return;
    await this.setPolicy(policy);
  }

  /** Opens a TCP connection from node `from` to `host:port` (a tailnet IP or name) through its SOCKS5. */
  dial(from: string, host: string, port: number): Promise<Deno.TcpConn> {
    return socks5Connect({ hostname: "127.0.0.1", port: this.node(from).socksPort }, { host, port });
  }

  /** Opens a UDP association from node `from` (through its SOCKS5) to send datagrams to peers. */
  udp(from: string): Promise<UdpAssociation> {
    return socks5UdpAssociate({ hostname: "127.0.0.1", port: this.node(from).socksPort });
  }

  /**
   * Stops what this object started: the whole tailnet if it started it, else only the nodes it added
   * (they stay registered in headscale, offline).
   */
  async release(): Promise<void> {
    await stopAll(this.#children);
    if (this.#owned) await Deno.remove(this.#desc.dir, { recursive: true }).catch(() => {});
  }
}

async function stopAll(children: Deno.ChildProcess[]): Promise<void> {
  for (const child of children) {
    try {
      child.kill("SIGTERM");
    } catch { /* already gone */ }
  }
  await Promise.all(children.map(async (child) => {
    const timer = setTimeout(() => {
      try {
        child.kill("SIGKILL");
      } catch { /* already gone */ }
    }, 3000);
    await child.status.catch(() => {});
    clearTimeout(timer);
  }));
}

/** Environment variable naming the JSON description of the suite's shared tailnet. */
export const TAILNET_ENV = "TAILVOY_TEST_TAILNET";

/**
 * The suite's shared tailnet when running under `deno task test`, otherwise a private one started now
 * with the default nodes and policy. Call {@link Tailnet.release} when done.
 */
export async function acquireTailnet(): Promise<Tailnet> {
  const file = Deno.env.get(TAILNET_ENV);
  if (file) return Tailnet.attach(JSON.parse(await Deno.readTextFile(file)));
  return await Tailnet.start();
}

/**
 * Sockets in this network namespace whose remote end is not loopback or unspecified, from
 * /proc/net/{tcp,tcp6,udp,udp6}. Empty when nothing has left (or tried to leave) loopback.
 */
export async function nonLoopbackSockets(): Promise<string[]> {
  const bad: string[] = [];
  for (const proto of ["tcp", "tcp6", "udp", "udp6"]) {
    let text: string;
    try {
      text = await Deno.readTextFile(`/proc/net/${proto}`);
    } catch {
      continue;
    }
    for (const line of text.trim().split("\n").slice(1)) {
      const remote = line.trim().split(/\s+/)[2];
      const [hexAddr] = remote.split(":");
      if (!isLoopbackOrZero(hexAddr)) bad.push(`${proto} ${line.trim()}`);
    }
  }
  return bad;
}

// /proc/net addresses are hex in host byte order (little-endian 32-bit words on x86).
function isLoopbackOrZero(hex: string): boolean {
  if (/^0+$/.test(hex)) return true;
  if (hex.length === 8) return hex.slice(6, 8) === "7F";
  // ::1, and IPv4-mapped ::ffff:127.x.y.z
  if (hex === "00000000000000000000000001000000") return true;
  return hex.startsWith("0000000000000000FFFF0000") && hex.slice(30, 32) === "7F";
}
