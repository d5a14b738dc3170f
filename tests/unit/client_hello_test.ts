/**
 * ClientHello parsing: real hellos captured from openssl, curl, node, Deno and Go (see
 * fixtures/client_hello/manifest.json and capture.ts), every split of every byte stream, hand-built
 * malformed hellos, random corruption, the reader over real loopback TCP, and the work a hostile framing
 * costs (counted, not timed) with the record cap that bounds it.
 */

import { withPair } from "../../scripts/harness/clients.ts";
import assert from "node:assert/strict";
import { encodeProxyV2, readProxyHeader } from "../../lib/proxy_protocol/mod.ts";
import {
  type ClientHello,
  ClientHelloError,
  type ClientHelloErrorReason,
  ClientHelloParser,
  type ClientHelloWork,
  DEFAULT_MAX_HELLO_RECORDS,
  parseClientHello,
  type ParseClientHelloOptions,
  readClientHello,
} from "../../lib/tls/client_hello.ts";
import { reframe } from "../../scripts/harness/tls.ts";
import { delay } from "../../lib/util/async.ts";

interface Fixture {
  file: string;
  client: string;
  sni?: string;
  alpn: string[];
  note?: string;
  bytes: Uint8Array;
}

const FIXTURES = new URL("../fixtures/client_hello/", import.meta.url);
const fixtures: Fixture[] = JSON.parse(await Deno.readTextFile(new URL("manifest.json", FIXTURES)))
  .map((entry: Omit<Fixture, "bytes">) => ({
    ...entry,
    bytes: Deno.readFileSync(new URL(entry.file, FIXTURES)),
  }));
const fixture = (file: string) => fixtures.find((f) => f.file === file)!.bytes;

const text = (s: string) => new TextEncoder().encode(s);
const concat = (...parts: Uint8Array[]) => {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  parts.reduce((at, p) => (out.set(p, at), at + p.length), 0);
  return out;
};

function parsed(bytes: Uint8Array, options?: ParseClientHelloOptions): ClientHello {
  const result = parseClientHello(bytes, options);
  if ("needMore" in result) assert.fail("expected a complete ClientHello, got needMore");
  return result;
}

function assertThrowsReason(
  fn: () => unknown,
  reason: ClientHelloErrorReason,
  what: string,
): ClientHelloError {
  try {
    fn();
  } catch (error) {
    assert.ok(error instanceof ClientHelloError, `${what}: expected a ClientHelloError, got ${error}`);
    assert.equal(error.reason, reason, `${what}: ${error.message}`);
    return error;
  }
  assert.fail(`${what}: expected a ClientHelloError (${reason}), nothing was thrown`);
}

// --- A builder for hand-made hellos (RFC 8446 §4.1.2 layout) ---

const u16 = (n: number) => Uint8Array.of(n >> 8, n & 0xff);
const vec8 = (bytes: Uint8Array) => concat(Uint8Array.of(bytes.length), bytes);
const vec16 = (bytes: Uint8Array) => concat(u16(bytes.length), bytes);
const ext = (type: number, data: Uint8Array) => concat(u16(type), vec16(data));
const sniExt = (...names: (string | Uint8Array)[]) =>
  ext(
    0,
    vec16(concat(...names.map((n) => concat(Uint8Array.of(0), vec16(typeof n === "string" ? text(n) : n))))),
  );
const alpnExt = (...protocols: string[]) => ext(16, vec16(concat(...protocols.map((p) => vec8(text(p))))));

interface HelloParts {
  sessionId?: Uint8Array;
  suites?: Uint8Array;
  compression?: Uint8Array;
  /** Raw extensions block contents; `null` leaves the block out (a TLS 1.2-style hello). */
  extensions?: Uint8Array | null;
  trailing?: Uint8Array;
}

