/**
 * The `ts-dial` upgrade of tailscaled's LocalAPI (`POST /localapi/v0/dial`): how a process beside a
 * userspace-networking tailscaled opens a TCP connection into the tailnet. One unix-socket connection
 * per dial; after `101 Switching Protocols` it carries the raw bytes of the tailnet connection.
 *
 * Facts this relies on (tailscaled 1.102.3, see docs/tailscaled_dial.md):
 * - a non-tailnet target is not dialed but answered `200` with `Dial-Self: true`;
 * - a failed dial is `502` with a short text body, a refused port within milliseconds;
 * - an offline or policy-dropped node gets no answer at all (tailscaled has no dial timeout), so the
 *   caller's deadline is the only one;
 * - bytes of the tailnet connection can arrive in the same read as the 101 head.
 *
 * @module
 */

import { formatIp, parseIp } from "../net/ip.ts";
import { readUntil } from "../proxy_protocol/read_until.ts";

/** Default deadline of one dial (socket connect, request, and tailscaled's answer), in milliseconds. */
export const DEFAULT_DIAL_TIMEOUT_MS = 10_000;

/** Largest response head read from tailscaled's dial answer (it sends about 400 bytes). */
export const MAX_DIAL_HEAD_BYTES = 16 * 1024;

/** Largest part of an error answer's body that is read (tailscaled's are one line of text). */
const MAX_ERROR_BODY_BYTES = 1024;

/** Options of a dial. */
export interface DialOptions {
  /** Deadline for the socket connect, the request and tailscaled's answer (default {@link DEFAULT_DIAL_TIMEOUT_MS}). */
  timeoutMs?: number;
  /** Aborting gives up the dial; the promise rejects with the signal's reason. */
  signal?: AbortSignal;
}

/** Why reading tailscaled's answer failed. */
export type DialHandshakeFailure = "timeout" | "eof" | "malformed" | "too-large";

/** tailscaled's answer to a dial could not be read in time or made no sense. */
export class DialHandshakeError extends Error {
  override name = "DialHandshakeError";
  /** What went wrong. */
  readonly failure: DialHandshakeFailure;
  /** Creates an error of `failure`. */
  constructor(failure: DialHandshakeFailure, message: string) {
    super(message);
    this.failure = failure;
  }
}

/** A dial that tailscaled answered without upgrading: its status, headers and (capped) body text. */
export interface DialRefusal {
  status: number;
  headers: Headers;
  body: string;
}

/** Whether `value` is a {@link DialRefusal}. */
export function isDialRefusal(value: unknown): value is DialRefusal {
  const v = value as Partial<DialRefusal> | null;
  return typeof v?.status === "number" && v.headers instanceof Headers && typeof v.body === "string";
}

/**
 * A tailnet TCP connection opened through tailscaled: the LocalAPI unix socket after the upgrade. Bytes
 * that arrived together with tailscaled's answer are returned by the first reads, so nothing is lost.
 *
 * tailscaled 1.102.3 relays the two directions with two copies and tears down both when the first one
 * ends: after {@link closeWrite} (or after the node closes its side) no more bytes flow either way.
 */
export class DialedConn implements Deno.Conn<Deno.UnixAddr> {
  /** The dialed target, `ip:port` (`[ip]:port` for IPv6). */
  readonly target: string;
  readonly #conn: Deno.UnixConn;
  #pending: Uint8Array;
  #readable?: ReadableStream<Uint8Array<ArrayBuffer>>;

  /** Wraps `conn`, whose next bytes are `pending` (already read past the answer's head). */
  constructor(conn: Deno.UnixConn, target: string, pending: Uint8Array) {
    this.#conn = conn;
    this.target = target;
    this.#pending = pending;
  }

  /** The socket's local address (unnamed for a client). */
  get localAddr(): Deno.UnixAddr {
    return this.#conn.localAddr;
  }

  /** The LocalAPI socket. */
  get remoteAddr(): Deno.UnixAddr {
    return this.#conn.remoteAddr;
  }

