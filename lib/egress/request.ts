/**
 * What an egress proxy handshake asks for, shared by the HTTP proxy and SOCKS5 parsers: the destination
 * (a host name or IP literal and a port), the client's credentials, and why a handshake was refused.
 * Host text is validated and canonicalised here, once, for both protocols.
 *
 * @module
 */

import { formatIp, parseIpv4, parseIpv6 } from "../net/ip.ts";

/** A destination a client asked for. Not resolved and not checked against any policy yet. */
export interface Destination {
  /**
   * Lower-case DNS name without a trailing dot (letters, digits, hyphens, dots only), or canonical IP
   * text (dotted IPv4, RFC 5952 IPv6, no brackets). Safe to show in logs and replies as is.
   */
  host: string;
  /** Whether `host` is a name or an IP literal of one family. */
  kind: "name" | "ipv4" | "ipv6";
  /** Port, 1-65535. */
  port: number;
}

/** A user name and password sent by a client (HTTP Basic or RFC 1929). Never log the password. */
export interface Credentials {
  /** User name. */
  user: string;
  /** Password. */
  password: string;
}

/** Why a handshake was refused; callers branch on this, never on message text. */
export type RefusalReason = "malformed" | "unsupported" | "too-large" | "unauthorized";

/** Longest host text accepted: a 253-character name with a trailing dot, with room for brackets. */
export const MAX_HOST_LENGTH = 255;

const LABEL = /^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/;
const NUMERIC = /^[0-9]+$/;
const PORT = /^[0-9]{1,5}$/;

/**
 * Parses host text: an IPv4 literal, an IPv6 literal (bare, or in brackets when `options.brackets`),
 * or a DNS name. Returns `undefined` for anything else, including names whose last label is numeric
 * ("127.1", "01.2.3.4"): resolvers read those as IPv4 in some legacy spelling, which would let a name
 * slip past a check of what it means.
 */
export function parseHost(
  text: string,
  options: { brackets?: boolean } = {},
): Pick<Destination, "host" | "kind"> | undefined {
  if (text.length === 0 || text.length > MAX_HOST_LENGTH) return undefined;
  if (options.brackets && text.startsWith("[")) {
    if (!text.endsWith("]")) return undefined;
    const v6 = parseIpv6(text.slice(1, -1));
    return v6 && { host: formatIp(v6), kind: "ipv6" };
  }
  const v4 = parseIpv4(text);
  if (v4) return { host: formatIp(v4), kind: "ipv4" };
  if (text.includes(":")) {
    // Brackets are how HTTP tells an IPv6 host from a port; SOCKS5 domain names have no port to confuse.
    if (options.brackets) return undefined;
    const v6 = parseIpv6(text);
    return v6 && { host: formatIp(v6), kind: "ipv6" };
  }
  const name = text.toLowerCase().replace(/\.$/, "");
  const labels = name.split(".");
  if (name.length > 253 || !labels.every((label) => LABEL.test(label))) return undefined;
  if (NUMERIC.test(labels[labels.length - 1])) return undefined;
  return { host: name, kind: "name" };
}

/** Parses decimal port text, 1-65535 (leading zeros allowed, at most five digits). */
export function parsePort(text: string): number | undefined {
  if (!PORT.test(text)) return undefined;
  const port = Number(text);
  return port >= 1 && port <= 0xffff ? port : undefined;
}

/**
 * `host:port` for `destination`, IPv6 in brackets; the port is left out when it equals
 * `options.defaultPort` (as in an HTTP Host header).
 */
export function formatAuthority(destination: Destination, options: { defaultPort?: number } = {}): string {
  const host = destination.kind === "ipv6" ? `[${destination.host}]` : destination.host;
  return destination.port === options.defaultPort ? host : `${host}:${destination.port}`;
}
