/**
 * `tailvoy test`: runs a file of policy cases (`check.ts`'s model) and prints one line per case.
 *
 * @module
 */

import { type CliArgs, EXIT, UsageError } from "../cli.ts";
import { formatResults, parseTestFile, readInputFile, runCases } from "./check.ts";
import type { CommandContext } from "./context.ts";

/** Runs the cases of the file named by the first positional argument. */
export async function testCommand(
  args: CliArgs,
  ctx: CommandContext,
): Promise<{ text: string; code: number }> {
  const file = args.positionals[0];
  if (!file) throw new UsageError("test needs a fixtures file: tailvoy test cases.yaml");
  const cases = parseTestFile(await readInputFile(file), file);
  const results = await runCases(cases, ctx.socket, { config: ctx.config, capNames: ctx.capNames });
  return { text: formatResults(results), code: results.every((r) => r.pass) ? EXIT.ok : EXIT.deny };
}
