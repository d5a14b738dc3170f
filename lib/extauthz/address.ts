/**
 * Classifying the caller address Envoy reports: only a tailnet address (100.64.0.0/10 or
 * fd7a:115c:a1e0::/48) in canonical form can be a caller; anything else is denied.
 *
 * @module
 */

/** What a source address is, for the deny reason. */
export type AddressKind = "tailnet" | "loopback" | "other" | "invalid";

const IPV4 =
  /^(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)$/;
const HEXTET = /^[0-9a-f]{1,4}$/;

function parseIpv4(ip: string): number[] | undefined {
  const m = IPV4.exec(ip);
  return m ? m.slice(1).map(Number) : undefined;
}

/** Eight 16-bit groups of a lower-case IPv6 address (zones refused), or undefined. */
function parseIpv6(ip: string): number[] | undefined {
  if (ip.includes("%") || ip !== ip.toLowerCase()) return undefined;
  let text = ip;
  const v4 = /^(.*:)(\d+\.\d+\.\d+\.\d+)$/.exec(ip);
  if (v4) { // "::ffff:1.2.3.4": rewrite the dotted tail as two groups
    const b = parseIpv4(v4[2]);
    if (!b) return undefined;
    text = `${v4[1]}${((b[0] << 8) | b[1]).toString(16)}:${((b[2] << 8) | b[3]).toString(16)}`;
  }
  const halves = text.split("::");
  if (halves.length > 2) return undefined;
  const groups = (s: string) => s === "" ? [] : s.split(":");
  const head = groups(halves[0]);
  const rest = halves.length === 2 ? groups(halves[1]) : [];
  if (![...head, ...rest].every((g) => HEXTET.test(g))) return undefined;
  const known = head.length + rest.length;
  if (halves.length === 1 ? known !== 8 : known > 7) return undefined;
  const zeros = new Array(8 - known).fill(0);
  return [...head.map((g) => parseInt(g, 16)), ...zeros, ...rest.map((g) => parseInt(g, 16))];
}

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
  const v6 = parseIpv6(ip);
  if (!v6) return "invalid";
  if (v6.every((g, i) => g === (i === 7 ? 1 : 0))) return "loopback";
  if (v6[0] === 0 && v6[1] === 0 && v6[2] === 0 && v6[3] === 0 && v6[4] === 0 && v6[5] === 0xffff) {
    return v6[6] >> 8 === 127 ? "loopback" : "other";
  }
  return v6[0] === 0xfd7a && v6[1] === 0x115c && v6[2] === 0xa1e0 ? "tailnet" : "other";
}

/** `ip:port`, bracketing IPv6, as the identity resolver expects. */
export function joinHostPort(ip: string, port: number): string {
  return ip.includes(":") ? `[${ip}]:${port}` : `${ip}:${port}`;
}