function helloMessage(parts: HelloParts = {}): Uint8Array {
  const body = concat(
    u16(0x0303),
    new Uint8Array(32).fill(0xab),
    vec8(parts.sessionId ?? new Uint8Array(32)),
    vec16(parts.suites ?? concat(u16(0x1301), u16(0x1302))),
    vec8(parts.compression ?? Uint8Array.of(0)),
    parts.extensions === null ? new Uint8Array() : vec16(parts.extensions ?? sniExt("app.example.com")),
    parts.trailing ?? new Uint8Array(),
  );
  return concat(Uint8Array.of(1, body.length >> 16, (body.length >> 8) & 0xff, body.length & 0xff), body);
}

/** One handshake record holding `message`. */
const record = (message: Uint8Array, type = 22, version = 0x0301) =>
  concat(Uint8Array.of(type), u16(version), vec16(message));
const hello = (parts?: HelloParts) => record(helloMessage(parts));

// --- Fixtures ---

Deno.test("every captured ClientHello yields its SNI and ALPN", () => {
  assert.ok(fixtures.length >= 9, "manifest lists the captured fixtures");
  for (const f of fixtures) {
    const h = parsed(f.bytes);
    assert.equal(h.sni, f.sni, f.file);
    assert.deepEqual(h.alpn, f.alpn, f.file);
    assert.equal(h.legacyVersion, 0x0303, f.file);
    assert.ok(h.supportedVersions.includes(0x0304), `${f.file} offers TLS 1.3`);
    assert.equal(h.consumed, f.bytes.length, f.file);
  }
});

Deno.test("fixtures cover what they claim: large Go hello, several records, IP literal and no SNI", () => {
  // Go's X25519MLKEM768 key share makes its hello bigger than one segment at Tailscale's 1280 MTU.
  assert.ok(fixture("go.bin").length > 1280, `go.bin is ${fixture("go.bin").length} bytes`);
  const multi = fixture("go_multi_record.bin");
  const recordLengths: number[] = [];
  for (let at = 0; at < multi.length; at += 5 + (multi[at + 3] << 8 | multi[at + 4])) {
    assert.equal(multi[at], 22);
    recordLengths.push(multi[at + 3] << 8 | multi[at + 4]);
  }
  assert.deepEqual(recordLengths.slice(0, 2), [2, 700], "the first record ends inside the handshake header");
  assert.equal(recordLengths.length, 3);
  assert.deepEqual({ ...parsed(multi), consumed: 0 }, { ...parsed(fixture("go.bin")), consumed: 0 });
  // openssl did send the IP literal (RFC 6066 forbids it); the parser reports no SNI.
  assert.ok(new TextDecoder().decode(fixture("openssl_ip_sni.bin")).includes("192.0.2.7"));
  assert.equal(parsed(fixture("openssl_ip_sni.bin")).sni, undefined);
  assert.equal(parsed(fixture("curl_no_sni.bin")).sni, undefined);
});

Deno.test("every split point of every fixture: needMore, then the same result", () => {
  for (const f of fixtures) {
    const whole = parsed(f.bytes);
    for (let cut = 0; cut < f.bytes.length; cut++) {
      let result: ReturnType<typeof parseClientHello>;
      try {
        result = parseClientHello(f.bytes.subarray(0, cut));
      } catch (error) {
        assert.fail(`${f.file} cut at ${cut} threw: ${error}`);
      }
      assert.deepEqual(result, { needMore: true }, `${f.file} cut at ${cut}`);
    }
    // Bytes after the hello (e.g. early data) are not part of it.
    const withMore = concat(f.bytes, record(text("early"), 23, 0x0303));
    assert.deepEqual(parsed(withMore), whole, f.file);
  }
});

Deno.test("any record framing of a fixture parses the same", () => {
  for (const f of fixtures.filter((f) => f.file !== "go_multi_record.bin")) {
    const expected = parsed(f.bytes);
    for (const sizes of [[1], [3], [100], [1, 2, 3, 500], [4, 1]]) {
      const framed = reframe(f.bytes, sizes);
      assert.deepEqual(
        parsed(framed),
        { ...expected, consumed: framed.length },
        `${f.file} in records of ${sizes}`,
      );
    }
  }
});

// --- Malformed input ---

