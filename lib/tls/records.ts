/**
 * Reassembles the first TLS handshake message from plaintext records (RFC 8446 §5.1), across any number
 * of records and any split of the byte stream. The state is kept between chunks, so each byte is copied
 * once and each record header parsed once however the stream is cut: a hello dribbled one byte per read
 * costs the same as one read (re-parsing the buffer after every read was quadratic, issue #16).
 *
 * @module
 */

import { ClientHelloError } from "./errors.ts";
import { hex } from "../util/bytes.ts";

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
 * Counters of the work done on one hello, for tests and benchmarks that check it stays linear in the
 * input however the input is cut. Pass a zeroed object; it is incremented, never reset.
 */
export interface ClientHelloWork {
  /** Stream bytes looked at: record header and handshake bytes copied, and message bytes parsed. */
  bytesExamined: number;
  /** Record headers parsed (each at most once). */
  recordHeaders: number;
  /** Parses of the complete handshake message (at most one per hello). */
  messageParses: number;
}

/** Options of {@link ClientHelloReassembler}. */
export interface ReassemblerOptions {
  /** Cap on the hello's records, headers included, in bytes: a positive integer. */
  maxBytes: number;
  /** Cap on the number of records the hello may span: a positive integer, or `Infinity` for none. */
  maxRecords: number;
  /** Counters to increment as bytes are examined. */
  work?: ClientHelloWork;
}

/**
 * Reassembles the ClientHello handshake message at the start of a byte stream fed in chunks of any
 * size. {@link push} returns `undefined` while more bytes are needed and the message once complete.
 * Throws {@link ClientHelloError} as soon as the bytes fed cannot be a ClientHello: `not-tls` when the
 * first byte is not a handshake record, `unsupported` for SSL 3.0 or SSLv2 framing, `too-large` when the
 * records would exceed `maxBytes`, `too-many-records` past `maxRecords`, `malformed` otherwise.
 */
export class ClientHelloReassembler {
  readonly #maxBytes: number;
  readonly #maxRecords: number;
  readonly #work?: ClientHelloWork;
  /** Stream offset of the current record. */
  #recordStart = 0;
  /** The current record's header, as far as it has arrived. */
  readonly #header = new Uint8Array(RECORD_HEADER);
  #headerFill = 0;
  /** Body bytes of the current record still to come (once its header is complete). */
  #recordLeft = 0;
  #records = 0;
  /** Handshake bytes the record headers seen so far announce. */
  #declared = 0;
  /** Handshake bytes received so far. */
  #received = 0;
  /** The handshake header, until the message length is known. */
  readonly #handshakeHeader = new Uint8Array(HANDSHAKE_HEADER);
  /** The whole message, allocated once its length is known (so at most `maxBytes`). */
  #message?: Uint8Array;
  #result?: Reassembled;
  #error?: unknown;

  /** Creates a reassembler for one stream. */
  constructor(options: ReassemblerOptions) {
    const { maxBytes, maxRecords } = options;
    if (!(Number.isInteger(maxBytes) && maxBytes > 0)) {
      throw new RangeError(`maxBytes must be a positive integer, got ${maxBytes}`);
    }
    if (!((Number.isInteger(maxRecords) || maxRecords === Infinity) && maxRecords > 0)) {
      throw new RangeError(`maxRecords must be a positive integer or Infinity, got ${maxRecords}`);
    }
    this.#maxBytes = maxBytes;
    this.#maxRecords = maxRecords;
    this.#work = options.work;
  }

  /**
   * Feeds the next bytes of the stream. Returns the message once its last record is complete (then the
   * same result for any later call; bytes after it are not looked at), `undefined` until then. After a
   * throw, every later call throws the same error.
   */
  push(chunk: Uint8Array): Reassembled | undefined {
    if (this.#error !== undefined) throw this.#error;
    if (this.#result) return this.#result;
    try {
      return this.#push(chunk);
    } catch (error) {
      this.#error = error;
      throw error;
    }
  }

  #push(chunk: Uint8Array): Reassembled | undefined {
    for (let i = 0; i < chunk.length;) {
      if (this.#headerFill < RECORD_HEADER) {
        const part = chunk.subarray(i, i + RECORD_HEADER - this.#headerFill);
        this.#header.set(part, this.#headerFill);
        this.#headerFill += part.length;
        i += part.length;
        this.#examined(part.length);
        // Checked on every partial header too, so garbage fails on its first byte.
        checkRecordHeader(this.#header.subarray(0, this.#headerFill), this.#recordStart);
        if (this.#headerFill === RECORD_HEADER) this.#startRecord();
        continue;
      }
      const fragment = chunk.subarray(i, i + this.#recordLeft);
      i += fragment.length;
      this.#recordLeft -= fragment.length;
      this.#examined(fragment.length);
      this.#append(fragment);
      if (this.#recordLeft > 0) continue;
      const end = this.#recordStart + RECORD_HEADER + this.#recordLength();
      if (this.#message && this.#declared === this.#message.length) {
        return this.#result = { message: this.#message, consumed: end };
      }
      this.#recordStart = end;
      this.#headerFill = 0;
    }
    return undefined;
  }

  #examined(n: number): void {
    if (this.#work) this.#work.bytesExamined += n;
  }

  #recordLength(): number {
    return this.#header[3] << 8 | this.#header[4];
  }

  /** Checks a complete record header against the limits and what the handshake header announced. */
  #startRecord(): void {
    const at = this.#recordStart;
    if (this.#work) this.#work.recordHeaders++;
    if (++this.#records > this.#maxRecords) {
      throw new ClientHelloError(
        "too-many-records",
        `ClientHello spans more than ${this.#maxRecords} TLS records (record ${this.#records} at offset ${at}); ` +
          "send it in fewer, larger records (clients use 1-3)",
      );
    }
    const length = this.#recordLength();
    const end = at + RECORD_HEADER + length;
    if (end > this.#maxBytes) {
      throw new ClientHelloError(
        "too-large",
        `ClientHello records reach ${end} bytes, over the limit of ${this.#maxBytes} (record at offset ${at})`,
      );
    }
    this.#declared += length;
    this.#recordLeft = length;
    this.#checkDeclared();
  }

  /** Copies handshake bytes: into the handshake header until the message length is known, then the message. */
  #append(fragment: Uint8Array): void {
    if (!this.#message) {
      const head = fragment.subarray(0, HANDSHAKE_HEADER - this.#received);
      this.#handshakeHeader.set(head, this.#received);
      this.#received += head.length;
      if (this.#received < HANDSHAKE_HEADER) return;
      this.#message = new Uint8Array(handshakeLength(this.#handshakeHeader, this.#maxBytes));
      this.#message.set(this.#handshakeHeader);
      this.#checkDeclared();
      fragment = fragment.subarray(head.length);
    }
    // Fits: records may not announce more than the message holds (#checkDeclared).
    this.#message.set(fragment, this.#received);
    this.#received += fragment.length;
  }

  /** Once the message length is known, the records may not announce more. */
  #checkDeclared(): void {
    const needed = this.#message?.length;
    if (needed !== undefined && this.#declared > needed) {
      // The ClientHello must end on a record boundary (it can precede a key change).
      throw new ClientHelloError(
        "malformed",
        `TLS record at offset ${this.#recordStart} extends ${
          this.#declared - needed
        } bytes past the ${needed}-byte ClientHello`,
      );
    }
  }
}

/** Checks the record header bytes present (possibly fewer than 5). */
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

/** Checks the 4-byte handshake header and returns the whole message length. */
function handshakeLength(head: Uint8Array, maxBytes: number): number {
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
