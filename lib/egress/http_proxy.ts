/**
 * HTTP/1.x forward-proxy request heads (RFC 9110, RFC 9112): a strict incremental parser for `CONNECT
 * host:port` (authority-form) and absolute-form `GET http://host[:port]/path` requests, the rewritten
 * origin-form head to forward the latter, Proxy-Authorization Basic (RFC 7617), and the complete
 * responses a proxy sends on its own (errors, 407, 200 for CONNECT).
 *
 * It runs before the client is authorized, so its work is bounded by the caps whatever the input, and it
 * never throws on input: problems are values with the status to reply with. Reply bodies carry fixed text
 * and at most the host name asked for, sanitised; never other client bytes.
 *
 * Pure: no I/O (see `handshake.ts`).
 *
 * @module
 */

import {
  type Credentials,
  type Destination,
  formatAuthority,
  parseHost,
  parsePort,
  type RefusalReason,
} from "./request.ts";

/** Default cap on the whole head (request line, headers, the empty line), in bytes. */
export const DEFAULT_MAX_HEAD_BYTES = 16 * 1024;

/** Default cap on the request line, in bytes; a longer one is refused with 414. */
export const DEFAULT_MAX_REQUEST_LINE_BYTES = 8 * 1024;

/** Default cap on the number of header fields; more are refused with 431. */
export const DEFAULT_MAX_HEADERS = 100;

/** Methods forwarded in absolute form; CONNECT is the only other one accepted. */
export const FORWARD_METHODS: readonly string[] = [
  "GET",
  "HEAD",
  "POST",
  "PUT",
  "DELETE",
  "OPTIONS",
  "PATCH",
];

/** Reason phrases of the statuses this proxy replies with on its own. */
export const HTTP_STATUS_TEXT = {
  400: "Bad Request",
  403: "Forbidden",
  405: "Method Not Allowed",
  407: "Proxy Authentication Required",
  408: "Request Timeout",
  414: "URI Too Long",
  431: "Request Header Fields Too Large",
  501: "Not Implemented",
  502: "Bad Gateway",
  503: "Service Unavailable",
  504: "Gateway Timeout",
  505: "HTTP Version Not Supported",
} as const;

/** A status this proxy replies with on its own. */
export type HttpErrorStatus = keyof typeof HTTP_STATUS_TEXT;

/** The reply to a CONNECT once the tunnel is up; tunnelled bytes follow it. */
export const CONNECT_ESTABLISHED: Uint8Array = new TextEncoder().encode(
  "HTTP/1.1 200 Connection established\r\n\r\n",
);

/** One header field as received (value without surrounding whitespace). */
export interface HttpHeader {
  /** Field name as sent (compare case-insensitively). */
  name: string;
  /** Field value; bytes 0x80-0xFF kept as the code points U+0080-U+00FF. */
  value: string;
  /**
   * Whether the field is for this hop only and must not be forwarded: Connection, Keep-Alive, TE,
   * Trailer, Upgrade, every Proxy-* field, and every field Connection names (except Host and the
   * message framing fields, which the forwarded bytes still depend on).
   */
  hopByHop: boolean;
}

interface HttpRequestBase {
  /** Method token, case-sensitive. */
  method: string;
  /** Protocol version of the request. */
  version: "HTTP/1.0" | "HTTP/1.1";
  /** The request-target as sent (only printable ASCII). */
  target: string;
  /** Where the client wants to go. */
  destination: Destination;
  /** Header fields in order. */
  headers: HttpHeader[];
  /** Proxy-Authorization Basic credentials; absent when not sent or not valid Basic credentials. */
  credentials?: Credentials;
}

/** `CONNECT host:port`: a tunnel. */
export interface HttpConnectRequest extends HttpRequestBase {
  /** A tunnel request. */
  kind: "connect";
}

/** An absolute-form request to forward (`http://` only). */
export interface HttpForwardRequest extends HttpRequestBase {
  /** A request to forward. */
  kind: "forward";
  /** Origin-form target for the forwarded request: the path and query, `/` when empty. */
  path: string;
}

/** A parsed proxy request head. */
export type HttpProxyRequest = HttpConnectRequest | HttpForwardRequest;

/** Why a request head was refused, and the reply that says so. */
export interface HttpProblem {
  /** Status to reply with. */
  status: HttpErrorStatus;
  /** The failure class. */
  refusal: RefusalReason;
  /** Short fixed text for the reply body; never contains client bytes. */
  reason: string;
  /** For logs: what was wrong, with the offending value quoted and truncated. */
  message: string;
}

