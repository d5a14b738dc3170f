/**
 * tailvoy: a Tailscale identity-aware proxy. Entry point of the CLI and of the compiled binary.
 *
 * @module
 */

import denoJson from "./deno.json" with { type: "json" };
import { EXIT, HELP, parseCli, UsageError } from "./lib/cli.ts";
import { authzBridgeCommand } from "./lib/commands/authz_bridge.ts";
import { checkCommand, CheckInputError } from "./lib/commands/check.ts";
import { commandContext, ContextError, DEFAULT_CONFIG } from "./lib/commands/context.ts";
import { runProxy } from "./lib/commands/run.ts";
import { testCommand } from "./lib/commands/test.ts";
import { validateCommand } from "./lib/commands/validate.ts";
import { LocalApiError } from "./lib/localapi/mod.ts";
import { getLogger, type LogFormat, setupLogging, toLogLevel } from "./lib/log.ts";
import { errorMessage } from "./lib/util/error.ts";

/** tailvoy's version (from deno.json). */
export const VERSION: string = denoJson.version;

export { DEFAULT_CONFIG };

function fail(text: string, code: number): number {
  console.error(`tailvoy: ${text}`);
  return code;
}

/** Runs the CLI with `argv` (without the program name); resolves with the exit code. */
export async function main(argv: string[]): Promise<number> {
  let args;
  try {
    args = parseCli(argv);
  } catch (err) {
    if (err instanceof UsageError) return fail(err.message, EXIT.usage);
    throw err;
  }
  const v = args.values;
  if (args.command === "help") {
    console.log(HELP);
    return EXIT.ok;
  }
  if (args.command === "version") {
    console.log(`tailvoy ${VERSION} (deno ${Deno.version.deno})`);
    return EXIT.ok;
  }
  try {
    setupLogging(toLogLevel(v["log-level"] ?? "info"), { format: v["log-format"] as LogFormat | undefined });
    if (v["log-format"] && !["json", "text"].includes(v["log-format"])) {
      throw new UsageError(`Unknown log format "${v["log-format"]}": use json or text`);
    }
  } catch (err) {
    return fail(errorMessage(err), EXIT.usage);
  }
  try {
    if (args.command === "authz-bridge") return await authzBridgeCommand(args);
    const ctx = await commandContext(args);
    switch (args.command) {
      case "run":
        return await runProxy(ctx.config!, {
          configPath: ctx.configPath,
          socket: v.socket,
          // Unset: a private unix socket, unreachable to other users (see lib/l7).
          authzAddr: v["authz-addr"],
          envoyArgs: args.envoyArgs,
        });
      case "validate":
      case "check":
      case "test": {
        const command = { validate: validateCommand, check: checkCommand, test: testCommand }[args.command];
        const { text, code } = await command(args, ctx);
        console.log(text);
        return code;
      }
    }
  } catch (err) {
    if (err instanceof ContextError) return fail(err.message, EXIT.config);
    if (err instanceof UsageError || err instanceof CheckInputError) return fail(err.message, EXIT.usage);
    if (err instanceof LocalApiError) return fail(err.message, EXIT.usage);
    getLogger().fatal("unexpected error: {error}", { error: err instanceof Error ? err.stack : String(err) });
    return EXIT.error;
  }
}

if (import.meta.main) {
  Deno.exit(await main(Deno.args));
}
