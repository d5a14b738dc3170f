/**
 * TLS ClientHello parsing for SNI routing of TLS passthrough (RFC 8446 §4.1.2, RFC 6066 §3, RFC 7301).
 *
 * The hello is reassembled across records and reads: post-quantum key shares (X25519MLKEM768, about
 * 1.2 KB) make hellos larger than one segment at Tailscale's 1280-byte MTU, so the SNI is often not in the
 * first read. Only the fields routing needs are returned; the caller replays the raw bytes to the
 * backend verbatim.
 *
 * It runs before the caller is authorized, so its work is bounded for any input: {@link ClientHelloParser}
 * keeps its state between reads (each byte copied once, each record header parsed once, the message
 * parsed once), and streams cap the record count ({@link DEFAULT_MAX_HELLO_RECORDS}).
 *
 * Nothing here does I/O except {@link readClientHello}.
 *
 * @module
 */

import { type ConnReader, readUntil } from "../proxy_protocol/read_until.ts";
import { Cursor } from "./cursor.ts";
import { ClientHelloError } from "./errors.ts";
import { sniHostName } from "./hostname.ts";
import { ClientHelloReassembler, type ClientHelloWork } from "./records.ts";

export { ClientHelloError, type ClientHelloErrorReason } from "./errors.ts";
export type { ClientHelloWork } from "./records.ts";
export type { ConnReader } from "../proxy_protocol/read_until.ts";

/** Default cap on the whole hello, record headers included, in bytes. */
export const DEFAULT_MAX_HELLO_BYTES = 16 * 1024;

/**
 * Default cap on the records a hello read from a stream may span. Any hello under our 16 KiB cap fits
 * one record (2^14 bytes) and real clients send it in one, 1-3 when re-framed; splitting it finer is
 * what SNI-filter evasion tools do on the open internet, which a tailnet does not need. 64 leaves wide
 * headroom (records averaging 256 bytes at the byte cap), yet stops a hello framed as 1-byte records
 * after 384 bytes instead of 2,704 records.
 */
export const DEFAULT_MAX_HELLO_RECORDS = 64;

/** Default deadline for the whole hello, in ms. */
export const DEFAULT_HELLO_TIMEOUT_MS = 5000;

const EXT_SERVER_NAME = 0;
const EXT_ALPN = 16;
const EXT_SUPPORTED_VERSIONS = 43;
const NAME_TYPE_HOST_NAME = 0;

/** What routing needs from a ClientHello. */
export interface ClientHello {
  /** SNI host name, lower-cased, no trailing dot; absent when not sent or when it was an IP literal. */
  sni?: string;
  /** ALPN protocol names in client preference order; empty when not sent. */
  alpn: string[];
  /** `legacy_version` (0x0303 for TLS 1.2 and 1.3 clients). */
  legacyVersion: number;
  /** `supported_versions` in client order, GREASE values included; empty when not sent (TLS ≤ 1.2). */
  supportedVersions: number[];
  /** Bytes of the records that carried the hello; anything after it belongs to the next record. */
  consumed: number;
}

/** Options of {@link parseClientHello} and {@link ClientHelloParser}. */
export interface ParseClientHelloOptions {
  /** Cap on the hello's records, headers included; default {@link DEFAULT_MAX_HELLO_BYTES}. */
  maxBytes?: number;
  /**
   * Cap on the number of records the hello may span (`Infinity` for none). Default
   * {@link DEFAULT_MAX_HELLO_RECORDS} for streams ({@link ClientHelloParser}, {@link readClientHello});
   * none for {@link parseClientHello}, which accepts any framing RFC 8446 allows.
   */
  maxRecords?: number;
  /** Counters incremented as the hello is read (tests and benchmarks check the work stays linear). */
  work?: ClientHelloWork;
}

/** Options of {@link readClientHello}. */
export interface ReadClientHelloOptions extends ParseClientHelloOptions {
  /** Deadline for the whole hello in ms; default {@link DEFAULT_HELLO_TIMEOUT_MS}. */
  timeoutMs?: number;
  /** Bytes already read from the connection (e.g. left over after a PROXY header). */
  initial?: Uint8Array;
}