/**
 * Result of {@link parseHttpProxyRequest}: the request and `consumed`, the length of its head (bytes
 * after it belong to the tunnel or the body); or `need`, the least number of extra bytes that could
 * complete the head; or the problem to reply with.
 */
export type HttpParseResult =
  | { need: number }
  | { request: HttpProxyRequest; consumed: number }
  | { error: HttpProblem };

/** Caps of {@link parseHttpProxyRequest}. */
export interface HttpParseOptions {
  /** Cap on the head in bytes; default {@link DEFAULT_MAX_HEAD_BYTES}. */
  maxHeadBytes?: number;
  /** Cap on the request line in bytes (at most `maxHeadBytes`); default {@link DEFAULT_MAX_REQUEST_LINE_BYTES}. */
  maxRequestLineBytes?: number;
  /** Cap on header fields; default {@link DEFAULT_MAX_HEADERS}. */
  maxHeaders?: number;
}

const CR = 0x0d;
const LF = 0x0a;
const SP = 0x20;
const HTAB = 0x09;
/** Shortest complete head: `CONNECT a:1 HTTP/1.0\r\n\r\n`. */
const MIN_HEAD_BYTES = 24;
const HEAD_END = [CR, LF, CR, LF];
const TOKEN = /^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/;
const VERSION = /^HTTP\/([0-9])\.([0-9])$/;
const SCHEME = /^([A-Za-z][A-Za-z0-9+.-]*):\/\//;
const BASIC = /^basic +([A-Za-z0-9+/]+={0,2})$/i;
const DECIMAL = /^[0-9]+$/;
const HOP_BY_HOP = new Set(["connection", "keep-alive", "te", "trailer", "upgrade"]);
/** Never stripped even when Connection names them: the forwarded head must still frame the body. */
const KEPT = new Set(["host", "content-length", "transfer-encoding"]);
const METHODS_ALLOWED = ["CONNECT", ...FORWARD_METHODS].join(", ");
const UTF8 = new TextDecoder("utf-8", { fatal: true });

/** Bytes as a string of code points 0-255 (TextDecoder's "latin1" is windows-1252 and would remap 0x80-0x9F). */
function latin1(bytes: Uint8Array): string {
  let text = "";
  for (let i = 0; i < bytes.length; i += 4096) {
    text += String.fromCharCode(...bytes.subarray(i, i + 4096));
  }
  return text;
}

function encodeLatin1(text: string): Uint8Array {
  return Uint8Array.from(text, (c) => c.charCodeAt(0));
}

/** `text` JSON-quoted and cut to 64 characters, for log messages. */
function quote(text: string): string {
  return JSON.stringify(text.length > 64 ? `${text.slice(0, 64)}…` : text);
}

const REFUSAL: Record<HttpErrorStatus, RefusalReason> = {
  400: "malformed",
  403: "unauthorized",
  405: "unsupported",
  407: "unauthorized",
  408: "malformed",
  414: "too-large",
  431: "too-large",
  501: "unsupported",
  502: "unsupported",
  503: "unsupported",
  504: "unsupported",
  505: "unsupported",
};

function fail(status: HttpErrorStatus, reason: string, message: string): { error: HttpProblem } {
  return { error: { status, refusal: REFUSAL[status], reason, message } };
}

function isTchar(b: number): boolean {
  return b < 0x80 && TOKEN.test(String.fromCharCode(b));
}

/** The least number of bytes that could end a head after `bytes` (which hold no complete head). */
function needAfter(bytes: Uint8Array): number {
  let matched = 0;
  for (let n = Math.min(3, bytes.length); n > 0; n--) {
    if (HEAD_END.slice(0, n).every((b, i) => bytes[bytes.length - n + i] === b)) {
      matched = n;
      break;
    }
  }
  return Math.max(1, MIN_HEAD_BYTES - bytes.length, HEAD_END.length - matched);
}

/**
 * Parses a proxy request head at the start of `bytes`, strictly: CRLF line ends only, no obsolete line
 * folding, no whitespace before a field's colon, HTTP/1.0 or HTTP/1.1. Never throws on any input and
 * never looks past the head's cap; see {@link HttpParseResult}.
 */
