/**
 * Properties of the egress proxy handshake (`lib/egress/`):
 * - the HTTP and SOCKS5 parsers never throw, whatever the bytes (random, token soup, valid messages
 *   mutated or cut short), and every answer is bounded: `need` at least 1 and (HTTP) a lower bound,
 *   (SOCKS5) exact; a result that consumed only bytes it was given and reads the same from those alone;
 *   a refusal with a known status and a printable reply that carries no client bytes;
 * - well-formed requests round-trip (CONNECT, absolute-form, SOCKS5 greeting/auth/request), and every
 *   strict prefix of one asks for more;
 * - the handshake edge, fed any bytes in any read sizes, ends exactly as the pure parsers do on the whole
 *   input: the same request, the same replies written, and (SOCKS5) not one byte read past the request.
 *
 * @module
 */

import assert from "node:assert/strict";
import fc from "fast-check";
import {
  FORWARD_METHODS,
  forwardHead,
  HTTP_STATUS_TEXT,
  type HttpParseOptions,
  type HttpParseResult,
  type HttpProxyRequest,
  parseHttpProxyRequest,
  renderHttpProblem,
} from "../../lib/egress/http_proxy.ts";
import {
  parseSocks5Auth,
  parseSocks5Greeting,
  parseSocks5Request,
  renderSocks5AuthStatus,
  renderSocks5Method,
  selectSocks5Method,
  SOCKS5_METHOD,
  type Socks5Result,
} from "../../lib/egress/socks5.ts";
import {
  type Handshake,
  type HandshakeConn,
  HandshakeError,
  readHandshake,
} from "../../lib/egress/handshake.ts";
import type { Credentials, Destination } from "../../lib/egress/request.ts";
import { formatIp } from "../../lib/net/ip.ts";
import type { Target } from "./mod.ts";

const latin1 = (text: string) => Uint8Array.from(text, (c) => c.charCodeAt(0) & 0xff);
const show = (bytes: Uint8Array) => String.fromCharCode(...bytes);

function concat(...parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  parts.reduce((at, p) => (out.set(p, at), at + p.length), 0);
  return out;
}

const byte = fc.integer({ min: 0, max: 255 });
const hasControl = (text: string) =>
  [...text].some((c) => c.charCodeAt(0) < 0x20 || c.charCodeAt(0) === 0x7f);

// --- Destinations, with the text a client would send and what they must parse to ---

interface HostCase {
  /** As sent in HTTP (IPv6 in brackets). */
  http: string;
  /** As sent in a SOCKS5 request: address type and address bytes. */
  socks: { atyp: 1 | 3 | 4; address: Uint8Array };
  expected: Pick<Destination, "host" | "kind">;
}

const label = fc.stringMatching(/^[a-z0-9]([a-z0-9-]{0,12}[a-z0-9])?$/);
const nameHost: fc.Arbitrary<HostCase> = fc.tuple(
  fc.array(label, { minLength: 1, maxLength: 4 }),
  fc.boolean(),
  fc.array(fc.boolean(), { maxLength: 60 }),
).map(([labels, dot, upper]) => {
  // A numeric last label reads as legacy IPv4; such names are refused, so never generate one.
  const name = /^[0-9]+$/.test(labels.at(-1)!) ? [...labels, "x"].join(".") : labels.join(".");
  const spelt = [...name].map((c, i) => upper[i] ? c.toUpperCase() : c).join("") + (dot ? "." : "");
  return {
    http: spelt,
    socks: { atyp: 3, address: concat(Uint8Array.of(spelt.length), latin1(spelt)) },
    expected: { host: name, kind: "name" },
  };
});
const ipv4Host: fc.Arbitrary<HostCase> = fc.uint8Array({ minLength: 4, maxLength: 4 }).map((a) => ({
  http: formatIp(a),
  socks: { atyp: 1, address: a },
  expected: { host: formatIp(a), kind: "ipv4" },
}));
const ipv6Host: fc.Arbitrary<HostCase> = fc.tuple(
  fc.array(fc.oneof(fc.constant(0), fc.integer({ min: 0, max: 0xffff })), { minLength: 8, maxLength: 8 }),
  fc.boolean(),
).map(([groups, full]) => {
  const a = Uint8Array.from(groups.flatMap((g) => [g >> 8, g & 0xff]));
  const text = full ? groups.map((g) => g.toString(16).toUpperCase()).join(":") : formatIp(a);
  return { http: `[${text}]`, socks: { atyp: 4, address: a }, expected: { host: formatIp(a), kind: "ipv6" } };
});
const hostCase = fc.oneof({ weight: 3, arbitrary: nameHost }, ipv4Host, ipv6Host);
const port = fc.integer({ min: 1, max: 0xffff });

