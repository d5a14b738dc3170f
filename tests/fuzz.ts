/**
 * `deno task fuzz`: long runs of the property-based tests in `tests/properties/`, the same targets
 * `deno task test` runs a few hundred times each (`tests/property_test.ts`).
 *
 * ```sh
 * deno task fuzz                        # every target, 1,000,000 inputs each
 * deno task fuzz --runs 20000           # a quick pass
 * deno task fuzz --target policy        # one module's targets (or an exact name; repeatable)
 * deno task fuzz --target config/text_only_config_error --seed 1234 --path 17:3:0   # replay a failure
 * deno task fuzz --list                 # target names
 * ```
 *
 * Per target it prints the inputs run and the time taken; on failure, the shrunk counterexample, the
 * error, the seed and the command that replays it. Progress is printed every 10 s. Every selected
 * target runs even after a failure; the exit code is 1 if any failed, 2 for bad arguments.
 *
 * @module
 */

import { parseArgs } from "node:util";
import fc from "fast-check";
import { allTargets, type Target } from "./properties/mod.ts";
import { errorMessage } from "../lib/util/error.ts";

const DEFAULT_RUNS = 1_000_000;
const PROGRESS_EVERY_MS = 10_000;

const USAGE = "usage: deno task fuzz [--runs N] [--target NAME]... [--seed S] [--path P] [--list]";

function fail(message: string): never {
  console.error(`fuzz: ${message}\n${USAGE}`);
  Deno.exit(2);
}

function integerArg(name: string, text: string | undefined, fallback: number, min: number): number {
  if (text === undefined) return fallback;
  const n = Number(text);
  if (!Number.isSafeInteger(n) || n < min) {
    fail(`--${name} must be an integer ≥ ${min}, got ${JSON.stringify(text)}`);
  }
  return n;
}

/** Whether `name` picks `target`: its exact name, or its module (the part before "/"). */
function picks(name: string, target: Target): boolean {
  return target.name === name || target.name.startsWith(`${name.replace(/\/$/, "")}/`);
}

function select(targets: Target[], names: readonly string[]): Target[] {
  if (names.length === 0) return targets;
  for (const name of names) {
    if (!targets.some((t) => picks(name, t))) {
      fail(`no target ${JSON.stringify(name)}; targets:\n  ${targets.map((t) => t.name).join("\n  ")}`);
    }
  }
  return targets.filter((t) => names.some((name) => picks(name, t)));
}

/** `property`, calling `tick` before each run (shrinking runs included) so progress can be shown. */
function counting(property: Target["property"], tick: () => void): fc.IRawProperty<unknown> {
  const p = property as fc.IRawProperty<unknown>;
  return {
    isAsync: () => p.isAsync(),
    generate: (mrng, runId) => p.generate(mrng, runId),
    shrink: (value) => p.shrink(value),
    run: (value) => {
      tick();
      return p.run(value);
    },
    runBeforeEach: () => p.runBeforeEach(),
    runAfterEach: () => p.runAfterEach(),
  };
}

const seconds = (ms: number) => `${(ms / 1000).toFixed(1)} s`;
const count = (n: number) => n.toLocaleString("en-US");

function describeError(error: unknown): string {
  const text = error instanceof Error ? error.stack ?? error.message : String(error);
  const lines = text.split("\n");
  return lines.length > 20 ? [...lines.slice(0, 20), "    …"].join("\n") : text;
}

async function fuzz(
  target: Target,
  options: { runs: number; seed: number; path?: string },
): Promise<boolean> {
  const started = performance.now();
  let calls = 0;
  let lastReport = started;
  const property = counting(target.property, () => {
    // Checking the clock every 1024 runs keeps the overhead out of the figures.
    if (++calls % 1024 !== 0) return;
    const now = performance.now();
    if (now - lastReport < PROGRESS_EVERY_MS) return;
    lastReport = now;
    console.log(`  … ${target.name}: ${count(calls)} runs in ${seconds(now - started)}`);
  });
  const details = await fc.check(property, { numRuns: options.runs, seed: options.seed, path: options.path });
  const elapsed = performance.now() - started;
  const rate = count(Math.round(details.numRuns / (elapsed / 1000)));
  if (!details.failed) {
    console.log(`ok   ${target.name}: ${count(details.numRuns)} inputs in ${seconds(elapsed)} (${rate}/s)`);
    return true;
  }
  const replay = `deno task fuzz --target ${target.name} --seed ${details.seed}` +
    (details.counterexamplePath ? ` --path ${details.counterexamplePath}` : "");
  console.log(
    [
      `FAIL ${target.name}: after ${count(details.numRuns)} inputs in ${seconds(elapsed)}` +
      (details.interrupted ? " (interrupted)" : "") + `, shrunk ${details.numShrinks} times`,
      `  counterexample: ${
        details.counterexample === null ? "(none)" : fc.stringify(details.counterexample)
      }`,
      `  seed: ${details.seed}   path: ${details.counterexamplePath ?? "(none)"}`,
      `  replay: ${replay}`,
      `  error: ${describeError(details.errorInstance).replaceAll("\n", "\n  ")}`,
    ].join("\n"),
  );
  return false;
}

async function main(): Promise<number> {
  let parsed;
  try {
    parsed = parseArgs({
      args: Deno.args,
      options: {
        runs: { type: "string" },
        target: { type: "string", multiple: true },
        seed: { type: "string" },
        path: { type: "string" },
        list: { type: "boolean" },
        help: { type: "boolean", short: "h" },
      },
    });
  } catch (error) {
    fail(errorMessage(error));
  }
  const { values } = parsed;
  if (values.help) {
    console.log(USAGE);
    return 0;
  }
  const targets = allTargets();
  if (values.list) {
    for (const target of targets) console.log(target.name);
    return 0;
  }
  const runs = integerArg("runs", values.runs, DEFAULT_RUNS, 1);
  // One seed for the whole invocation, printed first, so any run can be replayed.
  const seed = integerArg("seed", values.seed, Math.floor(Math.random() * 0x7fffffff), -0x80000000);
  const selected = select(targets, values.target ?? []);
  console.log(`fuzz: ${selected.length} target(s), ${count(runs)} inputs each, seed ${seed}`);
  const started = performance.now();
  const failed: string[] = [];
  for (const target of selected) {
    if (!await fuzz(target, { runs, seed, path: values.path })) failed.push(target.name);
  }
  const summary = failed.length === 0 ? "all passed" : `${failed.length} failed: ${failed.join(", ")}`;
  console.log(`fuzz: ${summary} (${seconds(performance.now() - started)})`);
  return failed.length === 0 ? 0 : 1;
}

Deno.exit(await main());
