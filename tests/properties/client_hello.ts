/**
 * Properties of the ClientHello parser and reader (`lib/tls/`), over the real hellos of
 * tests/fixtures/client_hello:
 * - only {@link ClientHelloError} ever escapes, whatever the bytes (random, or real hellos re-framed
 *   and corrupted), the limits, and however they are split into pushes or reads; and the streaming
 *   parser and the reader end exactly as {@link parseClientHello} does on the whole input;
 * - re-splitting a valid hello into other records and other reads changes nothing but `consumed`
 *   (and hits `too-many-records` exactly when there are more records than the limit);
 * - every strict prefix of a valid hello, however framed, asks for more bytes: never an error, never a
 *   result.
 *
 * @module
 */

import assert from "node:assert/strict";
import fc from "fast-check";
import {
  type ClientHello,
  ClientHelloError,
  type ClientHelloErrorReason,
  ClientHelloParser,
  type ConnReader,
  DEFAULT_MAX_HELLO_RECORDS,
  parseClientHello,
  type ParseClientHelloOptions,
  readClientHello,
} from "../../lib/tls/client_hello.ts";
import { reframe } from "../../scripts/harness/tls.ts";
import type { Target } from "./mod.ts";
import { concat } from "../../lib/util/bytes.ts";

const REASONS: readonly ClientHelloErrorReason[] = [
  "timeout",
  "eof",
  "malformed",
  "unsupported",
  "too-large",
  "too-many-records",
  "not-tls",
];

// Only the single-record captures: reframe() takes one record (go_multi_record.bin is go.bin re-framed).
const FIXTURES = new URL("../fixtures/client_hello/", import.meta.url);
const HELLOS: readonly { file: string; bytes: Uint8Array }[] = (JSON.parse(
  Deno.readTextFileSync(new URL("manifest.json", FIXTURES)),
) as { file: string }[])
  .filter((entry) => entry.file !== "go_multi_record.bin")
  .map((entry) => ({ file: entry.file, bytes: Deno.readFileSync(new URL(entry.file, FIXTURES)) }));

/** Records in a framed hello (headers walked; the input is well-formed). */
function recordCount(framed: Uint8Array): number {
  let count = 0;
  for (let at = 0; at < framed.length; at += 5 + (framed[at + 3] << 8 | framed[at + 4])) count++;
  return count;
}

function assertTyped(error: unknown): asserts error is ClientHelloError {
  if (!(error instanceof ClientHelloError)) {
    assert.fail(`expected only ClientHelloError, got ${error instanceof Error ? error.stack : error}`);
  }
  assert.ok(REASONS.includes(error.reason), `unknown reason ${error.reason}`);
  assert.ok(error.message.length > 0, "empty error message");
}

type Outcome = { result: ClientHello | { needMore: true } } | { error: ClientHelloError };

function outcome(run: () => ClientHello | { needMore: true }): Outcome {
  try {
    return { result: run() };
  } catch (error) {
    assertTyped(error);
    return { error };
  }
}

/** Pushes `bytes` into a fresh parser in chunks of `sizes` (cycled), stopping at the first answer. */
function pushInChunks(bytes: Uint8Array, sizes: readonly number[], options: ParseClientHelloOptions) {
  const parser = new ClientHelloParser(options);
  let result = parser.push(new Uint8Array());
  for (let at = 0, i = 0; at < bytes.length && "needMore" in result; i++) {
    const size = sizes.length > 0 ? sizes[i % sizes.length] : bytes.length;
    result = parser.push(bytes.subarray(at, at + size));
    at += size;
  }
  return result;
}

/** The same outcome, or the same failure class (the message may name fewer bytes when it came early). */
function assertSameOutcome(actual: Outcome, expected: Outcome, what: string): void {
  if ("error" in expected) {
    assert.ok("error" in actual, `${what}: no error, parseClientHello threw ${expected.error.message}`);
    assert.equal(actual.error.reason, expected.error.reason, `${what}: ${actual.error.message}`);
  } else {
    assert.ok("result" in actual, `${what} threw ${"error" in actual && actual.error.message}`);
    assert.deepEqual(actual.result, expected.result, what);
  }
}

