/**
 * SOCKS5 (RFC 1928) with username/password authentication (RFC 1929): incremental parsers for the
 * client's greeting, credentials and request, and builders for every reply.
 *
 * Each parser takes the bytes received so far for its message and returns `need`, the exact number of
 * bytes the next step of the message takes (so a reader can ask for exactly that and never read into
 * the relayed stream), the message and its length, or the problem with the reply to send before closing.
 * They never throw on input, and no message is longer than 513 bytes.
 *
 * Pure: no I/O (see `handshake.ts`).
 *
 * @module
 */

import { formatIp, parseIp } from "../net/ip.ts";
import { type Credentials, type Destination, parseHost, type RefusalReason } from "./request.ts";

/** The protocol version byte of SOCKS5 messages. */
export const SOCKS5_VERSION = 0x05;

/** The version byte of RFC 1929 username/password messages. */
export const SOCKS5_AUTH_VERSION = 0x01;

/** Authentication methods (RFC 1928 §3). */
export const SOCKS5_METHOD = {
  /** No authentication required. */
  noAuth: 0x00,
  /** Username/password (RFC 1929). */
  userPassword: 0x02,
  /** No acceptable method: the client must close. */
  noneAcceptable: 0xff,
} as const;

/** REP codes of a request reply (RFC 1928 §6). */
export const SOCKS5_REPLY = {
  succeeded: 0x00,
  generalFailure: 0x01,
  notAllowed: 0x02,
  networkUnreachable: 0x03,
  hostUnreachable: 0x04,
  connectionRefused: 0x05,
  ttlExpired: 0x06,
  commandNotSupported: 0x07,
  addressTypeNotSupported: 0x08,
} as const;

/** A REP code. */
export type Socks5ReplyCode = typeof SOCKS5_REPLY[keyof typeof SOCKS5_REPLY];

/** A CONNECT request (the only command supported). */
export interface Socks5Request {
  /** Always `connect`: BIND and UDP ASSOCIATE are refused. */
  command: "connect";
  /** Where the client wants to go. */
  destination: Destination;
}

/** Why a message was refused, and the bytes to send before closing. */
export interface Socks5Problem {
  /** The failure class. */
  refusal: RefusalReason;
  /** The reply to send before closing; absent when the protocol has none (e.g. not SOCKS5 at all). */
  reply?: Uint8Array;
  /** For logs: what was wrong, with the offending value. */
  message: string;
}

/** What a SOCKS5 parser returns: see the module description. */
export type Socks5Result<T> = { need: number } | (T & { consumed: number }) | { error: Socks5Problem };

const ATYP_IPV4 = 0x01;
const ATYP_DOMAIN = 0x03;
const ATYP_IPV6 = 0x04;
const UTF8 = new TextDecoder("utf-8", { fatal: true });

const hex = (b: number) => `0x${b.toString(16).padStart(2, "0")}`;

function problem(refusal: RefusalReason, message: string, reply?: Uint8Array): { error: Socks5Problem } {
  return { error: { refusal, message, ...reply && { reply } } };
}

/**
 * Parses the greeting: VER (5), NMETHODS (at least 1), METHODS. A wrong version gets no reply (it is not
 * SOCKS5); no methods gets "no acceptable method".
 */
export function parseSocks5Greeting(bytes: Uint8Array): Socks5Result<{ methods: number[] }> {
  if (bytes.length < 2) return { need: 2 - bytes.length };
  if (bytes[0] !== SOCKS5_VERSION) {
    return problem("malformed", `SOCKS greeting has version ${hex(bytes[0])}; only SOCKS5 (0x05) is spoken`);
  }
  const count = bytes[1];
  if (count === 0) {
    return problem(
      "malformed",
      "SOCKS5 greeting offers no authentication methods",
      renderSocks5Method(SOCKS5_METHOD.noneAcceptable),
    );
  }
  if (bytes.length < 2 + count) return { need: 2 + count - bytes.length };
  return { methods: [...bytes.subarray(2, 2 + count)], consumed: 2 + count };
}

/**
 * The method to choose: username/password when `options.authRequired`, else no authentication; "no
 * acceptable method" when the client did not offer it.
 */
export function selectSocks5Method(methods: readonly number[], options: { authRequired: boolean }): number {
  const wanted = options.authRequired ? SOCKS5_METHOD.userPassword : SOCKS5_METHOD.noAuth;
  return methods.includes(wanted) ? wanted : SOCKS5_METHOD.noneAcceptable;
}

/** The method selection reply: VER, METHOD. */
export function renderSocks5Method(method: number): Uint8Array {
  return Uint8Array.of(SOCKS5_VERSION, method);
}

/**
 * Parses the RFC 1929 sub-negotiation: VER (1), ULEN (at least 1), UNAME, PLEN, PASSWD. User name and
 * password must be UTF-8 without control characters. Every problem is answered with status 0x01.
 */
export function parseSocks5Auth(bytes: Uint8Array): Socks5Result<{ credentials: Credentials }> {
  const refuse = (message: string) => problem("unauthorized", message, renderSocks5AuthStatus(false));
  if (bytes.length < 2) return { need: 2 - bytes.length };
  if (bytes[0] !== SOCKS5_AUTH_VERSION) {
    return refuse(`SOCKS5 username/password message has version ${hex(bytes[0])}, not 0x01`);
  }
  const userLength = bytes[1];
  if (userLength === 0) return refuse("SOCKS5 username/password message has an empty user name");
  const plenAt = 2 + userLength;
  if (bytes.length < plenAt + 1) return { need: plenAt + 1 - bytes.length };
  const end = plenAt + 1 + bytes[plenAt];
  if (bytes.length < end) return { need: end - bytes.length };
  const user = text(bytes.subarray(2, plenAt));
  const password = text(bytes.subarray(plenAt + 1, end));
  if (user === undefined || password === undefined) {
    return refuse("SOCKS5 user name or password is not UTF-8 text without control characters");
  }
  return { credentials: { user, password }, consumed: end };
}

