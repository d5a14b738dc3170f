/**
 * Properties of the PROXY protocol codec and reader (`lib/proxy_protocol/`):
 * - only {@link ProxyProtocolError} ever escapes the decoder or the reader, whatever the bytes and
 *   however they are split into reads;
 * - every strict prefix of a valid header asks for more bytes, never more than are missing;
 * - encode → decode round-trips (v1, and v2 with TLVs, CRC32C, IPv4/IPv6, UDP, LOCAL, unspec), and
 *   decode → encode gives the same bytes back;
 * - splitting the input into arbitrary reads changes nothing: the reader ends exactly as the decoder
 *   does on the whole input.
 *
 * @module
 */

import assert from "node:assert/strict";
import fc from "fast-check";
import {
  type ConnReader,
  decodeProxyHeader,
  type DecodeProxyOptions,
  encodeProxyV1,
  encodeProxyV2,
  PP2_TYPE_CRC32C,
  type ProxyAddress,
  type ProxyDecodeResult,
  type ProxyHeader,
  type ProxyHeaderInit,
  ProxyProtocolError,
  type ProxyProtocolErrorReason,
  readProxyHeader,
  V2_SIGNATURE,
} from "../../lib/proxy_protocol/mod.ts";
import { formatIp } from "../../lib/net/ip.ts";
import { V2_MAX_LENGTH } from "../../lib/proxy_protocol/v2.ts";
import type { Target } from "./mod.ts";
import { concat } from "../../lib/util/bytes.ts";

const REASONS: readonly ProxyProtocolErrorReason[] = [
  "timeout",
  "eof",
  "malformed",
  "unsupported",
  "too-large",
  "not-proxy",
];

const latin1 = (text: string) => Uint8Array.from(text, (c) => c.charCodeAt(0) & 0xff);

function assertTyped(error: unknown): asserts error is ProxyProtocolError {
  if (!(error instanceof ProxyProtocolError)) {
    assert.fail(`expected only ProxyProtocolError, got ${error instanceof Error ? error.stack : error}`);
  }
  assert.ok(REASONS.includes(error.reason), `unknown reason ${error.reason}`);
  assert.ok(error.message.length > 0, "empty error message");
}

// --- Valid headers, with what they must decode to ---

/** A valid encoded header and the header it must decode to (a CRC32C TLV, if any, left out). */
interface HeaderCase {
  bytes: Uint8Array;
  expected: ProxyHeader;
  checksum: boolean;
  /** decode → encode gives `bytes` back (not for LOCAL with addresses: those are dropped). */
  reencodes: boolean;
}

const byte = fc.integer({ min: 0, max: 255 });
const port = fc.integer({ min: 0, max: 0xffff });
const ipv4 = fc.uint8Array({ minLength: 4, maxLength: 4 });
// Zero groups are common so that "::" compression (and its tie-breaking) comes up often.
const group = fc.oneof(
  { weight: 3, arbitrary: fc.constant(0) },
  fc.constantFrom(1, 0xffff),
  fc.integer({ min: 0, max: 0xffff }),
);
const ipv6 = fc.oneof(
  fc.array(group, { minLength: 8, maxLength: 8 }).map((groups) =>
    Uint8Array.from(groups.flatMap((g) => [g >> 8, g & 0xff]))
  ),
  ipv4.map((v4) => concat(new Uint8Array(10), Uint8Array.of(0xff, 0xff), v4)), // IPv4-mapped
);

/** IPv6 text in one of several spellings the encoders must accept; all mean `bytes`. */
function ipv6Text(bytes: Uint8Array, style: number): string {
  const groups = Array.from({ length: 8 }, (_, i) => bytes[2 * i] << 8 | bytes[2 * i + 1]);
  switch (style) {
    case 0:
      return formatIp(bytes);
    case 1: // every group, zero-padded, upper case
      return groups.map((g) => g.toString(16).padStart(4, "0").toUpperCase()).join(":");
    case 2: // every group, no padding, no compression
      return groups.map((g) => g.toString(16)).join(":");
    default: // the last 32 bits dotted
      return `${groups.slice(0, 6).map((g) => g.toString(16)).join(":")}:${bytes.subarray(12).join(".")}`;
  }
}