// --- The reader over a connection that hands out the input in given slices ---

/** A connection that returns `bytes` in reads of the given sizes (cycled), then EOF. */
class SplitConn implements ConnReader {
  #at = 0;
  #reads = 0;
  constructor(readonly bytes: Uint8Array, readonly sizes: readonly number[]) {}

  read(p: Uint8Array): Promise<number | null> {
    if (this.#at >= this.bytes.length) return Promise.resolve(null);
    const size = this.sizes.length > 0 ? this.sizes[this.#reads++ % this.sizes.length] : Infinity;
    const n = Math.min(size, p.length, this.bytes.length - this.#at);
    p.set(this.bytes.subarray(this.#at, this.#at + n));
    this.#at += n;
    return Promise.resolve(n);
  }
}

/** The reader, fed `bytes` in reads of `sizes`, ends as parseClientHello does on all of `bytes`. */
async function assertReaderAgrees(
  bytes: Uint8Array,
  sizes: readonly number[],
  options: ParseClientHelloOptions,
): Promise<void> {
  const expected = outcome(() => parseClientHello(bytes, options));
  let read: { hello: ClientHello; bytes: Uint8Array };
  try {
    read = await readClientHello(new SplitConn(bytes, sizes), { ...options, timeoutMs: Infinity });
  } catch (error) {
    assertTyped(error);
    if ("error" in expected) assert.equal(error.reason, expected.error.reason, error.message);
    else {
      assert.ok("needMore" in expected.result, `reader failed (${error.message}), parse found a hello`);
      assert.equal(error.reason, "eof", error.message);
    }
    return;
  }
  assert.ok("result" in expected && !("needMore" in expected.result), "reader found a hello, parse did not");
  assert.deepEqual(read.hello, expected.result);
  // Replayed verbatim: every byte read, the hello's records first.
  assert.ok(read.bytes.length >= read.hello.consumed && read.bytes.length <= bytes.length);
  assert.deepEqual(read.bytes, bytes.subarray(0, read.bytes.length));
}

// --- Inputs ---

const hello = fc.constantFrom(...HELLOS);
/** Record fragment sizes as reframe() takes them (the last one repeats); small ones often. */
const recordSizes = fc.array(
  fc.oneof({ weight: 3, arbitrary: fc.integer({ min: 1, max: 8 }) }, fc.integer({ min: 1, max: 2000 })),
  { minLength: 1, maxLength: 8 },
);
const readSizes = fc.array(
  fc.oneof({ weight: 4, arbitrary: fc.integer({ min: 1, max: 8 }) }, fc.integer({ min: 1, max: 3000 })),
  { maxLength: 12 },
);
const limits: fc.Arbitrary<ParseClientHelloOptions> = fc.record({
  maxBytes: fc.oneof(fc.integer({ min: 1, max: 4096 }), fc.constant(16 * 1024)),
  maxRecords: fc.oneof(fc.integer({ min: 1, max: 80 }), fc.constant(Infinity)),
}, { requiredKeys: [] });

/** A real hello in other records, corrupted in a few places, cut anywhere, maybe with more after it. */
const corruptedHello = fc.tuple(
  hello,
  recordSizes,
  // Edits land in the record and handshake headers at the start often: that is where framing breaks.
  fc.array(fc.tuple(fc.oneof(fc.nat(), fc.nat(12)), fc.integer({ min: 0, max: 255 })), { maxLength: 3 }),
  fc.option(fc.nat()),
  fc.uint8Array({ maxLength: 16 }),
).map(([h, sizes, edits, cut, more]) => {
  const bytes = concat(reframe(h.bytes, sizes), more);
  for (const [at, value] of edits) bytes[at % bytes.length] = value;
  return cut === null ? bytes : bytes.subarray(0, cut % (bytes.length + 1));
});
/** Random bytes, often starting like a handshake record so they get past the first byte. */
const randomBytes = fc.tuple(fc.boolean(), fc.uint8Array({ maxLength: 600 })).map(([tls, bytes]) =>
  tls ? concat(Uint8Array.of(22, 3, 1), bytes) : bytes
);
const anyBytes = fc.oneof({ weight: 3, arbitrary: corruptedHello }, randomBytes);

/** The ClientHello targets. */
export const PROPERTIES: Target[] = [
  {
    name: "client_hello/only_typed_errors",
    property: fc.property(anyBytes, readSizes, limits, (bytes, sizes, options) => {
      const whole = outcome(() => parseClientHello(bytes, options));
      // The streaming parser with the same limits (its default record cap made explicit).
      const streamed = outcome(() => pushInChunks(bytes, sizes, { maxRecords: Infinity, ...options }));
      assertSameOutcome(streamed, whole, `pushed in chunks of ${sizes}`);
    }),
  },
  {
    name: "client_hello/reader_only_typed_errors",
    property: fc.asyncProperty(anyBytes, readSizes, limits, async (bytes, sizes, options) => {
      await assertReaderAgrees(bytes, sizes, { maxRecords: Infinity, ...options });
    }),
  },
  {
    name: "client_hello/resplit_changes_nothing",
    property: fc.asyncProperty(
      hello,
      recordSizes,
      readSizes,
      fc.uint8Array({ maxLength: 64 }),
      async (h, sizes, reads, after) => {
        const original = parseClientHello(h.bytes);
        assert.ok(!("needMore" in original), `${h.file} parses`);
        const framed = reframe(h.bytes, sizes);
        const expected = { ...original, consumed: framed.length };
        // Bytes after the hello (the next record, or anything) are not part of it.
        const stream = concat(framed, after);
        assert.deepEqual(parseClientHello(stream), expected, `${h.file} in records of ${sizes}`);
        const unlimited = { maxRecords: Infinity };
        assert.deepEqual(pushInChunks(stream, reads, unlimited), expected, `pushed in chunks of ${reads}`);
        const read = await readClientHello(new SplitConn(stream, reads), {
          ...unlimited,
          timeoutMs: Infinity,
        });
        assert.deepEqual(read.hello, expected, `read in reads of ${reads}`);
        assert.deepEqual(read.bytes, stream.subarray(0, read.bytes.length));
        // With the default record cap: the same hello, or too-many-records exactly past the cap.
        const capped = outcome(() => pushInChunks(stream, reads, {}));
        if (recordCount(framed) <= DEFAULT_MAX_HELLO_RECORDS) {
          assertSameOutcome(capped, { result: expected }, "capped");
        } else {assert.ok(
            "error" in capped && capped.error.reason === "too-many-records",
            "capped: no limit error",
          );}
      },
    ),
  },
  {
    name: "client_hello/prefix_needs_more",
    property: fc.property(hello, recordSizes, fc.array(fc.nat(), { maxLength: 6 }), (h, sizes, cuts) => {
      const framed = reframe(h.bytes, sizes);
      const options = { maxRecords: Infinity };
      // Every strict prefix in one pass: the parser's answer after each byte is the prefix's answer.
      const parser = new ClientHelloParser(options);
      for (let at = 0; at < framed.length - 1; at++) {
        let result;
        try {
          result = parser.push(framed.subarray(at, at + 1));
        } catch (error) {
          assert.fail(
            `${h.file} in records of ${sizes}: prefix of ${at + 1}/${framed.length} threw ${error}`,
          );
        }
        assert.ok("needMore" in result, `${h.file}: prefix of ${at + 1}/${framed.length} gave a hello`);
      }
      assert.ok(
        !("needMore" in parser.push(framed.subarray(framed.length - 1))),
        "the last byte completes it",
      );
      // And the whole-buffer parser on a few of them.
      for (const raw of cuts) {
        const cut = raw % framed.length;
        assert.deepEqual(
          parseClientHello(framed.subarray(0, cut), options),
          { needMore: true },
          `cut ${cut}`,
        );
      }
    }),
  },
];