  /** Reads bytes from the tailnet connection, first those that came with tailscaled's answer. */
  read(p: Uint8Array): Promise<number | null> {
    if (this.#pending.length === 0) return this.#conn.read(p);
    const n = Math.min(p.length, this.#pending.length);
    p.set(this.#pending.subarray(0, n));
    this.#pending = this.#pending.subarray(n);
    return Promise.resolve(n);
  }

  /** Writes bytes to the tailnet connection. */
  write(p: Uint8Array): Promise<number> {
    return this.#conn.write(p);
  }

  /** Ends sending; tailscaled then closes both directions (see the class comment). */
  closeWrite(): Promise<void> {
    return this.#conn.closeWrite();
  }

  /** Closes the connection. */
  close(): void {
    this.#conn.close();
  }

  /** Makes the connection keep the event loop alive. */
  ref(): void {
    this.#conn.ref();
  }

  /** Lets the event loop end while the connection is open. */
  unref(): void {
    this.#conn.unref();
  }

  /** The bytes from the tailnet connection as a stream (do not mix with {@link read}). */
  get readable(): ReadableStream<Uint8Array<ArrayBuffer>> {
    if (!this.#readable) {
      const pending = this.#pending.slice();
      this.#pending = new Uint8Array();
      const inner = this.#conn.readable;
      this.#readable = pending.length === 0 ? inner : ReadableStream.from((async function* () {
        yield pending;
        yield* inner;
      })());
    }
    return this.#readable;
  }

  /** A stream of bytes to the tailnet connection. */
  get writable(): WritableStream<Uint8Array<ArrayBufferLike>> {
    return this.#conn.writable;
  }

  /** Closes the connection (for `using`). */
  [Symbol.dispose](): void {
    try {
      this.close();
    } catch { /* already closed */ }
  }
}

/**
 * The canonical `ip:port` text of a dial target. Only IP addresses are dialed: a name would be resolved
 * again by tailscaled (MagicDNS, then system DNS), after tailvoy's policy looked at it.
 */
export function dialTarget(host: string, port: number): string {
  const ip = parseIp(host);
  if (!ip) {
    throw new TypeError(
      `Dial target host must be an IPv4 or IPv6 address (no name, brackets or zone), got ${
        JSON.stringify(host)
      }`,
    );
  }
  if (!Number.isInteger(port) || port < 1 || port > 65535) {
    throw new RangeError(`Dial target port must be an integer from 1 to 65535, got ${port}`);
  }
  const text = formatIp(ip);
  return ip.length === 16 ? `[${text}]:${port}` : `${text}:${port}`;
}

/** The request tailscaled's `serveDial` expects (the headers the Go client's `UserDial` sends). */
function dialRequest(host: string, port: number): Uint8Array {
  return new TextEncoder().encode(
    "POST /localapi/v0/dial HTTP/1.1\r\n" +
      "Host: local-tailscaled.sock\r\n" +
      "Connection: upgrade\r\n" +
      "Upgrade: ts-dial\r\n" +
      `Dial-Host: ${host}\r\n` +
      `Dial-Port: ${port}\r\n` +
      "Dial-Network: tcp\r\n" +
      "Content-Length: 0\r\n\r\n",
  );
}

interface ParsedAnswer {
  status: number;
  headers: Headers;
  /** For a 101: the bytes after the head. Otherwise the (capped) body. */
  rest: Uint8Array;
}

function headEnd(bytes: Uint8Array): number {
  for (let i = 0; i + 3 < bytes.length; i++) {
    if (bytes[i] === 13 && bytes[i + 1] === 10 && bytes[i + 2] === 13 && bytes[i + 3] === 10) return i;
  }
  return -1;
}

/**
 * Parses tailscaled's answer once it is complete: the head, and for a non-101 answer its body up to
 * {@link MAX_ERROR_BODY_BYTES}. `undefined` while more bytes are needed.
 */
