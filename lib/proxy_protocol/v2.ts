/**
 * PROXY protocol v2 (binary) encoder and incremental decoder, per haproxy's proxy-protocol.txt §2.2.
 *
 * @module
 */

import { crc32c } from "./crc32c.ts";
import { formatIp } from "../net/ip.ts";
import { hex } from "../util/bytes.ts";
import { checkKind, checkTlvs, endpointBytes } from "./validate.ts";
import {
  type ProxyAddress,
  type ProxyDecodeResult,
  type ProxyHeader,
  type ProxyHeaderInit,
  ProxyProtocolError,
  type ProxyTlv,
} from "./types.ts";

/** The 12-byte v2 signature (`\r\n\r\n\0\r\nQUIT\n`). */
export const V2_SIGNATURE: Uint8Array = new Uint8Array([
  0x0d,
  0x0a,
  0x0d,
  0x0a,
  0x00,
  0x0d,
  0x0a,
  0x51,
  0x55,
  0x49,
  0x54,
  0x0a,
]);

/** Fixed part of a v2 header: signature, version/command, family/transport, length. */
export const V2_FIXED_LENGTH = 16;

/** Largest v2 header the wire format can express (the length field is 16 bits). */
export const V2_MAX_LENGTH: number = V2_FIXED_LENGTH + 0xffff;

/** `PP2_TYPE_CRC32C`: a checksum of the whole header, verified when present. */
export const PP2_TYPE_CRC32C = 0x03;

const AF_UNSPEC = 0x0;
const AF_INET = 0x1;
const AF_INET6 = 0x2;
const AF_UNIX = 0x3;
const TRANSPORTS = ["unspec", "tcp", "udp"] as const;
// Address block size per family: two addresses plus two ports (AF_UNIX: two 108-byte paths).
const ADDRESS_BLOCK = [0, 12, 36, 216];

/** Decodes a v2 header from `bytes`, which start with (a prefix of) the v2 signature. */
export function decodeV2(bytes: Uint8Array, maxBytes: number): ProxyDecodeResult {
  for (let i = 0; i < Math.min(bytes.length, V2_SIGNATURE.length); i++) {
    if (bytes[i] !== V2_SIGNATURE[i]) {
      throw new ProxyProtocolError(
        "not-proxy",
        `PROXY v2 signature mismatch at byte ${i}: got 0x${hex(bytes[i])}, expected 0x${
          hex(V2_SIGNATURE[i])
        }`,
      );
    }
  }
  // Check the version and family bytes as soon as they arrive, so bad input fails before the rest does.
  if (bytes.length > 12) checkVersionCommand(bytes[12]);
  if (bytes.length > 13) checkFamily(bytes[12] & 0x0f, bytes[13]);
  if (bytes.length < V2_FIXED_LENGTH) return { needMore: V2_FIXED_LENGTH - bytes.length };

  const blockLength = bytes[14] << 8 | bytes[15];
  const total = V2_FIXED_LENGTH + blockLength;
  if (total > maxBytes) {
    throw new ProxyProtocolError(
      "too-large",
      `PROXY v2 header of ${total} bytes exceeds the limit of ${maxBytes}`,
    );
  }
  const family = bytes[13] >> 4;
  const addressLength = ADDRESS_BLOCK[family];
  if (blockLength < addressLength) {
    throw new ProxyProtocolError(
      "malformed",
      `PROXY v2 address block of ${blockLength} bytes is shorter than the ${addressLength} bytes family 0x${
        hex(family)
      } needs`,
    );
  }
  if (bytes.length < total) return { needMore: total - bytes.length };

  const command = bytes[12] & 0x0f ? "PROXY" : "LOCAL";
  const transport = TRANSPORTS[bytes[13] & 0x0f];
  const header = bytes.subarray(0, total);
  const result: ProxyHeader = { version: 2, command, transport, tlvs: [] };
  // LOCAL: the spec says to use the real endpoints and ignore any address block.
  if (command === "PROXY" && (family === AF_INET || family === AF_INET6)) {
    const size = family === AF_INET ? 4 : 16;
    const ports = new DataView(header.buffer, header.byteOffset + V2_FIXED_LENGTH + 2 * size, 4);
    result.source = endpoint(header.subarray(16, 16 + size), ports.getUint16(0));
    result.destination = endpoint(header.subarray(16 + size, 16 + 2 * size), ports.getUint16(2));
  }
  result.tlvs = decodeTlvs(header, V2_FIXED_LENGTH + addressLength);
  return { header: result, consumed: total };
}

function checkVersionCommand(byte: number): void {
  if (byte >> 4 !== 2) {
    throw new ProxyProtocolError(
      "malformed",
      `PROXY v2 version must be 2, got ${byte >> 4} (byte 0x${hex(byte)})`,
    );
  }
  if ((byte & 0x0f) > 1) {
    throw new ProxyProtocolError(
      "malformed",
      `PROXY v2 command must be 0 (LOCAL) or 1 (PROXY), got ${byte & 0x0f} (byte 0x${hex(byte)})`,
    );
  }
}

function checkFamily(command: number, byte: number): void {
  const family = byte >> 4;
  const transport = byte & 0x0f;
  // Valid bytes are 0x00 and 0x11-0x32: AF_UNSPEC pairs only with UNSPEC, the others never do.
  const valid = family <= AF_UNIX && transport <= 2 && (family === AF_UNSPEC) === (transport === 0);
  if (!valid) {
    throw new ProxyProtocolError("malformed", `PROXY v2 family/transport byte 0x${hex(byte)} is not valid`);
  }
  // LOCAL ignores the address block, so only a PROXY command with unix addresses is refused.
  if (family === AF_UNIX && command === 1) {
    throw new ProxyProtocolError(
      "unsupported",
      `PROXY v2 header carries AF_UNIX addresses (byte 0x${hex(byte)}); only IPv4 and IPv6 are accepted`,
    );
  }
}