Deno.test("bytes that are not TLS fail on the first byte", () => {
  assertThrowsReason(() => parseClientHello(text("G")), "not-tls", "HTTP");
  assertThrowsReason(() => parseClientHello(Uint8Array.of(0x0d, 0x0a)), "not-tls", "PROXY v2 signature");
  assertThrowsReason(() => parseClientHello(text("PROXY TCP4")), "not-tls", "PROXY v1");
  assertThrowsReason(() => parseClientHello(Uint8Array.of(23, 3, 3)), "not-tls", "application data");
  assertThrowsReason(() => parseClientHello(Uint8Array.of(0x80, 0x2e, 0x01)), "unsupported", "SSLv2 hello");
  assert.deepEqual(parseClientHello(new Uint8Array()), { needMore: true });
  assert.deepEqual(parseClientHello(Uint8Array.of(22)), { needMore: true });
});

Deno.test("record layer: version, length, type and framing are checked", () => {
  const good = hello();
  const withVersion = (v: number) => concat(Uint8Array.of(22), u16(v), good.subarray(3));
  assertThrowsReason(() => parseClientHello(withVersion(0x0300)), "unsupported", "SSL 3.0 record");
  assertThrowsReason(() => parseClientHello(withVersion(0x0305)), "malformed", "record version 0x0305");
  assertThrowsReason(() => parseClientHello(withVersion(0x0203)), "malformed", "record major version 2");
  assertThrowsReason(() => parseClientHello(Uint8Array.of(22, 2)), "malformed", "major version 2, early");
  for (const v of [0x0301, 0x0302, 0x0303, 0x0304]) {
    assert.equal(parsed(withVersion(v)).sni, "app.example.com");
  }
  assertThrowsReason(() => parseClientHello(Uint8Array.of(22, 3, 1, 0, 0)), "malformed", "empty record");
  assertThrowsReason(
    () => parseClientHello(Uint8Array.of(22, 3, 1, 0x41, 0x01)),
    "malformed",
    "record of 2^14+257",
  );
  assertThrowsReason(
    () => parseClientHello(record(Uint8Array.of(2, 0, 0, 0))),
    "malformed",
    "ServerHello type",
  );
  // A record of another type in the middle of the hello.
  const message = helloMessage();
  const interleaved = concat(record(message.subarray(0, 10)), record(text("x"), 21));
  assertThrowsReason(() => parseClientHello(interleaved), "malformed", "alert inside the hello");
  // The hello must end on a record boundary.
  assertThrowsReason(
    () => parseClientHello(record(concat(message, Uint8Array.of(0)))),
    "malformed",
    "trailing byte in record",
  );
  assertThrowsReason(
    () => parseClientHello(record(concat(message, Uint8Array.of(0))).subarray(0, 10)),
    "malformed",
    "record longer than the hello, detected early",
  );
});

Deno.test("size cap: whole hello across records, checked before it arrives", () => {
  const go = fixture("go.bin");
  assertThrowsReason(
    () => parseClientHello(go.subarray(0, 9), { maxBytes: 1024 }),
    "too-large",
    "Go hello over 1 KiB",
  );
  assert.equal(parsed(go, { maxBytes: go.length }).consumed, go.length);
  assertThrowsReason(() => parseClientHello(go, { maxBytes: go.length - 1 }), "too-large", "one byte over");
  // A declared 16 MiB handshake fails on its header alone.
  assertThrowsReason(
    () => parseClientHello(Uint8Array.of(22, 3, 1, 0, 4, 1, 0xff, 0xff, 0xff)),
    "too-large",
    "16 MiB",
  );
  // Many tiny records: their headers count too.
  const tiny = reframe(go, [1]);
  assertThrowsReason(
    () => parseClientHello(tiny, { maxBytes: 4 * go.length }),
    "too-large",
    "1-byte records",
  );
  assert.equal(parsed(tiny, { maxBytes: tiny.length }).sni, "app.example.com");
  assert.throws(() => parseClientHello(go, { maxBytes: 0 }), RangeError);
});

