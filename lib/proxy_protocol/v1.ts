/**
 * PROXY protocol v1 (one text line) encoder and incremental decoder, per haproxy's proxy-protocol.txt §2.1.
 *
 * @module
 */

import { formatIp, parseIpv4, parseIpv6 } from "../net/ip.ts";
import { type ProxyDecodeResult, type ProxyHeaderInit, ProxyProtocolError } from "./types.ts";
import { checkKind, endpointBytes } from "./validate.ts";

/** Longest v1 line, CRLF included (`PROXY UNKNOWN` with two full IPv6 addresses and ports). */
export const V1_MAX_LENGTH = 107;

/** Shortest v1 line: `PROXY UNKNOWN\r\n`. */
export const V1_MIN_LENGTH = 15;

const PREFIX = "PROXY ";
const CR = 0x0d;
const LF = 0x0a;
const PORT = /^(0|[1-9][0-9]{0,4})$/;

/** Decodes a v1 line from `bytes`, which start with (a prefix of) `PROXY `. */
export function decodeV1(bytes: Uint8Array): ProxyDecodeResult {
  for (let i = 0; i < Math.min(bytes.length, PREFIX.length); i++) {
    if (bytes[i] !== PREFIX.charCodeAt(i)) {
      throw new ProxyProtocolError(
        "not-proxy",
        `PROXY v1 line must start with "PROXY ", got ${JSON.stringify(latin1(bytes.subarray(0, i + 1)))}`,
      );
    }
  }
  const end = findCrlf(bytes);
  if (end < 0) return { needMore: Math.max(1, V1_MIN_LENGTH - bytes.length) };
  const line = latin1(bytes.subarray(0, end));
  const tokens = line.split(" ");
  const protocol = tokens[1];
  if (protocol === "UNKNOWN") {
    // The spec says to ignore whatever follows UNKNOWN on the line.
    return { header: { version: 1, command: "PROXY", transport: "unspec", tlvs: [] }, consumed: end + 2 };
  }
  if (protocol !== "TCP4" && protocol !== "TCP6") {
    throw new ProxyProtocolError(
      "malformed",
      `PROXY v1 protocol must be TCP4, TCP6 or UNKNOWN, got ${JSON.stringify(protocol ?? "")}`,
    );
  }
  if (tokens.length !== 6) {
    throw new ProxyProtocolError(
      "malformed",
      `PROXY v1 ${protocol} line must have 6 single-space-separated fields, got ${JSON.stringify(line)}`,
    );
  }
  const parse = protocol === "TCP4" ? parseIpv4 : parseIpv6;
  const [source, destination] = [tokens[2], tokens[3]].map((text) => {
    const bytes = parse(text);
    if (!bytes) {
      throw new ProxyProtocolError(
        "malformed",
        `PROXY v1 ${protocol} address ${JSON.stringify(text)} is not a valid ${
          protocol === "TCP4" ? "IPv4" : "IPv6"
        } address`,
      );
    }
    return formatIp(bytes);
  });
  const [sourcePort, destinationPort] = [tokens[4], tokens[5]].map((text) => {
    if (!PORT.test(text) || Number(text) > 0xffff) {
      throw new ProxyProtocolError(
        "malformed",
        `PROXY v1 port ${JSON.stringify(text)} is not a decimal 0-65535 without leading zeros`,
      );
    }
    return Number(text);
  });
  return {
    header: {
      version: 1,
      command: "PROXY",
      transport: "tcp",
      source: { address: source, port: sourcePort },
      destination: { address: destination, port: destinationPort },
      tlvs: [],
    },
    consumed: end + 2,
  };
}

/**
 * Index of the CR of the first CRLF, or -1 while more bytes are needed. Throws on a lone CR or LF, a
 * non-printable byte, or a line that cannot end within {@link V1_MAX_LENGTH} bytes.
 */
function findCrlf(bytes: Uint8Array): number {
  // The CR may sit at index 105 at the latest, so that the LF is the 107th byte.
  const lastCr = V1_MAX_LENGTH - 2;
  for (let i = 0; i < Math.min(bytes.length, lastCr + 1); i++) {
    const b = bytes[i];
    if (b === CR) {
      if (i + 1 >= bytes.length) return -1;
      if (bytes[i + 1] === LF) return i;
      throw new ProxyProtocolError("malformed", `PROXY v1 line has a CR not followed by LF at byte ${i}`);
    }
    // Checked as bytes arrive, so garbage fails before the line would have ended.
    if (b < 0x20 || b > 0x7e) {
      throw new ProxyProtocolError(
        "malformed",
        `PROXY v1 line has a non-printable byte 0x${b.toString(16).padStart(2, "0")} at byte ${i}`,
      );
    }
  }
  if (bytes.length > lastCr) {
    throw new ProxyProtocolError(
      "too-large",
      `PROXY v1 line has no CRLF within its first ${V1_MAX_LENGTH} bytes`,
    );
  }
  return -1;
}

/**
 * Encodes a v1 line. v1 carries TCP over IPv4/IPv6 only: `LOCAL` and `unspec` become `PROXY UNKNOWN`
 * (which decodes as command `PROXY`, transport `unspec`); UDP and TLVs cannot be expressed and throw a
 * `TypeError`, as does any invalid address or port.
 */
export function encodeV1(header: ProxyHeaderInit): Uint8Array {
  checkKind(header);
  if (header.tlvs?.length) throw new TypeError("PROXY v1 cannot carry TLVs; use v2");
  if (header.command === "LOCAL" || header.transport === "unspec") {
    return new TextEncoder().encode("PROXY UNKNOWN\r\n");
  }
  if (header.transport !== "tcp") {
    throw new TypeError(`PROXY v1 carries only TCP, got transport ${JSON.stringify(header.transport)}`);
  }
  const { source, destination } = header;
  if (!source || !destination) {
    throw new TypeError("PROXY v1 TCP line needs source and destination addresses");
  }
  const { src, dst } = endpointBytes(source, destination);
  const protocol = src.length === 4 ? "TCP4" : "TCP6";
  const line = `PROXY ${protocol} ${formatIp(src)} ${formatIp(dst)} ${source.port} ${destination.port}\r\n`;
  return new TextEncoder().encode(line);
}

function latin1(bytes: Uint8Array): string {
  return String.fromCharCode(...bytes);
}