interface Endpoints {
  source: ProxyAddress;
  destination: ProxyAddress;
  /** The same endpoints with canonical address text, as the decoder gives them. */
  canonical: { source: ProxyAddress; destination: ProxyAddress };
}

const endpoints: fc.Arbitrary<Endpoints> = fc.oneof(
  fc.tuple(ipv4, ipv4, port, port).map(([s, d, sp, dp]) => {
    const source = { address: formatIp(s), port: sp };
    const destination = { address: formatIp(d), port: dp };
    return { source, destination, canonical: { source, destination } };
  }),
  fc.tuple(ipv6, ipv6, fc.nat(3), fc.nat(3), port, port).map(([s, d, ss, ds, sp, dp]) => ({
    source: { address: ipv6Text(s, ss), port: sp },
    destination: { address: ipv6Text(d, ds), port: dp },
    canonical: {
      source: { address: formatIp(s), port: sp },
      destination: { address: formatIp(d), port: dp },
    },
  })),
);

// Any type but CRC32C, whose value must be the real checksum (checksum: true adds a correct one).
const tlvs = fc.array(
  fc.record({
    type: byte.filter((t) => t !== PP2_TYPE_CRC32C),
    value: fc.oneof(
      { weight: 5, arbitrary: fc.uint8Array({ maxLength: 32 }) },
      fc.uint8Array({ maxLength: 1500 }),
    ),
  }, { noNullPrototype: true }), // decoded TLVs are plain objects
  { maxLength: 5 },
);

const v2Case: fc.Arbitrary<HeaderCase> = fc.record({
  command: fc.constantFrom("PROXY" as const, "LOCAL" as const),
  transport: fc.constantFrom("tcp" as const, "udp" as const, "unspec" as const),
  endpoints: fc.option(endpoints, { nil: undefined }),
  tlvs,
  checksum: fc.boolean(),
}).map(({ command, transport, endpoints, tlvs, checksum }) => {
  // Only encodable combinations: unspec carries no addresses, PROXY over tcp/udp needs them.
  const addresses = transport === "unspec" ? undefined : endpoints;
  const kind = command === "PROXY" && !addresses ? "unspec" : transport;
  const init: ProxyHeaderInit = {
    command,
    transport: kind,
    tlvs,
    ...addresses && { source: addresses.source, destination: addresses.destination },
  };
  const expected: ProxyHeader = {
    version: 2,
    command,
    transport: addresses ? kind : "unspec", // no addresses is family AF_UNSPEC on the wire
    tlvs,
    ...(command === "PROXY" && addresses ? addresses.canonical : {}),
  };
  return {
    bytes: encodeProxyV2(init, { checksum }),
    expected,
    checksum,
    reencodes: !(command === "LOCAL" && addresses),
  };
});

const v1Case: fc.Arbitrary<HeaderCase> = fc.oneof(
  endpoints.map(({ source, destination, canonical }): HeaderCase => ({
    bytes: encodeProxyV1({ command: "PROXY", transport: "tcp", source, destination }),
    expected: { version: 1, command: "PROXY", transport: "tcp", tlvs: [], ...canonical },
    checksum: false,
    reencodes: true,
  })),
  // LOCAL and unspec are spelt UNKNOWN, which reads back as PROXY over unspec.
  fc.record({
    command: fc.constantFrom("PROXY" as const, "LOCAL" as const),
    transport: fc.constantFrom("tcp" as const, "udp" as const),
    endpoints: fc.option(endpoints, { nil: undefined }),
  }).map(({ command, transport, endpoints }): HeaderCase => ({
    bytes: encodeProxyV1(
      command === "LOCAL"
        ? {
          command,
          transport,
          ...endpoints && { source: endpoints.source, destination: endpoints.destination },
        }
        : { command, transport: "unspec" },
    ),
    expected: { version: 1, command: "PROXY", transport: "unspec", tlvs: [] },
    checksum: false,
    reencodes: true,
  })),
);