Deno.test("ClientHello body: every length is bounds-checked", () => {
  const bad: [string, HelloParts | Uint8Array][] = [
    ["session id of 33 bytes", { sessionId: new Uint8Array(33) }],
    ["odd cipher_suites", { suites: Uint8Array.of(0x13, 0x01, 0x13) }],
    ["empty cipher_suites", { suites: new Uint8Array() }],
    ["no compression methods", { compression: new Uint8Array() }],
    ["byte after extensions", { trailing: Uint8Array.of(0) }],
    ["extension overruns the block", { extensions: concat(u16(0xff01), u16(10), Uint8Array.of(1)) }],
    ["half an extension header", { extensions: Uint8Array.of(0, 0, 0) }],
    ["duplicate ALPN", { extensions: concat(alpnExt("h2"), alpnExt("http/1.1")) }],
    ["duplicate server_name", { extensions: concat(sniExt("a.example"), sniExt("b.example")) }],
    ["duplicate unknown extension", {
      extensions: concat(ext(0xff01, Uint8Array.of(0)), ext(0xff01, Uint8Array.of(0))),
    }],
    ["two host_name entries", { extensions: sniExt("a.example", "b.example") }],
    ["empty server_name_list", { extensions: ext(0, vec16(new Uint8Array())) }],
    ["server_name with no list", { extensions: ext(0, new Uint8Array()) }],
    ["empty host_name", { extensions: sniExt("") }],
    ["server_name list with trailing byte", {
      extensions: ext(0, concat(vec16(concat(Uint8Array.of(0), vec16(text("a.b")))), Uint8Array.of(0))),
    }],
    ["empty ALPN list", { extensions: ext(16, vec16(new Uint8Array())) }],
    ["empty ALPN protocol", { extensions: ext(16, vec16(Uint8Array.of(0))) }],
    ["ALPN protocol overruns", { extensions: ext(16, vec16(Uint8Array.of(5, 0x68, 0x32))) }],
    ["odd supported_versions", { extensions: ext(43, vec8(Uint8Array.of(3, 4, 3))) }],
    ["empty supported_versions", { extensions: ext(43, vec8(new Uint8Array())) }],
  ];
  for (const [what, parts] of bad) {
    const bytes = parts instanceof Uint8Array ? parts : hello(parts);
    assertThrowsReason(() => parseClientHello(bytes), "malformed", what);
  }
  // Message shorter than its fixed fields.
  assertThrowsReason(
    () => parseClientHello(record(Uint8Array.of(1, 0, 0, 2, 3, 3))),
    "malformed",
    "no random",
  );
});

Deno.test("extensions: absent, unknown and GREASE ones are fine; versions in client order", () => {
  assert.deepEqual(parsed(hello({ extensions: null })), {
    legacyVersion: 0x0303,
    alpn: [],
    supportedVersions: [],
    consumed: hello({ extensions: null }).length,
  });
  const h = parsed(hello({
    extensions: concat(
      ext(0x0a0a, new Uint8Array()),
      ext(43, vec8(concat(u16(0x3a3a), u16(0x0304), u16(0x0303)))),
      alpnExt("h2", "http/1.1"),
      ext(0xff02, new Uint8Array()),
      sniExt("App.Example.COM."),
      ext(0xfe0d, new Uint8Array(200)),
    ),
  }));
  assert.equal(h.sni, "app.example.com", "lower-cased, trailing dot dropped");
  assert.deepEqual(h.alpn, ["h2", "http/1.1"]);
  assert.deepEqual(h.supportedVersions, [0x3a3a, 0x0304, 0x0303]);
  // ALPN names are opaque bytes: one character per byte, so nothing is lost.
  const binary = parsed(hello({ extensions: ext(16, vec16(vec8(Uint8Array.of(0x78, 0xff)))) }));
  assert.deepEqual(binary.alpn, ["x\u00ff"]);
  // An unknown name_type is skipped; the host_name entry still counts.
  const other = ext(
    0,
    vec16(concat(Uint8Array.of(7), vec16(text("opaque")), Uint8Array.of(0), vec16(text("b.example")))),
  );
  assert.equal(parsed(hello({ extensions: other })).sni, "b.example");
});