// --- Well-formed HTTP proxy requests ---

const TOKEN_CHARS = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";
/** Fields whose meaning the parser checks; the generated ones avoid them so expectations stay simple. */
const SPECIAL =
  /^(host|connection|keep-alive|te|trailer|upgrade|content-length|transfer-encoding|proxy-.*)$/i;
const headerName = fc.string({ unit: fc.constantFrom(...TOKEN_CHARS), minLength: 1, maxLength: 12 })
  .filter((name) => !SPECIAL.test(name));
const valueChar = fc.oneof(
  { weight: 8, arbitrary: fc.integer({ min: 0x21, max: 0x7e }) },
  fc.constantFrom(0x20, 0x09),
  fc.integer({ min: 0x80, max: 0xff }),
).map((c) => String.fromCharCode(c));
const headerValue = fc.string({ unit: valueChar, maxLength: 24 }).map((v) =>
  v.replace(/^[ \t]+|[ \t]+$/g, "")
);
const ows = fc.constantFrom("", " ", "  ", "\t", " \t");
const pathText = fc.string({
  unit: fc.constantFrom(..."abcXYZ019-._~%!$&'()*+,;=:@/?"),
  maxLength: 30,
});
const credentials: fc.Arbitrary<Credentials> = fc.record({
  user: fc.string({ maxLength: 10 }).filter((u) => !u.includes(":") && !hasControl(u)),
  password: fc.string({ maxLength: 10 }).filter((p) => !hasControl(p)),
}, { noNullPrototype: true }); // parsed credentials are plain objects

interface HttpCase {
  head: Uint8Array;
  expected: HttpProxyRequest;
}

const httpCase: fc.Arbitrary<HttpCase> = fc.record({
  method: fc.constantFrom("CONNECT", ...FORWARD_METHODS),
  host: hostCase,
  port,
  defaultPort: fc.boolean(),
  path: pathText,
  version: fc.constantFrom("HTTP/1.0" as const, "HTTP/1.1" as const),
  headers: fc.array(fc.tuple(headerName, ows, headerValue, ows), { maxLength: 8 }),
  hostHeader: fc.option(headerValue, { nil: undefined }),
  creds: fc.option(credentials, { nil: undefined }),
  connectionNames: fc.array(fc.nat(), { maxLength: 3 }),
}).map((r) => {
  const connect = r.method === "CONNECT";
  const port = connect || !r.defaultPort ? r.port : 80;
  const authority = connect || !r.defaultPort ? `${r.host.http}:${r.port}` : r.host.http;
  const path = r.path === "" || r.path.startsWith("?") ? r.path : `/${r.path}`;
  const target = connect ? authority : `http://${authority}${path}`;
  const fields: [string, string, string][] = r.headers.map(([name, before, value, after]) => [
    name,
    `${before}${value}${after}`,
    value,
  ]);
  if (r.hostHeader !== undefined) fields.unshift(["Host", r.hostHeader, r.hostHeader]);
  const hopNames = r.connectionNames.flatMap((i) =>
    r.headers.length ? [r.headers[i % r.headers.length][0]] : []
  );
  if (hopNames.length > 0) fields.push(["Connection", hopNames.join(", "), hopNames.join(", ")]);
  let basic: string | undefined;
  if (r.creds) {
    const utf8 = new TextEncoder().encode(`${r.creds.user}:${r.creds.password}`);
    basic = `Basic ${btoa(String.fromCharCode(...utf8))}`;
    fields.push(["Proxy-Authorization", basic, basic]);
  }
  const head = `${r.method} ${target} ${r.version}\r\n${
    fields.map(([n, v]) => `${n}:${v}\r\n`).join("")
  }\r\n`;
  const hop = new Set(hopNames.map((n) => n.toLowerCase()));
  const headers = fields.map(([name, , value]) => ({
    name,
    value,
    hopByHop: /^(connection|proxy-authorization)$/i.test(name) || hop.has(name.toLowerCase()),
  }));
  const destination = { ...r.host.expected, port };
  const base = {
    method: r.method,
    version: r.version,
    target,
    destination,
    headers,
    ...r.creds && { credentials: r.creds },
  };
  const expected: HttpProxyRequest = connect
    ? { kind: "connect", ...base }
    : { kind: "forward", ...base, path: path === "" ? "/" : path.startsWith("?") ? `/${path}` : path };
  return { head: latin1(head), expected };
});

