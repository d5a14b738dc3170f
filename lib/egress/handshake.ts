/**
 * The I/O edge of an egress listener: reads one proxy handshake (an HTTP proxy request head, or a SOCKS5
 * negotiation up to its request) off a client connection under one overall deadline, with the caps of
 * the pure parsers (`http_proxy.ts`, `socks5.ts`). On a port that serves both, the first byte decides:
 * 0x05 is SOCKS5, anything else HTTP.
 *
 * A client can make it hold at most one head cap of memory (16 KiB by default) and take at most the
 * deadline plus the linger: sending slowly does not extend the deadline. SOCKS5 messages are read
 * exactly, never past the request; HTTP bytes read past the head come back as `rest`.
 *
 * The success reply (200 for CONNECT, the SOCKS5 reply with the bound address) is the caller's: it comes
 * after the destination check and the dial.
 *
 * @module
 */

import {
  DEFAULT_MAX_HEAD_BYTES,
  DEFAULT_MAX_REQUEST_LINE_BYTES,
  type HttpParseOptions,
  type HttpProxyRequest,
  parseHttpProxyRequest,
  renderHttpProblem,
  renderHttpResponse,
} from "./http_proxy.ts";
import type { Credentials, RefusalReason } from "./request.ts";
import {
  parseSocks5Auth,
  parseSocks5Greeting,
  parseSocks5Request,
  renderSocks5AuthStatus,
  renderSocks5Method,
  selectSocks5Method,
  SOCKS5_METHOD,
  SOCKS5_VERSION,
  type Socks5Request,
  type Socks5Result,
} from "./socks5.ts";
import { errorMessage } from "../util/error.ts";
import type { EGRESS_PROTOCOLS } from "../config/constants.ts";

/** Default deadline for the whole handshake, in ms. */
export const DEFAULT_HANDSHAKE_TIMEOUT_MS = 10_000;

/** Default time allowed, after a refusal, to send the reply and let the client read it, in ms. */
export const DEFAULT_LINGER_MS = 1000;

/** Most bytes discarded after a refusal while waiting for the client to close. */
const MAX_DRAIN_BYTES = 64 * 1024;

const LF = 0x0a;

/** A proxy protocol an egress listener speaks (`egress.listeners[].protocols`). */
export type EgressProtocol = typeof EGRESS_PROTOCOLS[number];

/** The part of `Deno.Conn` the handshake needs. */
export type HandshakeConn = Pick<Deno.Conn, "read" | "write" | "closeWrite" | "close">;

/** Options of {@link readHandshake}. */
export interface HandshakeOptions extends HttpParseOptions {
  /** Protocols of the listener: one, or both (then sniffed from the first byte). */
  protocols: readonly EgressProtocol[];
  /** Deadline for the whole handshake in ms; default {@link DEFAULT_HANDSHAKE_TIMEOUT_MS}. */
  timeoutMs?: number;
  /**
   * Checks credentials (compare in constant time); when set, every client must authenticate: HTTP with
   * Proxy-Authorization Basic (else 407), SOCKS5 with username/password (else method 0xFF or status 1).
   */
  authenticate?: (credentials: Credentials) => boolean;
  /** Time allowed after a refusal to send its reply and drain, in ms; default {@link DEFAULT_LINGER_MS}. */
  lingerMs?: number;
}

/** A completed handshake: where the client wants to go, and who it authenticated as. */
export type Handshake =
  | {
    protocol: "http";
    /** The request head. */
    request: HttpProxyRequest;
    /** Bytes read past the head: the start of the tunnel or of the request body. */
    rest: Uint8Array;
    /** The authenticated user, when credentials are required. */
    user?: string;
  }
  | {
    protocol: "socks5";
    /** The CONNECT request, read exactly: nothing past it has been read. */
    request: Socks5Request;
    /** The authenticated user, when credentials are required. */
    user?: string;
  };

/** Why a handshake failed: a refusal of the parsers or of `authenticate`, the deadline, or the client leaving. */
export type HandshakeFailure = RefusalReason | "timeout" | "closed";

