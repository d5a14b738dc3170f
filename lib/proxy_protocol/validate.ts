/**
 * Input checks shared by the v1 and v2 encoders. They throw `TypeError`: a header that cannot be
 * encoded is a programming error, not bad wire data.
 *
 * @module
 */

import { parseIp } from "../net/ip.ts";
import type { ProxyAddress, ProxyHeaderInit, ProxyTlv } from "./types.ts";

function addressBytes(address: string): Uint8Array {
  const bytes = typeof address === "string" ? parseIp(address) : undefined;
  if (!bytes) {
    throw new TypeError(`PROXY address ${JSON.stringify(address)} is not a valid IPv4 or IPv6 address`);
  }
  return bytes;
}

/**
 * The bytes of a source and destination address pair, checked: strict IP text of one family, ports
 * 0–65535.
 */
export function endpointBytes(
  source: ProxyAddress,
  destination: ProxyAddress,
): { src: Uint8Array; dst: Uint8Array } {
  const src = addressBytes(source.address);
  const dst = addressBytes(destination.address);
  if (src.length !== dst.length) {
    throw new TypeError(
      `PROXY source ${source.address} and destination ${destination.address} are of different IP families`,
    );
  }
  checkPort(source.port);
  checkPort(destination.port);
  return { src, dst };
}

function checkPort(port: number): void {
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
      throw new TypeError(
        `PROXY v2 TLV 0x${type.toString(16)} value must be a Uint8Array of at most 65535 bytes`,
      );
    }
  }
}

/** Throws unless the command and transport are among the known values. */
export function checkKind(header: ProxyHeaderInit): void {
  if (header.command !== "PROXY" && header.command !== "LOCAL") {
    throw new TypeError(`PROXY command must be "PROXY" or "LOCAL", got ${JSON.stringify(header.command)}`);
  }
  if (!["tcp", "udp", "unspec"].includes(header.transport)) {
    throw new TypeError(
      `PROXY transport must be "tcp", "udp" or "unspec", got ${JSON.stringify(header.transport)}`,
    );
  }
}