// --- Arbitrary bytes, biased towards almost-requests ---

const HTTP_TOKENS = [
  "GET",
  "CONNECT",
  "POST",
  "TRACE",
  "get",
  " ",
  " ",
  "http://",
  "https://",
  "HTTP://",
  "/",
  "?",
  "#",
  "@",
  ":",
  "[",
  "]",
  "::1",
  "a.example",
  "127.1",
  "1.2.3.4",
  "80",
  "0",
  "65536",
  " HTTP/1.1",
  " HTTP/1.0",
  " HTTP/2.0",
  "\r\n",
  "\r\n",
  "\r\n\r\n",
  "\r",
  "\n",
  "Host: ",
  "Proxy-Authorization: Basic ",
  "dTpw",
  "Connection: ",
  "Content-Length: ",
  "Transfer-Encoding: chunked",
  "X: ",
  "\t",
  "\0",
  "\x05",
  "\x7f",
  "\xff",
];

const httpSoup = fc.array(
  fc.oneof(
    { weight: 4, arbitrary: fc.constantFrom(...HTTP_TOKENS) },
    fc.string({ unit: "binary-ascii", maxLength: 4 }),
  ),
  { maxLength: 24 },
).map((tokens) => latin1(tokens.join("")));

function mutate<T>(base: fc.Arbitrary<T>, bytesOf: (value: T) => Uint8Array): fc.Arbitrary<Uint8Array> {
  return fc.tuple(
    base,
    fc.array(fc.tuple(fc.nat(), byte), { minLength: 1, maxLength: 3 }),
    fc.uint8Array({ maxLength: 16 }),
    fc.option(fc.nat()),
  ).map(([value, edits, payload, cut]) => {
    const bytes = concat(bytesOf(value), payload);
    for (const [at, b] of edits) bytes[at % bytes.length] = b;
    return cut === null ? bytes : bytes.subarray(0, cut % (bytes.length + 1));
  });
}

const httpBytes: fc.Arbitrary<Uint8Array> = fc.oneof(
  fc.uint8Array({ maxLength: 200 }),
  { weight: 3, arbitrary: httpSoup },
  { weight: 3, arbitrary: mutate(httpCase, (c) => c.head) },
  fc.tuple(httpCase, fc.uint8Array({ maxLength: 16 })).map(([c, payload]) => concat(c.head, payload)),
  // Long inputs, to reach the caps: a request line or headers repeated.
  fc.tuple(httpCase, fc.integer({ min: 1, max: 400 }), fc.constantFrom("X-Pad: yyyyyyyyyy\r\n", "x", "\r\n"))
    .map(([c, times, pad]) => {
      const text = show(c.head);
      const cut = text.indexOf("\r\n") + 2;
      return latin1(text.slice(0, cut) + pad.repeat(times) + text.slice(cut));
    }),
);

const httpOptions: fc.Arbitrary<HttpParseOptions> = fc.record({
  maxHeadBytes: fc.integer({ min: 64, max: 16 * 1024 }),
  maxRequestLineBytes: fc.integer({ min: 32, max: 8 * 1024 }),
  maxHeaders: fc.integer({ min: 0, max: 100 }),
}, { requiredKeys: [] });