export function parseHttpProxyRequest(bytes: Uint8Array, options: HttpParseOptions = {}): HttpParseResult {
  const maxHead = options.maxHeadBytes ?? DEFAULT_MAX_HEAD_BYTES;
  const maxLine = Math.min(options.maxRequestLineBytes ?? DEFAULT_MAX_REQUEST_LINE_BYTES, maxHead);
  const maxHeaders = options.maxHeaders ?? DEFAULT_MAX_HEADERS;
  if (bytes.length === 0) return { need: MIN_HEAD_BYTES };
  if (!isTchar(bytes[0])) {
    return fail(
      400,
      "not an HTTP request",
      `Request starts with byte 0x${
        bytes[0].toString(16).padStart(2, "0")
      }, which cannot start an HTTP method`,
    );
  }
  const window = bytes.subarray(0, Math.min(bytes.length, maxHead));
  const lineEnd = window.subarray(0, maxLine).indexOf(LF);
  if (lineEnd < 0) {
    if (bytes.length >= maxLine) {
      return fail(414, "request line too long", `Request line is longer than ${maxLine} bytes`);
    }
    return { need: needAfter(bytes) };
  }
  if (lineEnd === 0 || bytes[lineEnd - 1] !== CR) {
    return fail(400, "line ends must be CRLF", "Request line ends in a bare LF; HTTP needs CRLF");
  }
  const line = parseRequestLine(bytes.subarray(0, lineEnd - 1));
  if ("error" in line) return line;

  const fields: [number, number][] = [];
  let at = lineEnd + 1;
  while (true) {
    const lf = window.indexOf(LF, at);
    if (lf < 0) break;
    if (lf === at || bytes[lf - 1] !== CR) {
      return fail(400, "line ends must be CRLF", `Header line ${fields.length + 1} ends in a bare LF`);
    }
    if (lf === at + 1) return finish(bytes, line, fields, lf + 1);
    fields.push([at, lf - 1]);
    if (fields.length > maxHeaders) {
      return fail(431, "too many header fields", `Request has more than ${maxHeaders} header fields`);
    }
    at = lf + 1;
  }
  if (bytes.length >= maxHead) {
    return fail(431, "request head too large", `Request head is larger than ${maxHead} bytes`);
  }
  return { need: needAfter(bytes) };
}

type RequestLine =
  & Pick<HttpRequestBase, "method" | "version" | "target" | "destination">
  & ({ kind: "connect" } | { kind: "forward"; path: string });

