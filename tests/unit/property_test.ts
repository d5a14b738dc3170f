/**
 * Property-based tests, bounded: every target of `tests/properties/` with a few hundred inputs, so the
 * file takes seconds. `deno task fuzz` runs the same targets with millions of inputs.
 *
 * A failure prints fast-check's shrunk counterexample with its seed and path; replay it with
 * `deno task fuzz --target NAME --seed SEED`.
 */

import { allTargets, runBounded } from "../properties/mod.ts";

Deno.test("properties (bounded runs)", async (t) => {
  await runBounded(t, allTargets(), { numRuns: 500 });
});