/** A refusal is well-formed: a known status, a short fixed reason, a printable reply. */
function assertProblem(result: { error: { status: number; reason: string; message: string } }): void {
  const { status, reason, message } = result.error;
  assert.ok(status in HTTP_STATUS_TEXT, `status ${status}`);
  assert.match(reason, /^[\x20-\x7e]{1,80}$/, "reason must be short printable text");
  assert.ok(message.length > 0 && message.length < 400, `message of ${message.length} characters`);
  const reply = show(renderHttpProblem(result.error as Parameters<typeof renderHttpProblem>[0]));
  assert.match(reply, /^[\x20-\x7e\r\n]*$/, "reply must be printable ASCII");
  assert.ok(reply.endsWith(`tailvoy egress: ${reason}\n`), "the body is the fixed reason and nothing else");
}

function parseHttp(bytes: Uint8Array, options?: HttpParseOptions): HttpParseResult {
  try {
    return parseHttpProxyRequest(bytes, options);
  } catch (error) {
    assert.fail(`parseHttpProxyRequest threw: ${error instanceof Error ? error.stack : error}`);
  }
}

// --- SOCKS5 messages ---

interface SocksCase {
  greeting: Uint8Array;
  methods: number[];
  auth?: { bytes: Uint8Array; credentials: Credentials };
  request: Uint8Array;
  destination: Destination;
}

const utf8Text = fc.string({ minLength: 1, maxLength: 20 })
  .filter((s) => !hasControl(s))
  .map((s) => ({ text: s, bytes: new TextEncoder().encode(s) }))
  .filter((s) => s.bytes.length <= 255);

const socksCase: fc.Arbitrary<SocksCase> = fc.record({
  methods: fc.array(byte, { minLength: 1, maxLength: 8 }),
  auth: fc.option(fc.tuple(utf8Text, fc.option(utf8Text)), { nil: undefined }),
  host: hostCase,
  port,
}).map(({ methods, auth, host, port }) => {
  const offered = auth ? [...methods, SOCKS5_METHOD.userPassword] : [...methods, SOCKS5_METHOD.noAuth];
  const password = auth?.[1] ?? { text: "", bytes: new Uint8Array() };
  return {
    greeting: Uint8Array.of(5, offered.length, ...offered),
    methods: offered,
    ...auth && {
      auth: {
        bytes: concat(
          Uint8Array.of(1, auth[0].bytes.length),
          auth[0].bytes,
          Uint8Array.of(password.bytes.length),
          password.bytes,
        ),
        credentials: { user: auth[0].text, password: password.text },
      },
    },
    request: concat(
      Uint8Array.of(5, 1, 0, host.socks.atyp),
      host.socks.address,
      Uint8Array.of(port >> 8, port & 0xff),
    ),
    destination: { ...host.expected, port },
  };
});

const socksMessageBytes: fc.Arbitrary<Uint8Array> = fc.oneof(
  fc.uint8Array({ maxLength: 64 }),
  fc.tuple(fc.constantFrom(0, 1, 4, 5), fc.uint8Array({ maxLength: 40 })).map(([v, rest]) =>
    concat(Uint8Array.of(v), rest)
  ),
  fc.tuple(fc.constantFrom(1, 2, 3, 9), fc.constantFrom(0, 1, 3, 4, 7), fc.uint8Array({ maxLength: 40 }))
    .map(([cmd, atyp, rest]) => concat(Uint8Array.of(5, cmd, 0, atyp), rest)),
  mutate(socksCase, (c) => c.greeting),
  mutate(socksCase, (c) => c.auth?.bytes ?? c.greeting),
  mutate(socksCase, (c) => c.request),
);

type SocksParser = (bytes: Uint8Array) => Socks5Result<object>;
const SOCKS_PARSERS: [string, SocksParser, (reply: Uint8Array) => boolean][] = [
  ["greeting", parseSocks5Greeting, (r) => show(r) === "\x05\xff"],
  ["auth", parseSocks5Auth, (r) => show(r) === "\x01\x01"],
  [
    "request",
    parseSocks5Request,
    (r) => r.length === 10 && r[0] === 5 && [1, 7, 8].includes(r[1]) && r[3] === 1,
  ],
];

