/**
 * Input checks shared by the v1 and v2 encoders. They throw `TypeError`: a header that cannot be
 * encoded is a programming error, not bad wire data.
 *
 * @module
 */

import { parseIp } from "./ip.ts";
import type { ProxyTlv } from "./types.ts";

/** The bytes of an IP address given as text; throws when it is not a strict IPv4 or IPv6 address. */
export function addressBytes(address: string): Uint8Array {
  const bytes = typeof address === "string" ? parseIp(address) : undefined;
  if (!bytes) throw new TypeError(`PROXY address ${JSON.stringify(address)} is not a valid IPv4 or IPv6 address`);
  return bytes;
}

/** Throws unless `port` is an integer 0–65535. */
export function checkPort(port: number): void {
  if (!Number.isInteger(port) || port < 0 || port > 0xffff) {
    throw new TypeError(`PROXY port must be an integer 0-65535, got ${port}`);
  }
}

/** Throws unless every TLV has a type 0–255 and a value of at most 65535 bytes. */
export function checkTlvs(tlvs: readonly ProxyTlv[]): void {
  for (const { type, value } of tlvs) {
    if (!Number.isInteger(type) || type < 0 || type > 0xff) {
      throw new TypeError(`PROXY v2 TLV type must be an integer 0-255, got ${type}`);
    }
    if (!(value instanceof Uint8Array) || value.length > 0xffff) {
      throw new TypeError(`PROXY v2 TLV 0x${type.toString(16)} value must be a Uint8Array of at most 65535 bytes`);
    }
  }
}