const headerCase: fc.Arbitrary<HeaderCase> = fc.oneof({ weight: 3, arbitrary: v2Case }, v1Case);

/** Options under which `c` is valid: its version accepted, a size cap it fits under. */
function optionsFor(c: HeaderCase): fc.Arbitrary<DecodeProxyOptions> {
  return fc.record({
    maxBytes: fc.integer({ min: Math.max(16, c.bytes.length), max: V2_MAX_LENGTH }),
    versions: fc.constantFrom<(1 | 2)[]>([1, 2], [2, 1], [c.expected.version]),
  }, { requiredKeys: [] });
}

const caseWithOptions = headerCase.chain((c) => fc.tuple(fc.constant(c), optionsFor(c)));

/** `header` with the trailing CRC32C TLV that `checksum: true` added checked and removed. */
function withoutChecksum(header: ProxyHeader, checksum: boolean): ProxyHeader {
  if (!checksum) return header;
  const last = header.tlvs.at(-1);
  assert.equal(last?.type, PP2_TYPE_CRC32C, "checksum TLV last");
  assert.equal(last?.value.length, 4);
  return { ...header, tlvs: header.tlvs.slice(0, -1) };
}

function reencode(header: ProxyHeader): Uint8Array {
  return header.version === 1 ? encodeProxyV1(header) : encodeProxyV2(header);
}

// --- Arbitrary bytes, biased towards almost-headers ---

const V1_TOKENS = [
  "PROXY",
  " ",
  " ",
  "TCP4",
  "TCP6",
  "UNKNOWN",
  "UDP4",
  "tcp4",
  "1.2.3.4",
  "255.255.255.255",
  "256.1.1.1",
  "01.2.3.4",
  "::",
  "::1",
  "::ffff:1.2.3.4",
  "fd7a:115c:a1e0::1",
  "FD7A::1",
  "[::1]",
  "fe80::1%eth0",
  "1::2::3",
  "0",
  "80",
  "65535",
  "65536",
  "01",
  "-1",
  "\r\n",
  "\r\n",
  "\r",
  "\n",
  "\0",
  "\t",
  "\x7f",
  "\xff",
];

const v1Text = fc.tuple(
  fc.oneof({ weight: 5, arbitrary: fc.constant(6) }, fc.nat(6)),
  fc.array(
    fc.oneof(
      { weight: 4, arbitrary: fc.constantFrom(...V1_TOKENS) },
      fc.string({ unit: "binary-ascii", maxLength: 4 }),
    ),
    { maxLength: 16 },
  ),
).map(([keep, tokens]) => latin1("PROXY ".slice(0, keep) + tokens.join("")));

// A v2 fixed part with plausible or random version/family bytes, a length that mostly fits the body,
// and a body of an address block plus TLV-shaped bytes (type, length, value; lengths sometimes wrong).
const v2Bytes = fc.record({
  signature: fc.oneof({ weight: 5, arbitrary: fc.constant(12) }, fc.nat(12)),
  version: fc.oneof(fc.constantFrom(0x20, 0x21), byte),
  family: fc.oneof(fc.constantFrom(0x00, 0x11, 0x12, 0x21, 0x22, 0x31, 0x32), byte),
  address: fc.oneof(
    fc.constantFrom(0, 12, 36, 216).map((n) => new Uint8Array(n)),
    fc.uint8Array({ maxLength: 40 }),
  ),
  tlvs: fc.array(
    fc.tuple(fc.oneof(fc.constant(PP2_TYPE_CRC32C), byte), fc.uint8Array({ maxLength: 12 }), fc.option(byte)),
    { maxLength: 4 },
  ),
  length: fc.oneof(
    { weight: 4, arbitrary: fc.constant(undefined) },
    fc.integer({ min: 0, max: 0xffff }),
  ),
  cut: fc.option(fc.nat()),
}).map(({ signature, version, family, address, tlvs, length, cut }) => {
  const body = concat(
    address,
    ...tlvs.map(([type, value, declared]) => concat(Uint8Array.of(type, 0, declared ?? value.length), value)),
  );
  const size = length ?? body.length;
  const bytes = concat(
    V2_SIGNATURE.subarray(0, signature),
    signature === 12 ? Uint8Array.of(version, family, size >> 8, size & 0xff) : new Uint8Array(),
    body,
  );
  return cut === null ? bytes : bytes.subarray(0, cut % (bytes.length + 1));
});

