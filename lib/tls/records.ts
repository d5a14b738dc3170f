/**
 * Reassembles the first TLS handshake message from plaintext records (RFC 8446 §5.1), across any number
 * of records and any split of the byte stream. Work per call is proportional to the record count, not
 * the byte count, so re-running it after every read stays cheap.
 *
 * @module
 */

import { ClientHelloError } from "./errors.ts";

/** TLS record content type `handshake`. */
const HANDSHAKE_RECORD = 22;
/** Handshake type `client_hello`. */
const CLIENT_HELLO = 1;
const RECORD_HEADER = 5;
const HANDSHAKE_HEADER = 4;
/** Largest record body accepted: 2^14 plus the TLS 1.3 ciphertext allowance. */
export const MAX_RECORD_LENGTH: number = (1 << 14) + 256;

/** A complete handshake message (its 4-byte header included) and the bytes of records it took. */
export interface Reassembled {
  /** The handshake message: type, 24-bit length, body. */
  message: Uint8Array;
  /** Bytes of records spanned, headers included; the next record starts there. */
  consumed: number;
}

/**
 * Reassembles the ClientHello handshake message at the start of `bytes`. Returns `undefined` while more
 * bytes are needed. Throws {@link ClientHelloError} as soon as the bytes present cannot be a ClientHello:
 * `not-tls` when the first byte is not a handshake record, `unsupported` for SSL 3.0 or SSLv2 framing,
 * `too-large` when the records would exceed `maxBytes`, `malformed` otherwise.
 */
export function reassembleClientHello(bytes: Uint8Array, maxBytes: number): Reassembled | undefined {
  const fragments: Uint8Array[] = [];
  let received = 0; // handshake bytes present so far
  let declared = 0; // handshake bytes the record headers seen so far announce
  let needed = -1; // handshake message length, once its header is in
  for (let at = 0; at < bytes.length;) {
    checkRecordHeader(bytes.subarray(at, at + RECORD_HEADER), at);
    if (at + RECORD_HEADER > bytes.length) return undefined;
    const length = bytes[at + 3] << 8 | bytes[at + 4];
    const end = at + RECORD_HEADER + length;
    if (end > maxBytes) {
      throw new ClientHelloError(
        "too-large",
        `ClientHello records reach ${end} bytes, over the limit of ${maxBytes} (record at offset ${at})`,
      );
    }
    const fragment = bytes.subarray(at + RECORD_HEADER, Math.min(end, bytes.length));
    fragments.push(fragment);
    received += fragment.length;
    declared += length;
    if (needed < 0 && received >= HANDSHAKE_HEADER) needed = handshakeLength(fragments, maxBytes);
    if (needed >= 0 && declared > needed) {
      // The ClientHello must end on a record boundary (it can precede a key change).
      throw new ClientHelloError(
        "malformed",
        `TLS record at offset ${at} extends ${declared - needed} bytes past the ${needed}-byte ClientHello`,
      );
    }
    if (end > bytes.length) return undefined;
    if (declared === needed) return { message: concat(fragments, needed), consumed: end };
    at = end;
  }
  return undefined;
}

/** Checks the record header bytes present (possibly fewer than 5), so garbage fails on its first byte. */
function checkRecordHeader(header: Uint8Array, at: number): void {
  if (header.length > 0 && header[0] !== HANDSHAKE_RECORD) {
    if (at > 0) {
      throw new ClientHelloError(
        "malformed",
        `TLS record at offset ${at} has content type ${header[0]}, but the ClientHello is not complete yet`,
      );
    }
    // An SSLv2-compatible hello has the high bit set in its first length byte.
    if (header[0] & 0x80) {
      throw new ClientHelloError("unsupported", `SSLv2-framed ClientHello (first byte 0x${hex(header[0])})`);
    }
    throw new ClientHelloError(
      "not-tls",
      `Connection did not start with a TLS handshake record: first byte 0x${hex(header[0])}`,
    );
  }
  if (header.length > 2) {
    const version = header[1] << 8 | header[2];
    if (version === 0x0300) {
      throw new ClientHelloError("unsupported", `TLS record at offset ${at} has SSL 3.0 version 0x0300`);
    }
    if (version < 0x0301 || version > 0x0304) {
      throw new ClientHelloError(
        "malformed",
        `TLS record at offset ${at} has version 0x${
          version.toString(16).padStart(4, "0")
        }, not 0x0301-0x0304`,
      );
    }
  } else if (header.length > 1 && header[1] !== 0x03) {
    throw new ClientHelloError(
      "malformed",
      `TLS record at offset ${at} has major version ${header[1]}, not 3`,
    );
  }
  if (header.length > 4) {
    const length = header[3] << 8 | header[4];
    if (length === 0 || length > MAX_RECORD_LENGTH) {
      throw new ClientHelloError(
        "malformed",
        `TLS handshake record at offset ${at} has length ${length}, not 1-${MAX_RECORD_LENGTH}`,
      );
    }
  }
}

/** Reads the handshake header (which may itself straddle records) and returns the whole message length. */
function handshakeLength(fragments: Uint8Array[], maxBytes: number): number {
  const head = concat(fragments, HANDSHAKE_HEADER);
  if (head[0] !== CLIENT_HELLO) {
    throw new ClientHelloError(
      "malformed",
      `First handshake message has type ${head[0]}, not 1 (ClientHello)`,
    );
  }
  const length = HANDSHAKE_HEADER + (head[1] << 16 | head[2] << 8 | head[3]);
  if (length > maxBytes) {
    throw new ClientHelloError(
      "too-large",
      `ClientHello of ${length} bytes is over the limit of ${maxBytes}`,
    );
  }
  return length;
}

/** The first `length` bytes of the fragments, joined. */
function concat(fragments: Uint8Array[], length: number): Uint8Array {
  const out = new Uint8Array(length);
  let at = 0;
  for (const fragment of fragments) {
    if (at >= length) break;
    const part = fragment.subarray(0, length - at);
    out.set(part, at);
    at += part.length;
  }
  return out;
}

function hex(n: number): string {
  return n.toString(16).padStart(2, "0");
}
