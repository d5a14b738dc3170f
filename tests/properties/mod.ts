/**
 * Property-based tests (fast-check), shared by the bounded runs of `deno task test`
 * (`tests/unit/property_test.ts`) and the long runs of `deno task fuzz` (`tests/fuzz.ts`).
 *
 * Each module beside this one exports `PROPERTIES: Target[]`; {@link allTargets} collects them.
 * Predicates throw (node:assert) on failure, so fast-check reports the assertion with the shrunk
 * counterexample and the seed that replays it.
 *
 * @module
 */

import fc from "fast-check";
import { PROPERTIES as CLIENT_HELLO } from "./client_hello.ts";
import { PROPERTIES as CONFIG } from "./config.ts";
import { PROPERTIES as EGRESS } from "./egress.ts";
import { PROPERTIES as POLICY } from "./policy.ts";
import { PROPERTIES as PROXY_PROTOCOL } from "./proxy_protocol.ts";

/** One named property. */
export interface Target {
  /** `module/what`, unique across modules; `deno task fuzz --target` selects by it. */
  name: string;
  /** The property, synchronous or asynchronous. */
  property: fc.IProperty<unknown> | fc.IAsyncProperty<unknown>;
}

/**
 * Every target of every property module, in module order. A function, not a constant: the modules
 * import this one for {@link Target}, and evaluating their lists here at load time could meet a
 * module that is still loading.
 */
export function allTargets(): Target[] {
  return [...PROXY_PROTOCOL, ...CLIENT_HELLO, ...CONFIG, ...POLICY, ...EGRESS];
}

/** Options of {@link runBounded}. */
export interface BoundedOptions {
  /** Inputs per target. */
  numRuns: number;
  /** Seed to replay a failure with; fast-check picks one (and prints it on failure) by default. */
  seed?: number;
}

/** Runs each target as a step of `t`, `options.numRuns` inputs each. */
export async function runBounded(
  t: Deno.TestContext,
  targets: readonly Target[],
  options: BoundedOptions,
): Promise<void> {
  for (const target of targets) {
    await t.step(target.name, async () => {
      await fc.assert(target.property, { numRuns: options.numRuns, seed: options.seed });
    });
  }
}
