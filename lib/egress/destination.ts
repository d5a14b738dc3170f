/**
 * Egress destinations, decided after resolution (pure: no I/O). An asked `host:port` goes through the
 * host aliases, is resolved against tailscaled's own view of the tailnet (peers' MagicDNS names, tailnet
 * IPs, tags and the subnet routes they serve), and the resolved address — never the name — is judged by
 * the destination rules, so DNS cannot move a name past the check.
 *
 * Rules: OR across rules, AND inside one, an omitted dimension is unrestricted. A destination off the
 * tailnet matches only a rule's `external` prefixes. Loopback, link-local, unspecified, multicast and this
 * host's own addresses are never dialed, whatever the rules say.
 *
 * @module
 */

import { type Cidr, cidrContains, neverDial, parseCidr, unmap } from "../net/cidr.ts";
import { formatIp, type IpBytes, parseIp } from "../net/ip.ts";
import type { Status } from "../localapi/mod.ts";

/** A destination rule as configured (`egress.rules[]`, ports parsed). */
export interface DestinationRule {
  /** Shown in logs as the rule that allowed a flow (default `rules[i]`). */
  name?: string;
  listeners?: readonly string[];
  /** Destination node names: MagicDNS short name or FQDN. */
  hosts?: readonly string[];
  /** Tags of the destination node (any one matches). */
  tags?: readonly string[];
  /** Tailnet IPs or prefixes of destination nodes. */
  addresses?: readonly string[];
  /** Prefixes inside subnet routes that peers serve. */
  routes?: readonly string[];
  /** Non-tailnet prefixes (the only way to reach them). */
  external?: readonly string[];
  /** Inclusive port ranges. */
  ports?: readonly { from: number; to: number }[];
}

/** One tailnet peer as tailscaled sees it. */
export interface Peer {
  /** MagicDNS short name (first label of the FQDN). */
  name: string;
  /** MagicDNS FQDN without the trailing dot. */
  fqdn: string;
  ips: IpBytes[];
  tags: readonly string[];
  /** Subnet routes it serves. */
  routes: Cidr[];
}

/** tailscaled's view of the tailnet, from a status snapshot. */
export interface TailnetView {
  peers: Peer[];
  /** This node's tailnet IPs and any other address of this host (never dialed). */
  own: IpBytes[];
}

/** Builds the view from a LocalAPI status (with peers) and this host's interface addresses. */
export function tailnetView(
  status: Status,
  options: { localAddresses?: readonly string[] } = {},
): TailnetView {
  const peers = Object.values(status.Peer).map((p) => {
    const fqdn = p.DNSName.replace(/\.$/, "").toLowerCase();
    return {
      name: fqdn.split(".")[0] || p.HostName.toLowerCase(),
      fqdn,
      ips: p.TailscaleIPs.flatMap((ip) => parseIp(ip) ?? []),
      tags: p.Tags,
      routes: p.PrimaryRoutes.flatMap((r) => parseCidr(r) ?? []),
    };
  });
  const own = [...status.TailscaleIPs, ...options.localAddresses ?? []].flatMap((ip) => parseIp(ip) ?? []);
  return { peers, own };
}

/** Host aliases: `name` or `name:port` (lower case, no trailing dot) → a host and, optionally, a port. */
export type Aliases = Readonly<Record<string, { host: string; port?: number }>>;

/** `host:port` after the aliases (an alias naming no port keeps the asked one); `alias` is the key used. */
export function applyAliases(
  aliases: Aliases,
  asked: { host: string; port: number },
): { host: string; port: number; alias?: string } {
  const host = asked.host.toLowerCase().replace(/\.$/, "");
  for (const key of [`${host}:${asked.port}`, host]) {
    const target = Object.hasOwn(aliases, key) ? aliases[key] : undefined;
    if (target === undefined) continue;
    return { host: target.host.toLowerCase(), port: target.port ?? asked.port, alias: key };
  }
  return { host, port: asked.port };
}

/** Where a name or address leads on the tailnet. */
export type Resolution =
  | { kind: "address"; ip: IpBytes; peer?: Peer }
  | { kind: "unknown-name"; name: string };

/**
 * Resolves `host` against the view: an IP literal as is; a peer's MagicDNS name (short or FQDN) to its
 * first IPv4 address (else its first). Any other name is `unknown-name` (the caller may look it up in
 * DNS for `external` rules, and must judge the address it gets).
 */
export function resolveHost(view: TailnetView, host: string): Resolution {
  const literal = parseIp(host.replace(/^\[|\]$/g, ""));
  if (literal) return { kind: "address", ip: unmap(literal) };
  const name = host.toLowerCase().replace(/\.$/, "");
  const peer = view.peers.find((p) => p.fqdn === name || p.name === name);
  if (!peer || !peer.ips.length) return { kind: "unknown-name", name };
  const ip = peer.ips.find((b) => b.length === 4) ?? peer.ips[0];
  return { kind: "address", ip, peer };
}

