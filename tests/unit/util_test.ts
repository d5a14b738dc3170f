/** Unit tests of the small shared helpers in lib/util (async, bytes, error). */

import assert from "node:assert/strict";
import { closeQuietly, delay } from "../../lib/util/async.ts";
import { concat, hex, writeAll } from "../../lib/util/bytes.ts";
import { errorMessage } from "../../lib/util/error.ts";

Deno.test("delay: resolves after the time, or as soon as `until` settles; passes on its rejection", async () => {
  let waited = false;
  await delay(1).then(() => waited = true);
  assert.ok(waited);
  // A timer that was never cleared would fail this test (Deno's op sanitizer).
  await delay(60_000, { until: Promise.resolve() });
  await assert.rejects(delay(60_000, { until: Promise.reject(new Error("stopped")) }), /stopped/);
});

Deno.test("closeQuietly closes once, and ignores a second close", () => {
  let closes = 0;
  const resource = {
    close() {
      if (closes++) throw new Deno.errors.BadResource("closed");
    },
  };
  closeQuietly(resource);
  closeQuietly(resource);
  assert.equal(closes, 2);
});

Deno.test("concat joins chunks in order; hex writes two digits", () => {
  assert.deepEqual(concat(), new Uint8Array());
  assert.deepEqual(concat(Uint8Array.of(1), new Uint8Array(), Uint8Array.of(2, 3)), Uint8Array.of(1, 2, 3));
  assert.equal(hex(0x0a), "0a");
  assert.equal(hex(0xff), "ff");
});

Deno.test("writeAll keeps writing until every byte is taken", async () => {
  const taken: number[] = [];
  // A writer that takes at most two bytes per call, as a socket may.
  const writer = {
    write(p: Uint8Array) {
      taken.push(...p.subarray(0, 2));
      return Promise.resolve(Math.min(2, p.length));
    },
  };
  await writeAll(writer, Uint8Array.of(1, 2, 3, 4, 5));
  assert.deepEqual(taken, [1, 2, 3, 4, 5]);
});

Deno.test("errorMessage: an Error's message, anything else as text", () => {
  assert.equal(errorMessage(new TypeError("bad")), "bad");
  assert.equal(errorMessage("plain"), "plain");
  assert.equal(errorMessage(42), "42");
  assert.equal(errorMessage(undefined), "undefined");
});