/**
 * Parses the ClientHello at the start of `bytes`, a TLS byte stream cut anywhere. Returns
 * `{ needMore: true }` until the whole hello has arrived. Throws {@link ClientHelloError} as soon as the
 * bytes cannot be a valid ClientHello: `not-tls` when the stream is not TLS, `too-large` past
 * `options.maxBytes`, `too-many-records` past `options.maxRecords`, `unsupported` for SSL 3.0/SSLv2
 * framing, `malformed` for any bad length, a duplicate extension, or an SNI host name that is not a DNS
 * name.
 *
 * For bytes arriving over time use {@link ClientHelloParser}: calling this again on a growing buffer
 * re-reads it from the start every time.
 */
export function parseClientHello(
  bytes: Uint8Array,
  options: ParseClientHelloOptions = {},
): ClientHello | { needMore: true } {
  return new ClientHelloParser({ ...options, maxRecords: options.maxRecords ?? Infinity }).push(bytes);
}

/**
 * Parses a ClientHello fed in chunks as they arrive, keeping its state between them: the work for a
 * whole hello is linear in its size however it is cut. Results and errors are those of
 * {@link parseClientHello} on all the bytes pushed so far (with `options.maxRecords` defaulting to
 * {@link DEFAULT_MAX_HELLO_RECORDS}).
 */
export class ClientHelloParser {
  readonly #reassembler: ClientHelloReassembler;
  readonly #work?: ClientHelloWork;
  #hello?: ClientHello;
  #error?: unknown;