Deno.test("SNI must be a DNS hostname; IP literals give no SNI", () => {
  const sni = (name: string | Uint8Array) => parsed(hello({ extensions: sniExt(name) })).sni;
  assert.equal(sni("localhost"), "localhost");
  assert.equal(sni("xn--bcher-kva.example"), "xn--bcher-kva.example");
  assert.equal(sni("a-b.c-d.example"), "a-b.c-d.example");
  assert.equal(sni(`${"a".repeat(63)}.example`), `${"a".repeat(63)}.example`);
  const longest = Array(4).fill("a".repeat(61)).join(".") + ".abcde"; // 253 characters
  assert.equal(longest.length, 253);
  assert.equal(sni(longest), longest);
  assert.equal(sni(`${longest}.`), longest, "253 characters plus a trailing dot");
  for (const ip of ["192.0.2.7", "100.64.0.1", "::1", "fd7a:115c:a1e0::1", "[::1]", "::ffff:1.2.3.4"]) {
    assert.equal(sni(ip), undefined, ip);
  }
  // A numeric last label is never a name (no top-level domain is numeric): an address in disguise.
  for (const ip of ["1.2.3", "0x7f.1", "999.1.1.1", "192.0.2.7."]) assert.equal(sni(ip), undefined, ip);
  const bad: (string | Uint8Array)[] = [
    "app.example.com\0evil.com",
    Uint8Array.of(0x61, 0x00),
    "bücher.example",
    new TextEncoder().encode("bücher.example"),
    "under_score.example",
    "space here.example",
    "-lead.example",
    "trail-.example",
    "a..b",
    ".",
    "..",
    ".example",
    `${"a".repeat(64)}.example`,
    `${longest}a`,
    "x".repeat(300),
    "app.example.com:443",
    "*.example.com",
    "1.2.3.4/32",
  ];
  for (const name of bad) {
    const error = assertThrowsReason(
      () => sni(name),
      "malformed",
      JSON.stringify(typeof name === "string" ? name : [...name]),
    );
    assert.match(error.message, /SNI host_name/);
  }
});

Deno.test("random corruption of real hellos never escapes as anything but a ClientHelloError", () => {
  let seed = 42;
  const random = () => (seed = (seed * 1103515245 + 12345) & 0x7fffffff) / 0x7fffffff;
  for (const f of fixtures) {
    for (let i = 0; i < 300; i++) {
      const bytes = f.bytes.slice();
      for (let k = 0; k < 1 + Math.floor(random() * 3); k++) {
        bytes[Math.floor(random() * bytes.length)] = random() * 256;
      }
      try {
        parseClientHello(bytes.subarray(0, Math.floor(random() * bytes.length) + 1));
      } catch (error) {
        assert.ok(error instanceof ClientHelloError, `${f.file}: ${error}`);
      }
    }
  }
});

// --- readClientHello over real loopback TCP ---

async function rejectsWith(
  promise: Promise<unknown>,
  reason: ClientHelloErrorReason,
): Promise<ClientHelloError> {
  try {
    await promise;
  } catch (error) {
    assert.ok(error instanceof ClientHelloError, `expected a ClientHelloError, got ${error}`);
    assert.equal(error.reason, reason, error.message);
    return error;
  }
  assert.fail(`expected a rejection with reason ${reason}`);
}

async function writeSlowly(
  conn: Deno.Conn,
  bytes: Uint8Array,
  chunk: number,
  delayMs: number,
): Promise<void> {
  for (let at = 0; at < bytes.length; at += chunk) {
    await conn.write(bytes.subarray(at, at + chunk));
    await delay(delayMs);
  }
}