// A valid header with a few bytes overwritten, maybe cut short, maybe followed by payload.
const mutatedHeader = fc.tuple(
  headerCase,
  fc.array(fc.tuple(fc.nat(), byte), { minLength: 1, maxLength: 3 }),
  fc.uint8Array({ maxLength: 16 }),
  fc.option(fc.nat()),
).map(([c, edits, payload, cut]) => {
  const bytes = concat(c.bytes, payload);
  for (const [at, value] of edits) bytes[at % bytes.length] = value;
  return cut === null ? bytes : bytes.subarray(0, cut % (bytes.length + 1));
});

const anyBytes: fc.Arbitrary<Uint8Array> = fc.oneof(
  fc.uint8Array({ maxLength: 200 }),
  { weight: 2, arbitrary: v1Text },
  { weight: 3, arbitrary: v2Bytes },
  { weight: 3, arbitrary: mutatedHeader },
  fc.tuple(headerCase, fc.uint8Array({ maxLength: 16 })).map(([c, payload]) => concat(c.bytes, payload)),
);

const anyOptions: fc.Arbitrary<DecodeProxyOptions> = fc.record({
  maxBytes: fc.integer({ min: 16, max: V2_MAX_LENGTH }),
  versions: fc.oneof(
    { weight: 4, arbitrary: fc.constant<(1 | 2)[]>([1, 2]) },
    fc.constantFrom<(1 | 2)[]>([2, 1], [1], [2], []),
  ),
}, { requiredKeys: [] });

// --- The reader over a connection that hands out the input in given slices ---

/** A connection that returns `bytes` in reads of the given sizes (cycled), then EOF. */
class SplitConn implements ConnReader {
  #at = 0;
  #read = 0;
  constructor(readonly bytes: Uint8Array, readonly sizes: readonly number[]) {}