export function parseDialAnswer(bytes: Uint8Array): ParsedAnswer | undefined {
  const end = headEnd(bytes.subarray(0, MAX_DIAL_HEAD_BYTES + 4));
  if (end < 0) {
    if (bytes.length > MAX_DIAL_HEAD_BYTES) {
      throw new DialHandshakeError(
        "too-large",
        `tailscaled's dial answer has no end of head within ${MAX_DIAL_HEAD_BYTES} bytes`,
      );
    }
    return undefined;
  }
  const lines = new TextDecoder().decode(bytes.subarray(0, end)).split("\r\n");
  const status = /^HTTP\/1\.[01] ([1-5][0-9]{2})(?: |$)/.exec(lines[0]);
  if (!status) {
    throw new DialHandshakeError(
      "malformed",
      `tailscaled's dial answer has a bad status line: ${lines[0].slice(0, 80)}`,
    );
  }
  const headers = new Headers();
  for (const line of lines.slice(1)) {
    const colon = line.indexOf(":");
    try {
      if (colon <= 0) throw new TypeError("no colon");
      headers.append(line.slice(0, colon), line.slice(colon + 1).trim());
    } catch {
      throw new DialHandshakeError(
        "malformed",
        `tailscaled's dial answer has a bad header line: ${line.slice(0, 80)}`,
      );
    }
  }
  const code = Number(status[1]);
  const after = bytes.subarray(end + 4);
  if (code === 101) return { status: code, headers, rest: after.slice() };
  const length = Number(headers.get("content-length") ?? 0);
  const want = Number.isSafeInteger(length) && length > 0 ? Math.min(length, MAX_ERROR_BODY_BYTES) : 0;
  if (after.length < want) return undefined;
  return { status: code, headers, rest: after.slice(0, want) };
}

/**
 * Dials `host:port` (an IP address) through the tailscaled listening on `socket`. Resolves to the
 * upgraded connection, or to tailscaled's answer when it did not upgrade (the caller decides what that
 * means). Rejects with a {@link DialHandshakeError} when the answer is late or malformed, with the
 * signal's reason on abort, and with the connect error when the socket cannot be reached.
 */
export async function openDial(
  socket: string,
  target: { host: string; port: number },
  options: DialOptions = {},
): Promise<DialedConn | DialRefusal> {
  const name = dialTarget(target.host, target.port);
  const host = name.slice(0, name.lastIndexOf(":")).replace(/^\[|\]$/g, "");
  const timeoutMs = options.timeoutMs ?? DEFAULT_DIAL_TIMEOUT_MS;
  const signal = options.signal;
  signal?.throwIfAborted();
  const started = performance.now();
  const late = () =>
    new DialHandshakeError("timeout", `tailscaled did not answer the dial of ${name} within ${timeoutMs} ms`);

  // A unix connect can wait on a full backlog: bound it too, and close a connection that comes late.
  const connecting = Deno.connect({ transport: "unix", path: socket });
  let timer: ReturnType<typeof setTimeout> | undefined;
  let onAbort: (() => void) | undefined;
  let conn: Deno.UnixConn;
  try {
    conn = await Promise.race([
      connecting,
      new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(late()), timeoutMs);
        onAbort = () => reject(signal?.reason);
        signal?.addEventListener("abort", onAbort, { once: true });
      }),
    ]);
  } catch (err) {
    connecting.then((c) => c.close(), () => {});
    throw err;
  } finally {
    clearTimeout(timer);
    if (onAbort) signal?.removeEventListener("abort", onAbort);
  }

  const abort = () => conn.close();
  signal?.addEventListener("abort", abort, { once: true });
  try {
    await conn.write(dialRequest(host, target.port));
    const remaining = Math.max(1, timeoutMs - (performance.now() - started));
    const { value } = await readUntil(conn, parseDialAnswer, {
      timeoutMs: remaining,
      chunkSize: 4096,
      fail: (stop, message) =>
        stop === "timeout"
          ? late()
          : new DialHandshakeError("eof", `tailscaled's dial answer for ${name}: ${message}`),
    });
    if (value.status !== 101) {
      conn.close();
      return {
        status: value.status,
        headers: value.headers,
        body: new TextDecoder().decode(value.rest).trim(),
      };
    }
    if (value.headers.get("upgrade")?.toLowerCase() !== "ts-dial") {
      throw new DialHandshakeError(
        "malformed",
        `tailscaled switched the dial of ${name} to ${
          JSON.stringify(value.headers.get("upgrade"))
        }, not ts-dial`,
      );
    }
    return new DialedConn(conn, name, value.rest);
  } catch (err) {
    try {
      conn.close();
    } catch { /* closed by the abort */ }
    if (signal?.aborted) throw signal.reason;
    throw err;
  } finally {
    signal?.removeEventListener("abort", abort);
  }
}
