/** Tests of the line splitter child processes' output goes through. */

import assert from "node:assert/strict";
import { lineSplitter } from "../../lib/util/lines.ts";

async function split(chunks: string[]): Promise<string[]> {
  const lines = ReadableStream.from(chunks).pipeThrough(lineSplitter());
  return await Array.fromAsync(lines);
}

Deno.test("lines split across chunks are joined; \\n and a trailing \\r are dropped", async () => {
  assert.deepEqual(await split(["one\ntw", "o\r\nthr", "ee\n"]), ["one", "two", "three"]);
  assert.deepEqual(await split(["a", "b", "c\n"]), ["abc"]);
  assert.deepEqual(await split(["x\r", "\ny\n"]), ["x", "y"]);
});

Deno.test("empty lines are kept; a final \\n adds no empty line; an unterminated last line is kept", async () => {
  assert.deepEqual(await split(["a\n\nb\n"]), ["a", "", "b"]);
  assert.deepEqual(await split(["last without newline"]), ["last without newline"]);
  assert.deepEqual(await split(["a\n", "tail"]), ["a", "tail"]);
  assert.deepEqual(await split([]), []);
  assert.deepEqual(await split(["\n"]), [""]);
});

Deno.test("only a trailing \\r goes; one inside a line stays", async () => {
  assert.deepEqual(await split(["a\rb\r\r\n"]), ["a\rb\r"]);
});