  read(p: Uint8Array): Promise<number | null> {
    if (this.#at >= this.bytes.length) return Promise.resolve(null);
    const size = this.sizes.length > 0 ? this.sizes[this.#read++ % this.sizes.length] : Infinity;
    const n = Math.min(size, p.length, this.bytes.length - this.#at);
    p.set(this.bytes.subarray(this.#at, this.#at + n));
    this.#at += n;
    return Promise.resolve(n);
  }

  /** Bytes not read yet. */
  unread(): Uint8Array {
    return this.bytes.subarray(this.#at);
  }
}

const readSizes = fc.array(
  fc.oneof({ weight: 4, arbitrary: fc.integer({ min: 1, max: 8 }) }, fc.integer({ min: 1, max: 2000 })),
  { maxLength: 12 },
);

type Outcome = { result: ProxyDecodeResult } | { error: ProxyProtocolError };

function decodeOutcome(bytes: Uint8Array, options: DecodeProxyOptions): Outcome {
  try {
    return { result: decodeProxyHeader(bytes, options) };
  } catch (error) {
    assertTyped(error);
    return { error };
  }
}

/** The reader, fed `bytes` in reads of `sizes`, ends exactly as the decoder does on all of `bytes`. */
async function assertReaderAgrees(
  bytes: Uint8Array,
  sizes: readonly number[],
  options: DecodeProxyOptions,
): Promise<void> {
  const expected = decodeOutcome(bytes, options);
  const conn = new SplitConn(bytes, sizes);
  let read: { header: ProxyHeader; rest: Uint8Array };
  try {
    read = await readProxyHeader(conn, { ...options, timeoutMs: Infinity });
  } catch (error) {
    assertTyped(error);
    if ("error" in expected) {
      assert.equal(error.reason, expected.error.reason, error.message);
      assert.equal(error.message, expected.error.message);
    } else {
      assert.ok("needMore" in expected.result, `reader failed (${error.message}), decoder found a header`);
      assert.equal(error.reason, "eof", error.message);
    }
    return;
  }
  assert.ok("result" in expected && "header" in expected.result, "reader found a header, decoder did not");
  assert.deepEqual(read.header, expected.result.header);
  // Whatever was read past the header comes back as rest; the rest of the payload is still unread.
  assert.deepEqual(concat(read.rest, conn.unread()), bytes.subarray(expected.result.consumed));
}

/** The PROXY protocol targets. */
export const PROPERTIES: Target[] = [
  {
    name: "proxy_protocol/decode_only_typed_errors",
    property: fc.property(anyBytes, anyOptions, fc.uint8Array({ maxLength: 20 }), (bytes, options, more) => {
      const outcome = decodeOutcome(bytes, options);
      if ("error" in outcome) return;
      const { result } = outcome;
      if ("needMore" in result) {
        assert.ok(Number.isInteger(result.needMore) && result.needMore >= 1, `needMore ${result.needMore}`);
        // needMore is a lower bound: fewer extra bytes never complete a header.
        const fewer = concat(bytes, more.subarray(0, result.needMore - 1));
        const after = decodeOutcome(fewer, options);
        assert.ok(
          !("result" in after && "header" in after.result),
          "header within fewer than needMore bytes",
        );
        return;
      }
      assert.ok(result.consumed >= 1 && result.consumed <= bytes.length, `consumed ${result.consumed}`);
      // Nothing past the header was looked at: the header alone decodes the same.
      assert.deepEqual(decodeProxyHeader(bytes.subarray(0, result.consumed), options), result);
    }),
  },
  {
    name: "proxy_protocol/reader_only_typed_errors",
    property: fc.asyncProperty(anyBytes, readSizes, anyOptions, assertReaderAgrees),
  },
  {
    name: "proxy_protocol/prefix_needs_more",
    property: fc.property(
      caseWithOptions,
      fc.array(fc.nat(), { minLength: 1, maxLength: 6 }),
      ([c, options], cuts) => {
        for (const raw of cuts) {
          const cut = raw % c.bytes.length;
          const prefix = c.bytes.subarray(0, cut);
          let result: ProxyDecodeResult;
          try {
            result = decodeProxyHeader(prefix, options);
          } catch (error) {
            assert.fail(`prefix ${cut}/${c.bytes.length} threw: ${error}`);
          }
          assert.ok("needMore" in result, `prefix ${cut}/${c.bytes.length} decoded`);
          // Never more than is really missing, or a reader waiting for it would hang.
          assert.ok(
            result.needMore >= 1 && result.needMore <= c.bytes.length - cut,
            `needMore ${result.needMore} at ${cut}/${c.bytes.length}`,
          );
        }
      },
    ),
  },
  {
    name: "proxy_protocol/round_trip",
    property: fc.property(caseWithOptions, fc.uint8Array({ maxLength: 32 }), ([c, options], payload) => {
      const result = decodeProxyHeader(concat(c.bytes, payload), options);
      assert.ok("header" in result, `needMore ${"needMore" in result && result.needMore}`);
      assert.equal(result.consumed, c.bytes.length);
      assert.deepEqual(withoutChecksum(result.header, c.checksum), c.expected);
      if (c.reencodes) assert.deepEqual(reencode(result.header), c.bytes);
    }),
  },
  {
    name: "proxy_protocol/read_splits_change_nothing",
    property: fc.asyncProperty(
      caseWithOptions,
      fc.uint8Array({ maxLength: 64 }),
      fc.option(fc.tuple(fc.nat(), byte), { nil: undefined }),
      readSizes,
      async ([c, options], payload, edit, sizes) => {
        const bytes = concat(c.bytes, payload);
        if (edit) bytes[edit[0] % bytes.length] = edit[1];
        await assertReaderAgrees(bytes, sizes, options);
      },
    ),
  },
];