Deno.test("readClientHello: a large hello in several delayed writes, replay bytes verbatim", async () => {
  for (const file of ["go.bin", "go_multi_record.bin"]) {
    await withPair(async (client, server) => {
      client.setNoDelay(true);
      const bytes = fixture(file);
      let reads = 0;
      const counting = { read: (p: Uint8Array) => (reads++, server.read(p)) };
      const reading = readClientHello(counting, { timeoutMs: 3000 });
      await writeSlowly(client, bytes, 200, 5);
      const result = await reading;
      assert.ok(reads >= 4, `the hello took ${reads} reads`);
      assert.equal(result.hello.sni, "app.example.com");
      assert.deepEqual(result.bytes, bytes, "every byte read, for the backend");
    });
  }
});

Deno.test("readClientHello: after a PROXY header, with its leftover bytes as initial", async () => {
  await withPair(async (client, server) => {
    const header = encodeProxyV2({
      command: "PROXY",
      transport: "tcp",
      source: { address: "100.64.1.2", port: 50000 },
      destination: { address: "100.64.0.1", port: 443 },
    });
    const hello = fixture("deno_start_tls.bin");
    // Header and the first part of the hello in one write, the rest later.
    await client.write(concat(header, hello.subarray(0, 100)));
    const proxied = await readProxyHeader(server);
    assert.equal(proxied.rest.length, 100);
    const reading = readClientHello(server, { initial: proxied.rest });
    await delay(10);
    await client.write(hello.subarray(100));
    const { hello: parsedHello, bytes } = await reading;
    assert.equal(parsedHello.sni, "app.example.com");
    assert.deepEqual(bytes, hello);
  });
});

Deno.test("readClientHello: a complete hello in initial needs no read", async () => {
  const never = { read: () => new Promise<number | null>(() => {}) };
  const { hello, bytes } = await readClientHello(never, { initial: fixture("curl.bin") });
  assert.equal(hello.sni, "app.example.com");
  assert.deepEqual(bytes, fixture("curl.bin"));
});

Deno.test("readClientHello: a stalled client times out; not-TLS fails at once; EOF", async () => {
  await withPair(async (client, server) => {
    await client.write(fixture("go.bin").subarray(0, 700));
    const start = performance.now();
    const error = await rejectsWith(readClientHello(server, { timeoutMs: 150 }), "timeout");
    assert.ok(performance.now() - start < 1000);
    assert.match(error.message, /150 ms with 700 bytes read/);
  });
  await withPair(async (client, server) => {
    await client.write(text("GET / HTTP/1.1\r\n"));
    const start = performance.now();
    await rejectsWith(readClientHello(server, { timeoutMs: 5000 }), "not-tls");
    assert.ok(performance.now() - start < 500, "rejected without waiting for the deadline");
  });
  await withPair(async (client, server) => {
    await client.write(fixture("node.bin").subarray(0, 50));
    client.closeWrite();
    await rejectsWith(readClientHello(server), "eof");
  });
});

// --- Work stays linear before the caller is authorized (issue #16) ---

const noWork = (): ClientHelloWork => ({ bytesExamined: 0, recordHeaders: 0, messageParses: 0 });

/** A connection handing out `bytes` one byte per read (the worst case for re-parsing after each read). */
function byteByByte(
  bytes: Uint8Array,
): { read: (p: Uint8Array) => Promise<number | null>; reads: () => number } {
  let at = 0;
  return {
    read: (p) => Promise.resolve(at < bytes.length ? (p[0] = bytes[at++], 1) : null),
    reads: () => at,
  };
}

/** The largest hello the 16 KiB cap lets through as 1-byte records: 2,704 records of 6 bytes. */
function worstCaseHello(): { message: Uint8Array; framed: Uint8Array } {
  const length = 2704;
  const unpadded = helloMessage({ extensions: concat(sniExt("app.example.com"), ext(21, new Uint8Array())) });
  const message = helloMessage({
    extensions: concat(sniExt("app.example.com"), ext(21, new Uint8Array(length - unpadded.length))),
  });
  assert.equal(message.length, length);
  return { message, framed: reframe(record(message), [1]) };
}