function text(bytes: Uint8Array): string | undefined {
  try {
    const decoded = UTF8.decode(bytes);
    // deno-lint-ignore no-control-regex
    return /[\u0000-\u001f\u007f]/.test(decoded) ? undefined : decoded;
  } catch {
    return undefined;
  }
}

/** The RFC 1929 status reply: VER 1, STATUS 0x00 (success) or 0x01 (failure: the client must close). */
export function renderSocks5AuthStatus(ok: boolean): Uint8Array {
  return Uint8Array.of(SOCKS5_AUTH_VERSION, ok ? 0x00 : 0x01);
}

/**
 * Parses a request: VER (5), CMD, RSV (0), ATYP, DST.ADDR, DST.PORT. CONNECT only: BIND and UDP
 * ASSOCIATE (and unknown commands) get 0x07 once the whole request is in; an unknown ATYP gets 0x08 at
 * once (its length is unknown); a bad version, RSV, port 0 or domain name gets 0x01.
 */
export function parseSocks5Request(bytes: Uint8Array): Socks5Result<{ request: Socks5Request }> {
  if (bytes.length < 4) return { need: 4 - bytes.length };
  const general = (message: string) =>
    problem("malformed", message, renderSocks5Reply(SOCKS5_REPLY.generalFailure));
  if (bytes[0] !== SOCKS5_VERSION) return general(`SOCKS5 request has version ${hex(bytes[0])}, not 0x05`);
  if (bytes[2] !== 0) return general(`SOCKS5 request has reserved byte ${hex(bytes[2])}, not 0x00`);
  const atyp = bytes[3];
  let end: number;
  if (atyp === ATYP_IPV4) end = 4 + 4 + 2;
  else if (atyp === ATYP_IPV6) end = 4 + 16 + 2;
  else if (atyp === ATYP_DOMAIN) {
    if (bytes.length < 5) return { need: 5 - bytes.length };
    if (bytes[4] === 0) return general("SOCKS5 request has an empty domain name");
    end = 5 + bytes[4] + 2;
  } else {
    return problem(
      "unsupported",
      `SOCKS5 request has address type ${hex(atyp)}; only 0x01 (IPv4), 0x03 (domain) and 0x04 (IPv6) exist`,
      renderSocks5Reply(SOCKS5_REPLY.addressTypeNotSupported),
    );
  }
  if (bytes.length < end) return { need: end - bytes.length };
  // Read in full first: the client gets its reply with nothing of its request left unread.
  if (bytes[1] !== 0x01) {
    const name = bytes[1] === 0x02 ? "BIND" : bytes[1] === 0x03 ? "UDP ASSOCIATE" : "an unknown command";
    return problem(
      "unsupported",
      `SOCKS5 request command ${hex(bytes[1])} (${name}) is not supported; only CONNECT (0x01) is`,
      renderSocks5Reply(SOCKS5_REPLY.commandNotSupported),
    );
  }
  const port = bytes[end - 2] << 8 | bytes[end - 1];
  if (port === 0) return general("SOCKS5 request has destination port 0");
  if (atyp === ATYP_DOMAIN) {
    const raw = bytes.subarray(5, end - 2);
    const host = raw.every((b) => b > 0x20 && b < 0x7f) ? parseHost(String.fromCharCode(...raw)) : undefined;
    if (!host) {
      return general(
        `SOCKS5 request domain ${
          JSON.stringify(String.fromCharCode(...raw.subarray(0, 64)))
        } is not a valid host name`,
      );
    }
    return { request: { command: "connect", destination: { ...host, port } }, consumed: end };
  }
  const address = bytes.slice(4, end - 2);
  const destination: Destination = {
    host: formatIp(address),
    kind: atyp === ATYP_IPV4 ? "ipv4" : "ipv6",
    port,
  };
  return { request: { command: "connect", destination }, consumed: end };
}

/**
 * A request reply: VER, REP, RSV, and BND.ADDR/BND.PORT from `bound` (IP text; default `0.0.0.0:0`, for
 * failures and when the bound address is not to be disclosed). Throws `TypeError` for a `bound` address
 * that is not IP text: that is a bug in the caller, not input.
 */
export function renderSocks5Reply(
  code: Socks5ReplyCode,
  bound: { address: string; port: number } = { address: "0.0.0.0", port: 0 },
): Uint8Array {
  const address = parseIp(bound.address);
  if (!address || !Number.isInteger(bound.port) || bound.port < 0 || bound.port > 0xffff) {
    throw new TypeError(
      `SOCKS5 reply bound address must be IP text and a port 0-65535, got ${
        JSON.stringify(bound.address)
      } port ${bound.port}`,
    );
  }
  const out = new Uint8Array(4 + address.length + 2);
  out.set([SOCKS5_VERSION, code, 0x00, address.length === 4 ? ATYP_IPV4 : ATYP_IPV6]);
  out.set(address, 4);
  out.set([bound.port >> 8, bound.port & 0xff], 4 + address.length);
  return out;
}