/** Feeds a parser exactly what it asks for from `stream`; the outcome and the bytes it took. */
function feedExactly<T>(parse: (b: Uint8Array) => Socks5Result<T>, stream: Uint8Array) {
  let taken = 0;
  while (true) {
    const result = parse(stream.subarray(0, taken));
    if (!("need" in result)) return { result, taken };
    assert.ok(Number.isInteger(result.need) && result.need >= 1, `need ${result.need}`);
    if (taken + result.need > stream.length) return { result, taken };
    taken += result.need;
  }
}

// --- The edge over a connection that hands out the input in given read sizes ---

/** Returns `bytes` in reads of the given sizes (cycled), then EOF; records writes. */
class SplitConn implements HandshakeConn {
  #at = 0;
  #reads = 0;
  written: Uint8Array[] = [];
  constructor(readonly bytes: Uint8Array, readonly sizes: readonly number[]) {}

  read(p: Uint8Array): Promise<number | null> {
    if (this.#at >= this.bytes.length) return Promise.resolve(null);
    const size = this.sizes.length > 0 ? this.sizes[this.#reads++ % this.sizes.length] : Infinity;
    const n = Math.min(size, p.length, this.bytes.length - this.#at);
    p.set(this.bytes.subarray(this.#at, this.#at + n));
    this.#at += n;
    return Promise.resolve(n);
  }
  write(p: Uint8Array): Promise<number> {
    this.written.push(p.slice());
    return Promise.resolve(p.length);
  }
  closeWrite(): Promise<void> {
    return Promise.resolve();
  }
  close(): void {}
  unread(): Uint8Array {
    return this.bytes.subarray(this.#at);
  }
}

const readSizes = fc.array(
  fc.oneof({ weight: 4, arbitrary: fc.integer({ min: 1, max: 8 }) }, fc.integer({ min: 1, max: 2000 })),
  { maxLength: 12 },
);

async function edge(
  conn: SplitConn,
  options: Parameters<typeof readHandshake>[1],
): Promise<Handshake | HandshakeError> {
  try {
    return await readHandshake(conn, { timeoutMs: 60_000, lingerMs: 60_000, ...options });
  } catch (error) {
    if (!(error instanceof HandshakeError)) {
      assert.fail(`expected only HandshakeError, got ${error instanceof Error ? error.stack : error}`);
    }
    assert.notEqual(error.reason, "timeout");
    return error;
  }
}

const ALICE: Credentials = { user: "alice", password: "pw" };
const isAlice = (c: Credentials) => c.user === ALICE.user && c.password === ALICE.password;

const ALICE_AUTH = concat(Uint8Array.of(1, 5), latin1("alice"), Uint8Array.of(2), latin1("pw"));

/** A whole SOCKS5 handshake; mostly with the listener's expectation (credentials or none) met. */
const socksHandshake = fc.tuple(socksCase, fc.boolean(), fc.nat(7)).map(([c, alice, flip]) => ({
  stream: concat(c.greeting, c.auth ? (alice ? ALICE_AUTH : c.auth.bytes) : new Uint8Array(), c.request),
  auth: flip === 0 ? !c.auth : Boolean(c.auth),
}));

/** What the SOCKS5 edge must do with `stream`, worked out with the pure parsers alone. */
function socksExpected(stream: Uint8Array, auth: boolean) {
  const writes: Uint8Array[] = [];
  let at = 0;
  const step = <T>(parse: (b: Uint8Array) => Socks5Result<T>) => {
    const { result, taken } = feedExactly(parse, stream.subarray(at));
    at += taken;
    if ("error" in result && result.error.reply) writes.push(result.error.reply);
    return result;
  };
  const greeting = step(parseSocks5Greeting);
  if (!("methods" in greeting)) {
    return { writes, end: "need" in greeting ? "closed" : greeting.error.refusal };
  }
  const method = selectSocks5Method(greeting.methods, { authRequired: auth });
  writes.push(renderSocks5Method(method));
  if (method === SOCKS5_METHOD.noneAcceptable) return { writes, end: "unauthorized" };
  if (auth) {
    const sent = step(parseSocks5Auth);
    if (!("credentials" in sent)) return { writes, end: "need" in sent ? "closed" : sent.error.refusal };
    writes.push(renderSocks5AuthStatus(isAlice(sent.credentials)));
    if (!isAlice(sent.credentials)) return { writes, end: "unauthorized" };
  }
  const request = step(parseSocks5Request);
  if (!("request" in request)) return { writes, end: "need" in request ? "closed" : request.error.refusal };
  return { writes, end: "ok", request: request.request, consumed: at };
}

/** The egress targets. */
export const PROPERTIES: Target[] = [
  {
    name: "egress/http_parse_total",
    property: fc.property(
      httpBytes,
      httpOptions,
      fc.uint8Array({ maxLength: 24 }),
      (bytes, options, more) => {
        const result = parseHttp(bytes, options);
        if ("error" in result) return assertProblem(result);
        if ("need" in result) {
          assert.ok(Number.isInteger(result.need) && result.need >= 1, `need ${result.need}`);
          // need is a lower bound: fewer extra bytes never complete a head.
          const fewer = parseHttp(concat(bytes, more.subarray(0, result.need - 1)), options);
          assert.ok(!("request" in fewer), "a head within fewer than need bytes");
          return;
        }
        const cap = options.maxHeadBytes ?? 16 * 1024;
        assert.ok(
          result.consumed >= 1 && result.consumed <= Math.min(bytes.length, cap),
          `consumed ${result.consumed}`,
        );
        // Nothing past the head was looked at.
        assert.deepEqual(parseHttp(bytes.subarray(0, result.consumed), options), result);
        assert.ok(result.request.destination.port >= 1 && result.request.destination.port <= 0xffff);
        if (result.request.kind === "forward") {
          const head = show(forwardHead(result.request));
          assert.ok(head.endsWith("Connection: close\r\n\r\n"));
          assert.equal(head.split("\r\n").filter((l) => /^(proxy-|connection:)/i.test(l)).length, 1);
        }
      },
    ),
  },
  {
    name: "egress/http_round_trip",
    property: fc.property(httpCase, fc.uint8Array({ maxLength: 32 }), (c, payload) => {
      const result = parseHttp(concat(c.head, payload));
      assert.ok("request" in result, `not parsed: ${JSON.stringify(result)}`);
      assert.equal(result.consumed, c.head.length);
      assert.deepEqual(result.request, c.expected);
      if (result.request.kind === "forward") {
        const lines = show(forwardHead(result.request)).split("\r\n");
        assert.equal(
          lines[0],
          `${c.expected.method} ${(c.expected as { path: string }).path} ${c.expected.version}`,
        );
        assert.match(lines[1], /^Host: /);
        const kept = c.expected.headers.filter((h) => !h.hopByHop && h.name.toLowerCase() !== "host");
        assert.deepEqual(lines.slice(2, -3), kept.map((h) => `${h.name}: ${h.value}`));
      }
    }),
  },
  {
    name: "egress/http_prefix_needs_more",
    property: fc.property(httpCase, fc.array(fc.nat(), { minLength: 1, maxLength: 6 }), (c, cuts) => {
      for (const raw of cuts) {
        const cut = raw % c.head.length;
        const result = parseHttp(c.head.subarray(0, cut));
        assert.ok("need" in result, `prefix ${cut}/${c.head.length}: ${JSON.stringify(result)}`);
        assert.ok(result.need >= 1 && result.need <= c.head.length - cut, `need ${result.need} at ${cut}`);
      }
    }),
  },
  {
    name: "egress/socks5_parse_total",
    property: fc.property(socksMessageBytes, (bytes) => {
      for (const [name, parse, validReply] of SOCKS_PARSERS) {
        let result;
        try {
          result = parse(bytes);
        } catch (error) {
          assert.fail(`${name} threw: ${error instanceof Error ? error.stack : error}`);
        }
        if ("error" in result) {
          assert.ok(result.error.message.length > 0);
          if (result.error.reply) {
            assert.ok(validReply(result.error.reply), `${name} reply ${result.error.reply}`);
          }
        } else if ("need" in result) {
          assert.ok(
            Number.isInteger(result.need) && result.need >= 1 && result.need <= 257,
            `need ${result.need}`,
          );
        } else {
          assert.ok(result.consumed >= 2 && result.consumed <= bytes.length, `consumed ${result.consumed}`);
          assert.deepEqual(
            parse(bytes.subarray(0, result.consumed)),
            result,
            `${name} looked past its message`,
          );
        }
        // Fed exactly what it asks for, a parser takes no byte it does not use.
        const fed = feedExactly(parse, bytes);
        if ("consumed" in fed.result) assert.equal(fed.result.consumed, fed.taken, `${name} over-asked`);
      }
    }),
  },
  {
    name: "egress/socks5_round_trip",
    property: fc.property(socksCase, fc.uint8Array({ maxLength: 8 }), (c, payload) => {
      const greeting = feedExactly(parseSocks5Greeting, concat(c.greeting, payload));
      assert.deepEqual(greeting.result, { methods: c.methods, consumed: c.greeting.length });
      if (c.auth) {
        const auth = feedExactly(parseSocks5Auth, concat(c.auth.bytes, payload));
        assert.deepEqual(auth.result, { credentials: c.auth.credentials, consumed: c.auth.bytes.length });
      }
      const request = feedExactly(parseSocks5Request, concat(c.request, payload));
      assert.deepEqual(request.result, {
        request: { command: "connect", destination: c.destination },
        consumed: c.request.length,
      });
    }),
  },
  {
    name: "egress/handshake_http_agrees",
    property: fc.asyncProperty(
      fc.oneof(httpBytes, httpCase.map((c) => c.head)),
      readSizes,
      httpOptions,
      async (bytes, sizes, options) => {
        const expected = parseHttp(bytes, options);
        const conn = new SplitConn(bytes, sizes);
        const outcome = await edge(conn, { protocols: ["http"], ...options });
        if (outcome instanceof HandshakeError) {
          assert.equal(outcome.protocol, "http");
          if ("error" in expected) {
            assert.equal(outcome.reason, expected.error.refusal, outcome.message);
            assert.deepEqual(conn.written, [renderHttpProblem(expected.error)]);
          } else {
            assert.ok("need" in expected, `edge failed (${outcome.message}), the parser found a request`);
            assert.equal(outcome.reason, "closed", outcome.message);
            assert.deepEqual(conn.written, []);
          }
          return;
        }
        assert.ok(
          "request" in expected,
          `edge found a request, the parser did not: ${JSON.stringify(expected)}`,
        );
        assert.equal(outcome.protocol, "http");
        assert.deepEqual(outcome.request, expected.request);
        if (outcome.protocol === "http") {
          assert.deepEqual(concat(outcome.rest, conn.unread()), bytes.subarray(expected.consumed));
        }
        assert.deepEqual(conn.written, []);
      },
    ),
  },
  {
    name: "egress/handshake_socks5_exact",
    property: fc.asyncProperty(
      fc.oneof(
        { weight: 2, arbitrary: socksHandshake },
        mutate(socksHandshake, (h) => h.stream).chain((stream) =>
          fc.record({ stream: fc.constant(stream), auth: fc.boolean() })
        ),
      ),
      fc.uint8Array({ maxLength: 16 }),
      readSizes,
      async ({ stream: handshake, auth }, payload, sizes) => {
        // Only SOCKS5 here: the sniffed byte decides the parser, and HTTP has its own target.
        const stream = concat(Uint8Array.of(5), handshake.subarray(1), payload);
        const expected = socksExpected(stream, auth);
        const conn = new SplitConn(stream, sizes);
        const outcome = await edge(conn, {
          protocols: ["http", "socks5"],
          ...auth && { authenticate: isAlice },
        });
        assert.deepEqual(conn.written, expected.writes);
        if (outcome instanceof HandshakeError) {
          assert.equal(outcome.reason, expected.end, outcome.message);
          assert.equal(outcome.protocol, "socks5");
          return;
        }
        assert.equal(expected.end, "ok", `edge succeeded, the parsers ended with ${expected.end}`);
        assert.deepEqual(outcome, {
          protocol: "socks5",
          request: expected.request,
          ...auth && { user: ALICE.user },
        });
        // Not one byte past the request was read.
        assert.deepEqual(conn.unread(), stream.subarray(expected.consumed!));
      },
    ),
  },
];
