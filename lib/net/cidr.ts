/**
 * IP prefixes (CIDR): parsing, containment, and the address ranges no proxy should ever dial.
 *
 * @module
 */

import { formatIp, type IpBytes, parseIp } from "./ip.ts";

/** A parsed prefix: its network address bytes (4 or 16) and length. */
export interface Cidr {
  /** The network: host bits cleared. */
  bytes: IpBytes;
  bits: number;
  /** The network as text (`100.64.0.0/10`). */
  text: string;
  /** Whether it was written with its host bits clear (`10.1.2.3/8` was not). */
  exact: boolean;
}

/**
 * Parses `a.b.c.d/n`, `v6/n`, or a bare address (a /32 or /128), strictly (see `parseIp`; no leading
 * zeros in the length); `undefined` when invalid.
 */
export function parseCidr(text: string): Cidr | undefined {
  const slash = text.indexOf("/");
  const bytes = parseIp(slash < 0 ? text : text.slice(0, slash));
  if (!bytes) return undefined;
  const max = bytes.length * 8;
  const bitsText = slash < 0 ? String(max) : text.slice(slash + 1);
  if (!/^(0|[1-9][0-9]{0,2})$/.test(bitsText)) return undefined;
  const bits = Number(bitsText);
  if (bits > max) return undefined;
  const masked = mask(bytes, bits);
  return {
    bytes: masked,
    bits,
    text: `${formatIp(masked)}/${bits}`,
    exact: masked.every((b, i) => b === bytes[i]),
  };
}

/** Whether `ip` (an address, IPv4-mapped IPv6 counted as IPv4) is inside `cidr`. */
export function cidrContains(cidr: Cidr, ip: IpBytes): boolean {
  const addr = unmap(ip);
  if (addr.length !== cidr.bytes.length) return false;
  const masked = mask(addr, cidr.bits);
  return masked.every((b, i) => b === cidr.bytes[i]);
}

/** `ip` with an IPv4-mapped IPv6 address (`::ffff:a.b.c.d`) turned into its IPv4 address. */
export function unmap(ip: IpBytes): IpBytes {
  if (ip.length === 16 && ip.subarray(0, 10).every((b) => b === 0) && ip[10] === 0xff && ip[11] === 0xff) {
    return ip.slice(12);
  }
  return ip;
}

function mask(bytes: IpBytes, bits: number): IpBytes {
  const out = new Uint8Array(bytes);
  for (let i = 0; i < out.length; i++) {
    const keep = Math.max(0, Math.min(8, bits - i * 8));
    out[i] &= keep === 0 ? 0 : (0xff << (8 - keep)) & 0xff;
  }
  return out;
}

const NEVER: readonly [string, Cidr][] = ([
  ["unspecified", "0.0.0.0/8"],
  ["loopback", "127.0.0.0/8"],
  ["link-local", "169.254.0.0/16"],
  ["multicast", "224.0.0.0/4"],
  ["reserved", "240.0.0.0/4"],
  ["unspecified", "::/128"],
  ["loopback", "::1/128"],
  ["link-local", "fe80::/10"],
  ["multicast", "ff00::/8"],
] as const).map(([why, text]) => [why, parseCidr(text)!]);

/**
 * Why `ip` must never be dialed by a proxy on a client's behalf (loopback, link-local — which includes
 * cloud metadata endpoints —, unspecified, multicast, reserved), or `undefined`.
 */
export function neverDial(ip: IpBytes): string | undefined {
  return NEVER.find(([, cidr]) => cidrContains(cidr, ip))?.[0];
}
