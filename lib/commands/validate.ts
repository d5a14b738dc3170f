/**
 * `tailvoy validate`: reads the config and says whether it is valid (errors come from loading it).
 *
 * @module
 */

import type { CommandContext } from "./context.ts";

/** The line `validate` prints for a loaded config. */
export function validateCommand(
  _args: unknown,
  ctx: CommandContext,
): Promise<{ text: string; code: number }> {
  const config = ctx.config!;
  const names = Object.keys(config.listeners);
  const what = config.discovery ? "discovery mode" : `${names.length} listeners: ${names.join(", ")}`;
  return Promise.resolve({ text: `${ctx.configPath}: valid (${what})`, code: 0 });
}
