/**
 * Types and the error class shared by the PROXY protocol codec (v1 text, v2 binary).
 *
 * @module
 */

/** An IP endpoint; `address` is canonical text (dotted IPv4, RFC 5952 IPv6, no brackets). */
export interface ProxyAddress {
  /** IPv4 or IPv6 address. */
  address: string;
  /** Port, 0–65535. */
  port: number;
}

/** One v2 type-length-value extension, kept raw (including NOOP and CRC32C ones). */
export interface ProxyTlv {
  /** TLV type, 0–255 (0xE0–0xEF are free for applications). */
  type: number;
  /** The value bytes. */
  value: Uint8Array;
}

/** A decoded PROXY protocol header. */
export interface ProxyHeader {
  /** Wire format: 1 (text line) or 2 (binary). */
  version: 1 | 2;
  /**
   * `PROXY`: the addresses are the original connection's. `LOCAL` (v2 only): the sender opened the
   * connection itself (e.g. a health check); use the real connection endpoints.
   */
  command: "PROXY" | "LOCAL";
  /**
   * Transport of the original connection. `unspec` (v2 AF_UNSPEC, v1 `UNKNOWN`) carries no addresses:
   * the receiver may accept the connection with its real endpoints, or reject it.
   */
  transport: "tcp" | "udp" | "unspec";
  /** Original source; present only for `PROXY` with transport `tcp` or `udp`. */
  source?: ProxyAddress;
  /** Original destination; present exactly when `source` is. */
  destination?: ProxyAddress;
  /** v2 TLVs in wire order; always empty for v1. */
  tlvs: ProxyTlv[];
}

/** What an encoder needs: a {@link ProxyHeader} without `version`, TLVs optional. */
export interface ProxyHeaderInit {
  /** See {@link ProxyHeader.command}. */
  command: "PROXY" | "LOCAL";
  /** See {@link ProxyHeader.transport}. */
  transport: "tcp" | "udp" | "unspec";
  /** Original source (both or neither of source and destination). */
  source?: ProxyAddress;
  /** Original destination. */
  destination?: ProxyAddress;
  /** v2 TLVs, written in this order. */
  tlvs?: readonly ProxyTlv[];
}

/** Why reading or decoding a PROXY header failed; callers branch on this, never on message text. */
export type ProxyProtocolErrorReason =
  | "timeout"
  | "eof"
  | "malformed"
  | "unsupported"
  | "too-large"
  | "not-proxy";

/** A PROXY header that could not be read or decoded. The message names the offending value. */
export class ProxyProtocolError extends Error {
  /** Always `"ProxyProtocolError"`. */
  override name = "ProxyProtocolError";
  /** The failure class. */
  readonly reason: ProxyProtocolErrorReason;
  /** Creates an error of `reason`. */
  constructor(reason: ProxyProtocolErrorReason, message: string, options: { cause?: unknown } = {}) {
    super(message, { cause: options.cause });
    this.reason = reason;
  }
}

/** Result of an incremental decode: a header and its exact length, or how many more bytes are needed at least. */
export type ProxyDecodeResult = { header: ProxyHeader; consumed: number } | { needMore: number };
