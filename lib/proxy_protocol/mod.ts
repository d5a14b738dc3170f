/**
 * PROXY protocol (haproxy proxy-protocol.txt, v1 and v2): a strict incremental decoder, encoders, and a
 * reader that takes exactly one header off a connection under a deadline.
 *
 * tailscaled's serve TCPForward writes one v2 header (source = caller's tailnet IP:port, destination =
 * this node's tailnet IP with the backend port, TCP over IPv4 or IPv6) before the first payload byte.
 * Accept headers only on listeners that only trusted senders can reach: a PROXY header is a claim of
 * identity, and anyone who can connect can write one.
 *
 * Everything here is pure except {@link readProxyHeader}.
 *
 * @module
 */

import { type ConnReader, readUntil } from "./read_until.ts";
import {
  type ProxyDecodeResult,
  type ProxyHeader,
  type ProxyHeaderInit,
  ProxyProtocolError,
} from "./types.ts";
import { decodeV1, encodeV1, V1_MIN_LENGTH } from "./v1.ts";
import { decodeV2, encodeV2, V2_FIXED_LENGTH, V2_MAX_LENGTH } from "./v2.ts";

export type { ConnReader } from "./read_until.ts";
export {
  type ProxyAddress,
  type ProxyDecodeResult,
  type ProxyHeader,
  type ProxyHeaderInit,
  ProxyProtocolError,
  type ProxyProtocolErrorReason,
  type ProxyTlv,
} from "./types.ts";
export { PP2_TYPE_CRC32C, V2_SIGNATURE } from "./v2.ts";
export { V1_MAX_LENGTH } from "./v1.ts";

/** Default cap on a v2 header's total size (16 fixed bytes + addresses + TLVs). */
export const DEFAULT_MAX_HEADER_BYTES = 4096;

/** Default deadline for the whole header, in ms (the spec suggests at least 3 s, to cover a TCP retransmit). */
export const DEFAULT_PROXY_TIMEOUT_MS = 3000;

/** Options of {@link decodeProxyHeader}. */
export interface DecodeProxyOptions {
  /**
   * Largest v2 header accepted, in bytes, at most 65551 (what the 16-bit length can express); default
   * {@link DEFAULT_MAX_HEADER_BYTES}. v1 lines are capped at 107 bytes by the spec.
   */
  maxBytes?: number;
  /** Versions accepted; default both. A header of another version fails with reason `not-proxy`. */
  versions?: readonly (1 | 2)[];
}

/** Options of {@link readProxyHeader}. */
export interface ReadProxyOptions extends DecodeProxyOptions {
  /** Deadline for the whole header in ms; default {@link DEFAULT_PROXY_TIMEOUT_MS}. */
  timeoutMs?: number;
}

/**
 * Decodes one PROXY header (v1 or v2) at the start of `bytes`, strictly.
 *
 * Returns the header and `consumed`, its exact length (payload starts there); or `needMore`, the least
 * number of extra bytes worth waiting for. Never reads past the header. Throws {@link ProxyProtocolError}
 * as soon as the bytes present cannot start a valid header: `not-proxy` when they are not a PROXY header
 * at all (e.g. a TLS ClientHello or an HTTP request), `malformed` for a broken one, `unsupported` for
 * AF_UNIX addresses, `too-large` past `options.maxBytes`.
 */
export function decodeProxyHeader(bytes: Uint8Array, options: DecodeProxyOptions = {}): ProxyDecodeResult {
  const maxBytes = options.maxBytes ?? DEFAULT_MAX_HEADER_BYTES;
  if (!(maxBytes >= V2_FIXED_LENGTH && maxBytes <= V2_MAX_LENGTH)) {
    throw new RangeError(`maxBytes must be between ${V2_FIXED_LENGTH} and ${V2_MAX_LENGTH}, got ${maxBytes}`);
  }
  const versions = options.versions ?? [1, 2];
  if (bytes.length === 0) return { needMore: versions.includes(1) ? V1_MIN_LENGTH : V2_FIXED_LENGTH };
  // The first byte tells the versions apart: "\r" starts the v2 signature, "P" the v1 line.
  if (bytes[0] === 0x0d && versions.includes(2)) return decodeV2(bytes, maxBytes);
  if (bytes[0] === 0x50 && versions.includes(1)) return decodeV1(bytes);
  throw new ProxyProtocolError(
    "not-proxy",
    `Connection did not start with a PROXY v${versions.join(" or v")} header: first byte 0x${
      bytes[0].toString(16).padStart(2, "0")
    }${guessProtocol(bytes)}`,
  );
}

function guessProtocol(bytes: Uint8Array): string {
  if (bytes[0] === 0x16) return " (a TLS handshake: the client spoke TLS directly)";
  if (bytes[0] === 0x0d) return " (a v2 signature, but v2 is not accepted here)";
  if (bytes[0] >= 0x41 && bytes[0] <= 0x5a) return " (plain text, such as an HTTP request)";
  return "";
}

/**
 * Encodes a v2 header. `PROXY` with `tcp`/`udp` needs both addresses of one family; `LOCAL` may carry
 * addresses (receivers ignore them) or none; `unspec` carries none. TLVs are written in order; with
 * `options.checksum` a CRC32C TLV is appended. Throws `TypeError` for a header that cannot be encoded.
 */
export function encodeProxyV2(header: ProxyHeaderInit, options: { checksum?: boolean } = {}): Uint8Array {
  return encodeV2(header, options);
}

/**
 * Encodes a v1 line (`PROXY TCP4|TCP6 src dst sport dport\r\n`). `LOCAL` and `unspec` become
 * `PROXY UNKNOWN\r\n`; UDP and TLVs cannot be expressed in v1 and throw `TypeError`.
 */
export function encodeProxyV1(header: ProxyHeaderInit): Uint8Array {
  return encodeV1(header);
}

/**
 * Reads one PROXY header off `conn`. Resolves to the header and `rest`: bytes read past the header
 * (payload), which the caller must process before reading `conn` again.
 *
 * Rejects with {@link ProxyProtocolError}: `timeout` when the whole header has not arrived within
 * `options.timeoutMs`, `eof` when the peer closes first, `not-proxy` at once when the first bytes cannot
 * start a PROXY header, or any decode error. Errors of `conn.read` propagate unchanged. On any rejection
 * the caller must close `conn`: a read may still be pending, and closing it is what ends that read.
 */
export async function readProxyHeader(
  conn: ConnReader,
  options: ReadProxyOptions = {},
): Promise<{ header: ProxyHeader; rest: Uint8Array }> {
  const { value, bytes } = await readUntil(conn, (buf) => {
    const result = decodeProxyHeader(buf, options);
    return "needMore" in result ? undefined : result;
  }, {
    timeoutMs: options.timeoutMs ?? DEFAULT_PROXY_TIMEOUT_MS,
    chunkSize: 1024,
    fail: (stop, message) => new ProxyProtocolError(stop, `Reading the PROXY header failed: ${message}`),
  });
  return { header: value.header, rest: bytes.slice(value.consumed) };
}
