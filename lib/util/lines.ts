/**
 * Text streams as lines, for child processes' output (Envoy's log, the gRPC bridge's ready line).
 *
 * @module
 */

/** Splits a text stream into lines (without `\n` or a trailing `\r`); a last unterminated line is kept. */
export function lineSplitter(): TransformStream<string, string> {
  let rest = "";
  return new TransformStream({
    transform(chunk, controller) {
      const lines = (rest + chunk).split("\n");
      rest = lines.pop() ?? "";
      for (const line of lines) controller.enqueue(line.replace(/\r$/, ""));
    },
    flush(controller) {
      if (rest) controller.enqueue(rest);
    },
  });
}
