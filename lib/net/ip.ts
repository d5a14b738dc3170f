/**
 * Strict IP address text parsing and canonical formatting (IPv4 dotted decimal, IPv6 per RFC 5952).
 * Pure functions; shared by the PROXY protocol codec and the ClientHello parser (IP literals in SNI).
 *
 * @module
 */

/** An IP address as its network-order bytes (4 for IPv4, 16 for IPv6). */
export type IpBytes = Uint8Array;

const DECIMAL_OCTET = /^(0|[1-9][0-9]{0,2})$/;
const HEX_GROUP = /^[0-9a-fA-F]{1,4}$/;

/**
 * Parses dotted-decimal IPv4 text strictly: exactly four numbers 0–255, no leading zeros, no other
 * characters. Returns `undefined` for anything else.
 */
export function parseIpv4(text: string): IpBytes | undefined {
  const parts = text.split(".");
  if (parts.length !== 4) return undefined;
  const out = new Uint8Array(4);
  for (let i = 0; i < 4; i++) {
    // Leading zeros are refused: some stacks read them as octal.
    if (!DECIMAL_OCTET.test(parts[i])) return undefined;
    const n = Number(parts[i]);
    if (n > 255) return undefined;
    out[i] = n;
  }
  return out;
}

/**
 * Parses IPv6 text strictly: hex groups of 1–4 digits, at most one `::`, an optional trailing dotted
 * IPv4 part, exactly 128 bits. No brackets, zone IDs or prefix lengths. Returns `undefined` otherwise.
 */
export function parseIpv6(text: string): IpBytes | undefined {
  if (text.length < 2 || text.length > 45) return undefined;
  const halves = text.split("::");
  if (halves.length > 2) return undefined;
  // Only the very last word of the address may be a dotted IPv4 part.
  const head = parseGroups(halves[0], halves.length === 1);
  const tail = halves.length === 2 ? parseGroups(halves[1], true) : [];
  if (!head || !tail) return undefined;
  const total = head.length + tail.length;
  if (halves.length === 2 ? total > 7 : total !== 8) return undefined;
  const out = new Uint8Array(16);
  head.forEach((g, i) => writeGroup(out, i, g));
  tail.forEach((g, i) => writeGroup(out, 8 - tail.length + i, g));
  return out;
}

function parseGroups(half: string, mayEndInIpv4: boolean): number[] | undefined {
  if (half === "") return [];
  const words = half.split(":");
  const groups: number[] = [];
  for (let i = 0; i < words.length; i++) {
    if (mayEndInIpv4 && i === words.length - 1 && words[i].includes(".")) {
      const v4 = parseIpv4(words[i]);
      if (!v4) return undefined;
      groups.push(v4[0] << 8 | v4[1], v4[2] << 8 | v4[3]);
    } else if (HEX_GROUP.test(words[i])) {
      groups.push(parseInt(words[i], 16));
    } else {
      return undefined;
    }
  }
  return groups;
}

function writeGroup(out: Uint8Array, slot: number, group: number): void {
  out[slot * 2] = group >> 8;
  out[slot * 2 + 1] = group & 0xff;
}

/** Parses IPv4 or IPv6 text strictly (see {@link parseIpv4} and {@link parseIpv6}). */
export function parseIp(text: string): IpBytes | undefined {
  return text.includes(":") ? parseIpv6(text) : parseIpv4(text);
}

/**
 * Formats 4 or 16 address bytes as canonical text: dotted decimal, or RFC 5952 IPv6 (lower case, the
 * longest run of two or more zero groups compressed, the first on a tie, `::ffff:a.b.c.d` for
 * IPv4-mapped addresses).
 */
export function formatIp(bytes: IpBytes): string {
  if (bytes.length === 4) return bytes.join(".");
  if (bytes.length !== 16) throw new RangeError(`IP address must be 4 or 16 bytes, got ${bytes.length}`);
  const groups: number[] = [];
  for (let i = 0; i < 16; i += 2) groups.push(bytes[i] << 8 | bytes[i + 1]);
  if (groups.slice(0, 5).every((g) => g === 0) && groups[5] === 0xffff) {
    return `::ffff:${bytes.subarray(12).join(".")}`;
  }
  let bestStart = -1;
  let bestLen = 1; // RFC 5952 §4.2.2: a single zero group is not compressed
  for (let i = 0; i < 8;) {
    if (groups[i] !== 0) {
      i++;
      continue;
    }
    let j = i;
    while (j < 8 && groups[j] === 0) j++;
    if (j - i > bestLen) [bestStart, bestLen] = [i, j - i];
    i = j;
  }
  const hex = groups.map((g) => g.toString(16));
  if (bestStart < 0) return hex.join(":");
  return `${hex.slice(0, bestStart).join(":")}::${hex.slice(bestStart + bestLen).join(":")}`;
}