function parseRequestLine(bytes: Uint8Array): RequestLine | { error: HttpProblem } {
  const bad = bytes.findIndex((b) => b !== SP && (b < 0x21 || b > 0x7e));
  if (bad >= 0) {
    return fail(
      400,
      "invalid request line",
      `Request line has byte 0x${
        bytes[bad].toString(16).padStart(2, "0")
      } at ${bad}; only printable ASCII is allowed`,
    );
  }
  const text = latin1(bytes);
  const parts = text.split(" ");
  if (parts.length !== 3) {
    return fail(
      400,
      "invalid request line",
      `Request line must be "METHOD TARGET HTTP/1.x" with single spaces, got ${quote(text)}`,
    );
  }
  const [method, target, versionText] = parts;
  if (!TOKEN.test(method)) {
    return fail(400, "invalid method", `Request method ${quote(method)} is not a token`);
  }
  const version = VERSION.exec(versionText);
  if (!version) {
    return fail(400, "invalid HTTP version", `Request version ${quote(versionText)} is not HTTP/x.y`);
  }
  if (version[1] !== "1" || (version[2] !== "0" && version[2] !== "1")) {
    return fail(
      505,
      "only HTTP/1.0 and HTTP/1.1 are supported",
      `Request version ${versionText} is not 1.0 or 1.1`,
    );
  }
  const base = { method, target, version: versionText as "HTTP/1.0" | "HTTP/1.1" };
  if (method === "CONNECT") {
    const destination = parseAuthority(target, undefined);
    return typeof destination === "string"
      ? fail(400, "CONNECT needs host:port", `CONNECT target ${quote(target)} ${destination}`)
      : { ...base, kind: "connect", destination };
  }
  if (method === "TRACE") {
    return fail(405, "method not allowed", "TRACE is not forwarded");
  }
  if (!FORWARD_METHODS.includes(method)) {
    return fail(
      501,
      "method not implemented",
      `Request method ${quote(method)} is not one of ${METHODS_ALLOWED}`,
    );
  }
  const scheme = SCHEME.exec(target);
  if (!scheme) {
    return target.startsWith("/")
      ? fail(
        400,
        "this is a proxy: send an absolute http:// URL, or CONNECT",
        `Request target ${quote(target)} is origin-form; a proxy needs absolute-form`,
      )
      : fail(
        400,
        "request target must be an absolute http:// URL",
        `Request target ${quote(target)} is not a URL`,
      );
  }
  const schemeName = scheme[1].toLowerCase();
  if (schemeName === "https") {
    return fail(
      400,
      "https:// URLs are not forwarded: use CONNECT",
      `Request target ${quote(target)} is an https URL; clients must tunnel it with CONNECT`,
    );
  }
  if (schemeName !== "http") {
    return fail(
      400,
      "only http:// URLs are forwarded",
      `Request target scheme ${quote(scheme[1])} is not http`,
    );
  }
  const afterScheme = target.slice(scheme[0].length);
  const end = afterScheme.search(/[/?#]/);
  const authority = end < 0 ? afterScheme : afterScheme.slice(0, end);
  const rest = end < 0 ? "" : afterScheme.slice(end);
  if (rest.includes("#")) {
    return fail(
      400,
      "URL fragments are not sent to servers",
      `Request target ${quote(target)} has a fragment`,
    );
  }
  const destination = parseAuthority(authority, 80);
  if (typeof destination === "string") {
    return fail(400, "invalid host in URL", `Request URL authority ${quote(authority)} ${destination}`);
  }
  const path = rest === "" ? "/" : rest.startsWith("?") ? `/${rest}` : rest;
  return { ...base, kind: "forward", destination, path };
}

/** `host[:port]` (IPv6 in brackets) as a destination, or why not (a phrase for a message). */
function parseAuthority(text: string, defaultPort: number | undefined): Destination | string {
  if (text.includes("@")) return "has user info; put credentials in Proxy-Authorization";
  let hostText = text;
  let portText: string | undefined;
  if (text.startsWith("[")) {
    const close = text.indexOf("]");
    if (close < 0) return "has an unclosed [";
    hostText = text.slice(0, close + 1);
    const after = text.slice(close + 1);
    if (after !== "") {
      if (!after.startsWith(":")) return "has text after the ]";
      portText = after.slice(1);
    }
  } else {
    const colon = text.lastIndexOf(":");
    if (colon >= 0) [hostText, portText] = [text.slice(0, colon), text.slice(colon + 1)];
  }
  const host = parseHost(hostText, { brackets: true });
  if (!host) return "has no valid host name or IP address (IPv6 goes in brackets)";
  const port = portText === undefined ? defaultPort : parsePort(portText);
  if (port === undefined) {
    return portText === undefined ? "has no port" : "has no valid port (1-65535)";
  }
  return { ...host, port };
}

function finish(
  bytes: Uint8Array,
  line: RequestLine,
  fields: readonly [number, number][],
  consumed: number,
): HttpParseResult {
  const raw: { name: string; value: string }[] = [];
  for (const [start, end] of fields) {
    const field = bytes.subarray(start, end);
    const colon = field.indexOf(0x3a);
    const name = latin1(field.subarray(0, Math.max(colon, 0)));
    if (colon <= 0 || !TOKEN.test(name)) {
      return fail(
        400,
        "invalid header field",
        `Header line ${quote(latin1(field))} has no valid name before its colon (no spaces, no line folding)`,
      );
    }
    const value = field.subarray(colon + 1);
    const bad = value.findIndex((b) => b !== HTAB && (b < 0x20 || b === 0x7f));
    if (bad >= 0) {
      return fail(
        400,
        "invalid header field",
        `Header ${quote(name)} has control byte 0x${value[bad].toString(16).padStart(2, "0")} in its value`,
      );
    }
    raw.push({ name, value: latin1(value).replace(/^[ \t]+|[ \t]+$/g, "") });
  }
  const all = (name: string) => raw.filter((h) => h.name.toLowerCase() === name).map((h) => h.value);
  for (const name of ["host", "proxy-authorization"]) {
    if (all(name).length > 1) {
      return fail(400, "duplicate header field", `Request has more than one ${name} header`);
    }
  }
  if (line.kind === "forward") {
    const framing = checkFraming(line.version, all("content-length"), all("transfer-encoding"));
    if (framing) return framing;
  }
  const named = new Set(
    all("connection").flatMap((v) => v.split(",")).map((t) => t.trim().toLowerCase()).filter((t) =>
      !KEPT.has(t)
    ),
  );
  const headers = raw.map(({ name, value }): HttpHeader => {
    const lower = name.toLowerCase();
    return { name, value, hopByHop: HOP_BY_HOP.has(lower) || lower.startsWith("proxy-") || named.has(lower) };
  });
  const authorization = all("proxy-authorization")[0];
  const credentials = authorization === undefined ? undefined : basicCredentials(authorization);
  return { request: { ...line, headers, ...credentials && { credentials } }, consumed };
}

/**
 * Refuses bodies whose length two parties could read differently (request smuggling): the forwarder
 * relays the body as bytes, so the origin must frame it exactly as the client meant.
 */
function checkFraming(
  version: string,
  lengths: string[],
  encodings: string[],
): { error: HttpProblem } | undefined {
  const values = lengths.flatMap((v) => v.split(",")).map((v) => v.trim());
  if (values.some((v) => !DECIMAL.test(v) || v !== values[0])) {
    return fail(
      400,
      "invalid Content-Length",
      `Content-Length ${quote(lengths.join(", "))} is not one number`,
    );
  }
  if (encodings.length === 0) return undefined;
  if (values.length > 0) {
    return fail(
      400,
      "both Content-Length and Transfer-Encoding",
      "Request has both Content-Length and Transfer-Encoding",
    );
  }
  if (version === "HTTP/1.0") {
    return fail(400, "Transfer-Encoding needs HTTP/1.1", "HTTP/1.0 request has Transfer-Encoding");
  }
  const codings = encodings.flatMap((v) => v.split(",")).map((v) => v.trim().toLowerCase());
  if (codings.at(-1) !== "chunked") {
    return fail(
      400,
      "Transfer-Encoding must end with chunked",
      `Transfer-Encoding ${quote(encodings.join(", "))} does not end with chunked`,
    );
  }
  return undefined;
}

/**
 * The credentials of a `Basic` Proxy-Authorization value (RFC 7617: base64 of UTF-8 `user:password`),
 * or `undefined` when it is not valid Basic credentials (another scheme, bad base64, not UTF-8, no colon,
 * control characters).
 */
export function basicCredentials(value: string): Credentials | undefined {
  const token = BASIC.exec(value)?.[1];
  if (token === undefined || token.length % 4 !== 0) return undefined;
  let text: string;
  try {
    text = UTF8.decode(Uint8Array.from(atob(token), (c) => c.charCodeAt(0)));
  } catch {
    return undefined;
  }
  const colon = text.indexOf(":");
  // deno-lint-ignore no-control-regex
  if (colon < 0 || /[\u0000-\u001f\u007f]/.test(text)) return undefined;
  return { user: text.slice(0, colon), password: text.slice(colon + 1) };
}

/**
 * The head to send the origin for an absolute-form request: origin-form target, `Host` from the URL
 * (RFC 9112 §3.2.2: the client's Host is replaced), the client's other end-to-end fields in order, and
 * `Connection: close`, so that the origin closes after one response and no second request of the client
 * can ride the same connection past the destination check.
 */
export function forwardHead(request: HttpForwardRequest): Uint8Array {
  const lines = [
    `${request.method} ${request.path} ${request.version}`,
    `Host: ${formatAuthority(request.destination, { defaultPort: 80 })}`,
  ];
  for (const { name, value, hopByHop } of request.headers) {
    if (!hopByHop && name.toLowerCase() !== "host") lines.push(`${name}: ${value}`);
  }
  lines.push("Connection: close", "", "");
  return encodeLatin1(lines.join("\r\n"));
}

/** Options of {@link renderHttpResponse}. */
export interface HttpResponseOptions {
  /** Short fixed text for the body; control and non-ASCII characters become `?`. */
  reason?: string;
  /** The host (or host:port) the client asked for, appended to the body; anything unusual becomes `?`. */
  host?: string;
}

/**
 * A complete response this proxy sends on its own before closing: status line, `Connection: close`, a
 * short text body (`tailvoy egress: REASON[: HOST]`), `Proxy-Authenticate: Basic realm="tailvoy"` for
 * 407 and `Allow` for 405.
 */
export function renderHttpResponse(status: HttpErrorStatus, options: HttpResponseOptions = {}): Uint8Array {
  const text = HTTP_STATUS_TEXT[status];
  const reason = (options.reason ?? text.toLowerCase()).slice(0, 200).replace(/[^\x20-\x7e]/g, "?");
  const host = options.host === undefined
    ? ""
    : `: ${options.host.slice(0, 262).replace(/[^A-Za-z0-9.:_\[\]-]/g, "?")}`;
  const body = `tailvoy egress: ${reason}${host}\n`;
  const lines = [`HTTP/1.1 ${status} ${text}`];
  if (status === 407) lines.push('Proxy-Authenticate: Basic realm="tailvoy"');
  if (status === 405) lines.push(`Allow: ${METHODS_ALLOWED}`);
  lines.push(
    "Content-Type: text/plain; charset=utf-8",
    `Content-Length: ${body.length}`,
    "Connection: close",
    "",
    body,
  );
  return new TextEncoder().encode(lines.join("\r\n"));
}

/** The response for a refused head: its status and its fixed reason. */
export function renderHttpProblem(problem: HttpProblem): Uint8Array {
  return renderHttpResponse(problem.status, { reason: problem.reason });
}
