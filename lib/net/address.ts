/**
 * Network addresses as text: `host:port` and `[v6]:port` split and joined, and the caller address
 * Envoy reports classified (only a tailnet address, 100.64.0.0/10 or fd7a:115c:a1e0::/48, in
 * canonical form can be a caller; anything else is denied).
 *
 * @module
 */

import { parseIpv4, parseIpv6 } from "./ip.ts";

/** What a source address is, for the deny reason. */
export type AddressKind = "tailnet" | "loopback" | "other" | "invalid";

/**
 * Classifies `ip` as Envoy writes it (dotted quad, or compressed lower-case IPv6). IPv4-mapped IPv6
 * is "other": the PROXY header our relay sends carries the caller's own address family.
 */
export function classifyAddress(ip: string): AddressKind {
  const v4 = parseIpv4(ip);
  if (v4) {
    if (v4[0] === 127) return "loopback";
    return v4[0] === 100 && (v4[1] & 0xc0) === 0x40 ? "tailnet" : "other";
  }
  // Envoy writes IPv6 in lower case: other spellings are not its canonical form.
  const bytes = ip === ip.toLowerCase() ? parseIpv6(ip) : undefined;
  if (!bytes) return "invalid";
  const v6 = Array.from({ length: 8 }, (_, i) => bytes[i * 2] << 8 | bytes[i * 2 + 1]);
  if (v6.every((g, i) => g === (i === 7 ? 1 : 0))) return "loopback";
  if (v6[0] === 0 && v6[1] === 0 && v6[2] === 0 && v6[3] === 0 && v6[4] === 0 && v6[5] === 0xffff) {
    return v6[6] >> 8 === 127 ? "loopback" : "other";
  }
  return v6[0] === 0xfd7a && v6[1] === 0x115c && v6[2] === 0xa1e0 ? "tailnet" : "other";
}

/** `host:port`, bracketing an IPv6 host (`[v6]:port`), as the identity resolver and Envoy expect. */
export function joinHostPort(host: string, port: number): string {
  return host.includes(":") ? `[${host}]:${port}` : `${host}:${port}`;
}

/** A listener's or connection's address as `host:port` (see {@link joinHostPort}). */
export function formatAddr(addr: { hostname: string; port: number }): string {
  return joinHostPort(addr.hostname, addr.port);
}

/**
 * Splits `host:port` or `[v6]:port` (port 0–65535; the host may be empty, as in `:port`); `undefined`
 * for anything else. Callers throw their own error, naming the setting.
 */
export function splitHostPort(addr: string): { host: string; port: number } | undefined {
  const m = /^(?:\[([^\]]+)\]|([^:[\]]*)):(\d{1,5})$/.exec(addr);
  const port = m ? Number(m[3]) : NaN;
  if (!m || port > 65535) return undefined;
  return { host: m[1] ?? m[2], port };
}

/**
 * Splits `IP`, `IP:port` or `[v6]:port` into the IP and the optional port, leniently: text of any
 * other shape comes back whole as the IP.
 */
export function splitAddr(addr: string): { ip: string; port?: number } {
  const v6 = /^\[([^\]]+)\](?::(\d+))?$/.exec(addr);
  if (v6) return { ip: v6[1], port: v6[2] ? Number(v6[2]) : undefined };
  const v4 = /^([^:]*):(\d+)$/.exec(addr);
  if (v4) return { ip: v4[1], port: Number(v4[2]) };
  return { ip: addr };
}

/** Whether `ip` (as text) is a loopback address: 127.0.0.0/8, `::1` or IPv4-mapped 127.x. */
export function isLoopbackIp(ip: string): boolean {
  return ip.startsWith("127.") || ip === "::1" || ip.startsWith("::ffff:127.");
}