/** Compiled rules (prefixes and port ranges parsed once). */
export interface CompiledRule {
  name: string;
  listeners?: ReadonlySet<string>;
  hosts?: ReadonlySet<string>;
  tags?: ReadonlySet<string>;
  addresses?: Cidr[];
  routes?: Cidr[];
  external?: Cidr[];
  ports?: [number, number][];
}

/** Parses every rule's prefixes once; throws naming the rule and the bad value. */
export function compileRules(rules: readonly DestinationRule[]): CompiledRule[] {
  return rules.map((r, i) => {
    const name = r.name ?? `rules[${i}]`;
    const cidrs = (values?: readonly string[]) =>
      values?.map((v) => {
        const c = parseCidr(v);
        if (!c) {
          throw new Error(
            `Egress rule ${name}: ${JSON.stringify(v)} is not an IP prefix (like 100.64.0.0/10)`,
          );
        }
        return c;
      });
    const lower = (values?: readonly string[]) =>
      values && new Set(values.map((v) => v.toLowerCase().replace(/\.$/, "")));
    return {
      name,
      listeners: r.listeners && new Set(r.listeners),
      hosts: lower(r.hosts),
      tags: r.tags && new Set(r.tags),
      addresses: cidrs(r.addresses),
      routes: cidrs(r.routes),
      external: cidrs(r.external),
      ports: r.ports?.map((p) => [p.from, p.to] as [number, number]),
    };
  });
}

/** A resolved destination and the verdict on it. */
export interface Verdict {
  allow: boolean;
  /** The rule that allowed it. */
  rule?: string;
  /** Why (for the log; never sent to the client). */
  reason: string;
  /** The address to dial. */
  ip: string;
  port: number;
  /** The destination node, or the node serving the subnet route it is in. */
  peer?: string;
  /** How the destination is reached. */
  via: "peer" | "route" | "external";
}

/** Judges the resolved `ip:port` for a flow on `listener`. */
export function judge(
  view: TailnetView,
  rules: readonly CompiledRule[],
  target: { ip: IpBytes; port: number; listener: string; peer?: Peer },
): Verdict {
  const ip = unmap(target.ip);
  const text = formatIp(ip);
  const peer = target.peer ?? view.peers.find((p) => p.ips.some((b) => sameIp(b, ip)));
  const router = peer ? undefined : routerFor(view, ip);
  const via = peer ? "peer" : router ? "route" : "external";
  const base = { ip: text, port: target.port, peer: (peer ?? router?.peer)?.fqdn, via } as const;
  const never = neverDial(ip);
  if (never) return { ...base, allow: false, reason: `${text} is a ${never} address, never dialed` };
  if (view.own.some((b) => sameIp(b, ip))) {
    return { ...base, allow: false, reason: `${text} is this host's own address, never dialed` };
  }
  for (const rule of rules) {
    if (matches(rule, { ip, port: target.port, listener: target.listener, peer, router: router?.route })) {
      return { ...base, allow: true, rule: rule.name, reason: `allowed by rule ${rule.name}` };
    }
  }
  const where = via === "external"
    ? "not on the tailnet"
    : via === "route"
    ? "in a subnet route"
    : "a tailnet node";
  return { ...base, allow: false, reason: `no egress rule allows ${text}:${target.port} (${where})` };
}

function matches(
  rule: CompiledRule,
  d: { ip: IpBytes; port: number; listener: string; peer?: Peer; router?: Cidr },
): boolean {
  if (rule.listeners && !rule.listeners.has(d.listener)) return false;
  if (rule.ports && !rule.ports.some(([lo, hi]) => d.port >= lo && d.port <= hi)) return false;
  const onTailnet = d.peer !== undefined || d.router !== undefined;
  // Off the tailnet only `external` reaches; `external` names nothing on the tailnet.
  if (!onTailnet || rule.external) {
    return !onTailnet && (rule.external?.some((c) => cidrContains(c, d.ip)) ?? false);
  }
  if (rule.hosts && !(d.peer && (rule.hosts.has(d.peer.name) || rule.hosts.has(d.peer.fqdn)))) return false;
  if (rule.tags && !(d.peer && d.peer.tags.some((t) => rule.tags!.has(t)))) return false;
  if (rule.addresses && !(d.peer && rule.addresses.some((c) => cidrContains(c, d.ip)))) return false;
  if (rule.routes && !(d.router && rule.routes.some((c) => cidrContains(c, d.ip)))) return false;
  return true;
}

function routerFor(view: TailnetView, ip: IpBytes): { peer: Peer; route: Cidr } | undefined {
  let best: { peer: Peer; route: Cidr } | undefined;
  for (const peer of view.peers) {
    for (const route of peer.routes) {
      // Exit-node default routes do not make the internet "on the tailnet".
      if (route.bits === 0) continue;
      if (cidrContains(route, ip) && (!best || route.bits > best.route.bits)) best = { peer, route };
    }
  }
  return best;
}

function sameIp(a: IpBytes, b: IpBytes): boolean {
  const x = unmap(a);
  return x.length === b.length && x.every((v, i) => v === b[i]);
}