Deno.test("work is linear: a 16 KiB hello in 1-byte records, read 1 byte at a time", async () => {
  const { message, framed } = worstCaseHello();
  assert.equal(framed.length, 16_224, "2,704 records of 6 bytes, under the 16 KiB cap");
  const work = noWork();
  const conn = byteByByte(framed);
  const { hello, bytes } = await readClientHello(conn, { maxRecords: Infinity, work });
  assert.equal(hello.sni, "app.example.com");
  assert.equal(hello.consumed, framed.length);
  assert.deepEqual(bytes, framed);
  assert.equal(conn.reads(), framed.length, "one read per byte");
  // Each record header parsed once and the message parsed once, not once per read (that was 22M
  // header parses before: every read re-walked every record).
  assert.equal(work.recordHeaders, 2704);
  assert.equal(work.messageParses, 1);
  // Each byte copied once, plus the message bytes parsed once.
  assert.equal(work.bytesExamined, framed.length + message.length);
  assert.ok(work.bytesExamined <= 2 * framed.length, `${work.bytesExamined} bytes examined`);
  // However it is cut: the same work in one push as in 16,224.
  const whole = noWork();
  assert.deepEqual(parseClientHello(framed, { work: whole }), hello);
  assert.deepEqual(whole, work);
});

Deno.test("work is linear: the record cap stops the same hello after 64 records by default", async () => {
  const { framed } = worstCaseHello();
  const work = noWork();
  const conn = byteByByte(framed);
  const error = await rejectsWith(readClientHello(conn, { work }), "too-many-records");
  assert.match(error.message, /more than 64 TLS records \(record 65 at offset 384\)/);
  assert.equal(work.recordHeaders, DEFAULT_MAX_HELLO_RECORDS + 1);
  assert.equal(work.messageParses, 0);
  assert.equal(conn.reads(), 65 * 6 - 1, "it stopped reading at the 65th record header");
  assert.ok(work.bytesExamined <= conn.reads(), `${work.bytesExamined} bytes examined`);
});

Deno.test("record cap: streams default to 64 records, parseClientHello to none; a real hello in tiny records", () => {
  const go = fixture("go.bin");
  const inRecords = (count: number) => reframe(go, [...Array(count - 1).fill(1), go.length]);
  const stream = (bytes: Uint8Array, options?: { maxRecords?: number }) => {
    const parser = new ClientHelloParser(options);
    let result = parser.push(new Uint8Array());
    for (let at = 0; at < bytes.length; at += 100) result = parser.push(bytes.subarray(at, at + 100));
    return result;
  };
  assert.equal(DEFAULT_MAX_HELLO_RECORDS, 64);
  const atCap = inRecords(64);
  assert.deepEqual(stream(atCap), { ...parsed(go), consumed: atCap.length }, "exactly 64 records");
  const error = assertThrowsReason(() => stream(inRecords(65)), "too-many-records", "65 records");
  assert.match(error.message, /more than 64 TLS records \(record 65 at offset 384\); send it in fewer/);
  assertThrowsReason(() => stream(reframe(go, [1])), "too-many-records", "go.bin in 1-byte records");
  assert.deepEqual(
    stream(reframe(go, [1]), { maxRecords: Infinity }),
    parsed(reframe(go, [1])),
    "cap lifted",
  );
  assert.equal(parsed(reframe(go, [1])).sni, "app.example.com", "parseClientHello: any framing by default");
  assertThrowsReason(
    () => parseClientHello(inRecords(65), { maxRecords: 64 }),
    "too-many-records",
    "parseClientHello with a cap",
  );
  assertThrowsReason(
    () => parseClientHello(fixture("go_multi_record.bin"), { maxRecords: 2 }),
    "too-many-records",
    "3 records, cap 2",
  );
  assert.equal(parsed(fixture("go_multi_record.bin"), { maxRecords: 3 }).sni, "app.example.com");
  for (const bad of [0, 1.5, NaN, -1]) {
    assert.throws(() => new ClientHelloParser({ maxRecords: bad }), RangeError, String(bad));
  }
  // After an error, the parser keeps failing the same way rather than reading on.
  const parser = new ClientHelloParser();
  assertThrowsReason(() => parser.push(text("GET")), "not-tls", "first push");
  assertThrowsReason(() => parser.push(go), "not-tls", "later push");
});