function decodeTlvs(header: Uint8Array, start: number): ProxyTlv[] {
  const tlvs: ProxyTlv[] = [];
  let checksumAt = -1;
  for (let at = start; at < header.length;) {
    if (at + 3 > header.length) {
      throw new ProxyProtocolError(
        "malformed",
        `PROXY v2 TLV at offset ${at} is truncated: ${header.length - at} bytes left, a TLV needs at least 3`,
      );
    }
    const type = header[at];
    const length = header[at + 1] << 8 | header[at + 2];
    const end = at + 3 + length;
    if (end > header.length) {
      throw new ProxyProtocolError(
        "malformed",
        `PROXY v2 TLV 0x${hex(type)} at offset ${at} declares ${length} bytes, only ${
          header.length - at - 3
        } remain in the header`,
      );
    }
    if (type === PP2_TYPE_CRC32C) {
      if (length !== 4 || checksumAt >= 0) {
        throw new ProxyProtocolError(
          "malformed",
          `PROXY v2 CRC32C TLV must appear once with 4 bytes, got ${length} bytes at offset ${at}`,
        );
      }
      checksumAt = at + 3;
    }
    tlvs.push({ type, value: header.slice(at + 3, end) });
    at = end;
  }
  if (checksumAt >= 0) verifyChecksum(header, checksumAt);
  return tlvs;
}

function verifyChecksum(header: Uint8Array, at: number): void {
  const copy = header.slice();
  const view = new DataView(copy.buffer);
  const expected = view.getUint32(at);
  view.setUint32(at, 0);
  const actual = crc32c(copy);
  if (actual !== expected) {
    throw new ProxyProtocolError(
      "malformed",
      `PROXY v2 CRC32C mismatch: header says 0x${expected.toString(16)}, computed 0x${actual.toString(16)}`,
    );
  }
}

function endpoint(address: Uint8Array, port: number): ProxyAddress {
  return { address: formatIp(address), port };
}

/**
 * Encodes a v2 header. `PROXY` with `tcp`/`udp` needs both addresses, of one family. `LOCAL` may carry
 * addresses (receivers ignore them) or none (family AF_UNSPEC). `unspec` carries none. With
 * `options.checksum` a CRC32C TLV is appended. Throws `TypeError` for a header that cannot be encoded.
 */
export function encodeV2(header: ProxyHeaderInit, options: { checksum?: boolean } = {}): Uint8Array {
  const tlvs = [...header.tlvs ?? []];
  checkTlvs(tlvs);
  if (options.checksum) {
    if (tlvs.some((t) => t.type === PP2_TYPE_CRC32C)) {
      throw new TypeError("Header already has a CRC32C TLV (type 0x03); do not also pass checksum: true");
    }
    tlvs.push({ type: PP2_TYPE_CRC32C, value: new Uint8Array(4) });
  }
  const { familyByte, block } = encodeAddresses(header);
  const tlvLength = tlvs.reduce((sum, t) => sum + 3 + t.value.length, 0);
  const blockLength = block.length + tlvLength;
  if (blockLength > 0xffff) {
    throw new TypeError(`PROXY v2 address block and TLVs total ${blockLength} bytes; at most 65535 fit`);
  }
  const out = new Uint8Array(V2_FIXED_LENGTH + blockLength);
  const view = new DataView(out.buffer);
  out.set(V2_SIGNATURE);
  out[12] = 0x20 | (header.command === "PROXY" ? 1 : 0);
  out[13] = familyByte;
  view.setUint16(14, blockLength);
  out.set(block, V2_FIXED_LENGTH);
  let at = V2_FIXED_LENGTH + block.length;
  let checksumAt = -1;
  for (const tlv of tlvs) {
    out[at] = tlv.type;
    view.setUint16(at + 1, tlv.value.length);
    out.set(tlv.value, at + 3);
    if (options.checksum && tlv.type === PP2_TYPE_CRC32C) checksumAt = at + 3;
    at += 3 + tlv.value.length;
  }
  if (checksumAt >= 0) view.setUint32(checksumAt, crc32c(out));
  return out;
}

function encodeAddresses(header: ProxyHeaderInit): { familyByte: number; block: Uint8Array } {
  const { command, transport, source, destination } = header;
  checkKind(header);
  if (!source !== !destination) {
    throw new TypeError("PROXY header needs both a source and a destination address, or neither");
  }
  if (!source || !destination) {
    if (command === "PROXY" && transport !== "unspec") {
      throw new TypeError(`PROXY header with transport ${transport} needs source and destination addresses`);
    }
    return { familyByte: 0x00, block: new Uint8Array() };
  }
  if (transport === "unspec") {
    throw new TypeError("PROXY header with transport unspec cannot carry addresses");
  }
  const { src, dst } = endpointBytes(source, destination);
  const block = new Uint8Array(2 * src.length + 4);
  const view = new DataView(block.buffer);
  block.set(src);
  block.set(dst, src.length);
  view.setUint16(2 * src.length, source.port);
  view.setUint16(2 * src.length + 2, destination.port);
  const family = src.length === 4 ? AF_INET : AF_INET6;
  return { familyByte: family << 4 | TRANSPORTS.indexOf(transport), block };
}