  /** Creates a parser for one stream; throws `RangeError` for a limit that is not a positive integer. */
  constructor(options: ParseClientHelloOptions = {}) {
    this.#reassembler = new ClientHelloReassembler({
      maxBytes: options.maxBytes ?? DEFAULT_MAX_HELLO_BYTES,
      maxRecords: options.maxRecords ?? DEFAULT_MAX_HELLO_RECORDS,
      work: options.work,
    });
    this.#work = options.work;
  }

  /**
   * Feeds the next bytes of the stream. Returns `{ needMore: true }` until the hello is complete, then
   * the hello (the same one on later calls, which ignore their bytes). Throws {@link ClientHelloError}
   * as {@link parseClientHello} does, and again on every later call.
   */
  push(chunk: Uint8Array): ClientHello | { needMore: true } {
    if (this.#error !== undefined) throw this.#error;
    if (this.#hello) return this.#hello;
    const reassembled = this.#reassembler.push(chunk);
    if (!reassembled) return { needMore: true };
    if (this.#work) {
      this.#work.messageParses++;
      this.#work.bytesExamined += reassembled.message.length;
    }
    try {
      return this.#hello = { ...parseMessage(reassembled.message), consumed: reassembled.consumed };
    } catch (error) {
      // Remembered: the reassembler keeps returning the message, which must not be parsed again.
      this.#error = error;
      throw error;
    }
  }
}

/** Parses a complete ClientHello handshake message (4-byte header included). */
function parseMessage(message: Uint8Array): Omit<ClientHello, "consumed"> {
  const body = new Cursor(message.subarray(4), "ClientHello");
  const legacyVersion = body.u16("legacy_version");
  body.bytes(32, "random");
  body.vector(1, "legacy_session_id", { min: 0, max: 32 });
  const suites = body.vector(2, "cipher_suites", { min: 2, max: 0xfffe });
  if (suites.remaining % 2) {
    throw new ClientHelloError("malformed", `ClientHello cipher_suites length ${suites.remaining} is odd`);
  }
  body.vector(1, "legacy_compression_methods", { min: 1 });
  const hello: Omit<ClientHello, "consumed"> = { legacyVersion, alpn: [], supportedVersions: [] };
  // Extensions are optional before TLS 1.3; when present they must fill the rest exactly.
  if (body.remaining === 0) return hello;
  const extensions = body.vector(2, "extensions", { min: 0 });
  body.end();
  const seen = new Set<number>();
  while (extensions.remaining > 0) {
    const type = extensions.u16("extension type");
    const data = extensions.vector(2, `extension ${type}`, { min: 0 });
    if (seen.has(type)) {
      throw new ClientHelloError("malformed", `ClientHello has extension ${type} more than once`);
    }
    seen.add(type);
    if (type === EXT_SERVER_NAME) hello.sni = parseServerName(data);
    else if (type === EXT_ALPN) hello.alpn = parseAlpn(data);
    else if (type === EXT_SUPPORTED_VERSIONS) hello.supportedVersions = parseSupportedVersions(data);
  }
  return hello;
}

function parseServerName(data: Cursor): string | undefined {
  const list = data.vector(2, "server_name_list", { min: 1 });
  data.end();
  let sni: string | undefined;
  let seenHostName = false;
  while (list.remaining > 0) {
    const nameType = list.u8("name_type");
    const name = list.vector(2, "host_name", { min: 1 });
    // Unknown name types are skipped: they share the 16-bit length framing in practice.
    if (nameType !== NAME_TYPE_HOST_NAME) continue;
    if (seenHostName) {
      throw new ClientHelloError("malformed", "ClientHello server_name has two host_name entries");
    }
    seenHostName = true;
    sni = sniHostName(name.bytes(name.remaining, "host_name"));
  }
  return sni;
}

function parseAlpn(data: Cursor): string[] {
  const list = data.vector(2, "protocol_name_list", { min: 2 });
  data.end();
  const protocols: string[] = [];
  while (list.remaining > 0) {
    const name = list.vector(1, "protocol_name", { min: 1 });
    protocols.push(String.fromCharCode(...name.bytes(name.remaining, "protocol_name")));
  }
  return protocols;
}

function parseSupportedVersions(data: Cursor): number[] {
  const list = data.vector(1, "supported_versions", { min: 2, max: 254 });
  data.end();
  if (list.remaining % 2) {
    throw new ClientHelloError("malformed", `ClientHello supported_versions length ${list.remaining} is odd`);
  }
  const versions: number[] = [];
  while (list.remaining > 0) versions.push(list.u16("version"));
  return versions;
}

/**
 * Reads a whole ClientHello off `conn` (after `options.initial`, if given). Resolves to the parsed
 * hello and `bytes`: every byte read so far, `initial` included, to replay to the backend verbatim.
 *
 * Rejects with {@link ClientHelloError}: `timeout` when the hello is not complete within
 * `options.timeoutMs`, `eof` when the peer closes first, or any parse error (`not-tls` on the first
 * byte when the client does not speak TLS, `too-many-records` past {@link DEFAULT_MAX_HELLO_RECORDS}
 * records unless `options.maxRecords` says otherwise). Parsing work is linear in the bytes read,
 * however thinly they arrive. Errors of `conn.read` propagate unchanged. On any rejection
 * the caller must close `conn`: a read may still be pending, and closing it is what ends that read.
 */
export async function readClientHello(
  conn: ConnReader,
  options: ReadClientHelloOptions = {},
): Promise<{ hello: ClientHello; bytes: Uint8Array }> {
  const parser = new ClientHelloParser(options);
  let fed = 0;
  const { value, bytes } = await readUntil(conn, (buf) => {
    // readUntil hands over everything read so far; only the new bytes go to the parser.
    const result = parser.push(buf.subarray(fed));
    fed = buf.length;
    return "needMore" in result ? undefined : result;
  }, {
    timeoutMs: options.timeoutMs ?? DEFAULT_HELLO_TIMEOUT_MS,
    initial: options.initial,
    chunkSize: 16 * 1024,
    fail: (stop, message) => new ClientHelloError(stop, `Reading the TLS ClientHello failed: ${message}`),
  });
  return { hello: value, bytes: bytes.slice() };
}