/** A failed handshake. By the time it is thrown, its reply has been sent and the connection closed. */
export class HandshakeError extends Error {
  /** Always `"HandshakeError"`. */
  override name = "HandshakeError";
  /** The failure class. */
  readonly reason: HandshakeFailure;
  /** The protocol, once known. */
  readonly protocol?: EgressProtocol;
  /** The bytes sent to the client before closing, if any. */
  readonly reply?: Uint8Array;

  /** Creates an error of `reason`. */
  constructor(
    reason: HandshakeFailure,
    message: string,
    options: { protocol?: EgressProtocol; reply?: Uint8Array; cause?: unknown } = {},
  ) {
    super(message, { cause: options.cause });
    this.reason = reason;
    this.protocol = options.protocol;
    this.reply = options.reply;
  }
}

/** One deadline for several reads and writes. */
class Deadline {
  readonly #expired: Promise<never>;
  #timer: ReturnType<typeof setTimeout> | undefined;

  constructor(ms: number, onExpiry: () => Error) {
    this.#expired = new Promise((_, reject) => {
      this.#timer = setTimeout(() => reject(onExpiry()), ms);
    });
    this.#expired.catch(() => {});
  }

  race<T>(operation: Promise<T>): Promise<T> {
    // Once abandoned, the operation settles when the connection is closed; nobody awaits it then.
    operation.catch(() => {});
    return Promise.race([operation, this.#expired]);
  }

  clear(): void {
    clearTimeout(this.#timer);
  }
}

/** Reads under a deadline, remembering a read abandoned at the deadline (a second read would be refused). */
class Reader {
  #pending: Promise<number | null> | undefined;
  protocol: EgressProtocol | undefined;

  readonly deadline: Deadline;

  constructor(readonly conn: HandshakeConn, timeoutMs: number) {
    this.deadline = new Deadline(
      timeoutMs,
      () =>
        new HandshakeError("timeout", `The client did not complete its handshake within ${timeoutMs} ms`, {
          protocol: this.protocol,
          // 408 needs to know it is HTTP: from the first byte, or from a listener that speaks nothing else.
          reply: this.protocol === "http" ? renderHttpResponse(408) : undefined,
        }),
    );
  }

  /** Reads at least one byte into `into`; throws a `closed` {@link HandshakeError} at EOF. */
  async read(into: Uint8Array): Promise<number> {
    const pending = this.conn.read(into);
    this.#pending = pending;
    let n: number | null;
    try {
      n = await this.deadline.race(pending);
    } catch (error) {
      if (error instanceof HandshakeError) throw error;
      throw new HandshakeError("closed", `Reading the handshake failed: ${errorMessage(error)}`, {
        protocol: this.protocol,
        cause: error,
      });
    }
    this.#pending = undefined;
    if (n === null) {
      throw new HandshakeError("closed", "The client closed the connection before the end of its handshake", {
        protocol: this.protocol,
      });
    }
    return n;
  }

  /** Reads exactly `n` bytes. */
  async exactly(n: number): Promise<Uint8Array> {
    const out = new Uint8Array(n);
    for (let filled = 0; filled < n;) filled += await this.read(out.subarray(filled));
    return out;
  }

  /** The read abandoned at the deadline, if any. */
  get pending(): Promise<number | null> | undefined {
    return this.#pending;
  }
}

async function writeAll(conn: HandshakeConn, bytes: Uint8Array, deadline: Deadline): Promise<void> {
  for (let at = 0; at < bytes.length;) at += await deadline.race(conn.write(bytes.subarray(at)));
}

/**
 * Reads one proxy handshake off `conn` (see the module description). Resolves to the request; the caller
 * checks the destination, dials, and sends the success or failure reply.
 *
 * Rejects with {@link HandshakeError} after sending the protocol's refusal (HTTP: the status of the
 * problem, 407, or 408 at the deadline; SOCKS5: method 0xFF, auth status 0x01, or a request reply; at the
 * deadline nothing), half-closing, and draining what the client still sends for up to `options.lingerMs`
 * (so that closing does not reset the connection under the reply); `conn` is closed by then.
 */
export async function readHandshake(conn: HandshakeConn, options: HandshakeOptions): Promise<Handshake> {
  const protocols = new Set(options.protocols);
  if (protocols.size === 0 || [...protocols].some((p) => p !== "http" && p !== "socks5")) {
    throw new RangeError(
      `protocols must be "http", "socks5" or both, got ${JSON.stringify(options.protocols)}`,
    );
  }
  const timeoutMs = options.timeoutMs ?? DEFAULT_HANDSHAKE_TIMEOUT_MS;
  if (!(timeoutMs > 0 && Number.isFinite(timeoutMs))) {
    throw new RangeError(`timeoutMs must be a positive number of ms, got ${timeoutMs}`);
  }
  const maxHead = options.maxHeadBytes ?? DEFAULT_MAX_HEAD_BYTES;
  if (!(Number.isSafeInteger(maxHead) && maxHead >= 64)) {
    throw new RangeError(`maxHeadBytes must be an integer of at least 64, got ${maxHead}`);
  }
  const reader = new Reader(conn, timeoutMs);
  if (protocols.size === 1) reader.protocol = [...protocols][0];
  try {
    const first = await reader.exactly(1);
    reader.protocol ??= first[0] === SOCKS5_VERSION ? "socks5" : "http";
    return reader.protocol === "http"
      ? await httpHandshake(reader, first, options)
      : await socksHandshake(reader, first, options);
  } catch (error) {
    const failure = error instanceof HandshakeError
      ? error
      : new HandshakeError("closed", `The handshake failed: ${errorMessage(error)}`, {
        protocol: reader.protocol,
        cause: error,
      });
    await refuse(reader, failure.reply, options.lingerMs ?? DEFAULT_LINGER_MS);
    throw failure;
  } finally {
    reader.deadline.clear();
  }
}

async function httpHandshake(
  reader: Reader,
  first: Uint8Array,
  options: HandshakeOptions,
): Promise<Handshake> {
  const cap = options.maxHeadBytes ?? DEFAULT_MAX_HEAD_BYTES;
  const maxLine = options.maxRequestLineBytes ?? DEFAULT_MAX_REQUEST_LINE_BYTES;
  let buffer = new Uint8Array(Math.min(cap, 1024));
  buffer.set(first);
  let length = first.length;
  let sawLf = false;
  let result = parseHttpProxyRequest(buffer.subarray(0, length), options);
  while ("need" in result) {
    if (length === buffer.length) {
      // The parser refuses a full cap, so this is unreachable; were it reached, a zero-byte read
      // would spin forever.
      if (length >= cap) throw new Error(`HTTP head buffer full at ${length} bytes without a verdict`);
      const grown = new Uint8Array(Math.min(cap, buffer.length * 4));
      grown.set(buffer);
      buffer = grown;
    }
    const n = await reader.read(buffer.subarray(length));
    const lf = buffer.subarray(length, length + n).includes(LF);
    length += n;
    sawLf ||= lf;
    // A head can only complete, or a line fail, when a line ends; re-parsing on every byte of a slow
    // sender would cost the head size per byte.
    if (lf || (!sawLf && length >= maxLine) || length >= cap) {
      result = parseHttpProxyRequest(buffer.subarray(0, length), options);
    }
  }
  if ("error" in result) {
    throw new HandshakeError(result.error.refusal, result.error.message, {
      protocol: "http",
      reply: renderHttpProblem(result.error),
    });
  }
  const { request, consumed } = result;
  let user: string | undefined;
  if (options.authenticate) {
    const credentials = request.credentials;
    if (!credentials || !options.authenticate(credentials)) {
      throw new HandshakeError(
        "unauthorized",
        credentials
          ? `Proxy credentials of user ${JSON.stringify(credentials.user)} were refused`
          : "Request has no valid Proxy-Authorization Basic credentials, and this listener requires them",
        { protocol: "http", reply: renderHttpResponse(407, { reason: "proxy authentication required" }) },
      );
    }
    user = credentials.user;
  }
  return {
    protocol: "http",
    request,
    rest: buffer.slice(consumed, length),
    ...user !== undefined && { user },
  };
}

/** Reads one SOCKS5 message, exactly: each read asks for what the parser needs and no more. */
async function socksMessage<T>(
  reader: Reader,
  parse: (bytes: Uint8Array) => Socks5Result<T>,
  initial: Uint8Array = new Uint8Array(),
): Promise<T> {
  let bytes = initial;
  while (true) {
    const result = parse(bytes);
    if ("error" in result) {
      throw new HandshakeError(result.error.refusal, result.error.message, {
        protocol: "socks5",
        reply: result.error.reply,
      });
    }
    if (!("need" in result)) return result;
    const more = await reader.exactly(result.need);
    const joined = new Uint8Array(bytes.length + more.length);
    joined.set(bytes);
    joined.set(more, bytes.length);
    bytes = joined;
  }
}

async function socksHandshake(
  reader: Reader,
  first: Uint8Array,
  options: HandshakeOptions,
): Promise<Handshake> {
  const { methods } = await socksMessage(reader, parseSocks5Greeting, first);
  const method = selectSocks5Method(methods, { authRequired: Boolean(options.authenticate) });
  if (method === SOCKS5_METHOD.noneAcceptable) {
    throw new HandshakeError(
      "unauthorized",
      `SOCKS5 client offered methods [${methods.join(", ")}]; this listener needs ${
        options.authenticate ? "2 (username/password)" : "0 (no authentication)"
      }`,
      { protocol: "socks5", reply: renderSocks5Method(method) },
    );
  }
  await writeAll(reader.conn, renderSocks5Method(method), reader.deadline);
  let user: string | undefined;
  if (options.authenticate) {
    const { credentials } = await socksMessage(reader, parseSocks5Auth);
    if (!options.authenticate(credentials)) {
      throw new HandshakeError(
        "unauthorized",
        `SOCKS5 credentials of user ${JSON.stringify(credentials.user)} were refused`,
        { protocol: "socks5", reply: renderSocks5AuthStatus(false) },
      );
    }
    await writeAll(reader.conn, renderSocks5AuthStatus(true), reader.deadline);
    user = credentials.user;
  }
  const { request } = await socksMessage(reader, parseSocks5Request);
  return { protocol: "socks5", request, ...user !== undefined && { user } };
}

/**
 * Sends `reply`, half-closes, and discards what the client still sends until it closes, for at most
 * `lingerMs` and {@link MAX_DRAIN_BYTES}: closing with unread bytes would reset the connection, and a
 * reset can destroy the reply before the client reads it. Then closes.
 */
async function refuse(reader: Reader, reply: Uint8Array | undefined, lingerMs: number): Promise<void> {
  await closeWithReply(reader.conn, reply, { lingerMs, pending: reader.pending });
}

/**
 * Sends `reply` (if any), half-closes, and drains what the client still sends for up to `lingerMs` (at
 * most 64 KiB), so that closing does not reset the connection under the reply; then closes `conn`.
 * `pending` is a read still outstanding on `conn` (a second read would be refused).
 */
export async function closeWithReply(
  conn: HandshakeConn,
  reply: Uint8Array | undefined,
  options: { lingerMs?: number; pending?: Promise<number | null> } = {},
): Promise<void> {
  if (reply) {
    const grace = new Deadline(options.lingerMs ?? DEFAULT_LINGER_MS, () => new Error("linger over"));
    try {
      await writeAll(conn, reply, grace);
      await grace.race(conn.closeWrite());
      let drained = 0;
      if (options.pending) drained += await grace.race(options.pending) ?? MAX_DRAIN_BYTES;
      const sink = new Uint8Array(4096);
      while (drained < MAX_DRAIN_BYTES) drained += await grace.race(conn.read(sink)) ?? MAX_DRAIN_BYTES;
    } catch {
      // The client left, or lingered too long: close either way.
    } finally {
      grace.clear();
    }
  }
  try {
    conn.close();
  } catch { /* already closed */ }
}
