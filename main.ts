/**
 * tailvoy: a Tailscale identity-aware proxy. Entry point of the CLI and of the compiled binary.
 *
 * @module
 */

import denoJson from "./deno.json" with { type: "json" };
import { EXIT, HELP, parseCli, UsageError } from "./lib/cli.ts";
import {
  CheckInputError,
  decide,
  describeIdentity,
  formatResults,
  identityFromCaps,
  identityFromTailnet,
  parseTestFile,
  runCases,
} from "./lib/commands/check.ts";
import { runProxy } from "./lib/commands/run.ts";
import {
  type Config,
  ConfigError,
  DEFAULT_CAPABILITY,
  DEFAULT_LOCALAPI_SOCKET,
  loadConfig,
} from "./lib/config/mod.ts";
import { LocalApiError } from "./lib/localapi/mod.ts";
import { getLogger, type LogFormat, setupLogging, toLogLevel } from "./lib/log.ts";
import { formatExplanation } from "./lib/policy/mod.ts";
import { errorMessage } from "./lib/util/error.ts";

/** tailvoy's version (from deno.json). */
export const VERSION: string = denoJson.version;

/** Default config path, as the Go tailvoy's `-config`. */
export const DEFAULT_CONFIG = "config.yaml";

function print(text: string): void {
  console.log(text);
}

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
    print(HELP);
    return EXIT.ok;
  }
  if (args.command === "version") {
    print(`tailvoy ${VERSION} (deno ${Deno.version.deno})`);
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

  // check and test read the config only when it is given; run and validate need one.
  const configPath = v.config ?? (["run", "validate"].includes(args.command) ? DEFAULT_CONFIG : undefined);
  let config: Config | undefined;
  try {
    if (configPath) config = await loadConfig(configPath);
  } catch (err) {
    if (err instanceof ConfigError) return fail(`invalid config ${configPath}:\n${err.message}`, EXIT.config);
    throw err;
  }
  const socket = v.socket ?? config?.tailvoy.localApiSocket ?? DEFAULT_LOCALAPI_SOCKET;
  const capNames = config?.tailvoy.capabilities ?? [DEFAULT_CAPABILITY];

  try {
    switch (args.command) {
      case "validate": {
        const names = Object.keys(config!.listeners);
        print(
          `${configPath}: valid (${
            config!.discovery ? "discovery mode" : `${names.length} listeners: ${names.join(", ")}`
          })`,
        );
        return EXIT.ok;
      }
      case "authz-bridge": {
        if (!v["authz-addr"] || !v.judge) throw new UsageError("authz-bridge needs --authz-addr and --judge");
        // Only this child process loads grpc-js (see lib/extauthz/grpc_bridge.ts).
        const { runGrpcBridge } = await import("./lib/extauthz/grpc_bridge.ts");
        return await runGrpcBridge(v["authz-addr"], { judge: v.judge });
      }
      case "run":
        return await runProxy(config!, {
          configPath,
          socket: v.socket,
          // Unset: a private unix socket, unreachable to other users (see lib/l7).
          authzAddr: v["authz-addr"],
          envoyArgs: args.envoyArgs,
        });
      case "check": {
        if (!v.listener) throw new UsageError("check needs --listener NAME");
        if ((v.as === undefined) === (v.caps === undefined)) {
          throw new UsageError("check needs exactly one of --as <tailnet IP> or --caps <file.json>");
        }
        const identity = v.caps
          ? identityFromCaps(await readCapsFile(v.caps), { capNames })
          : await identityFromTailnet(v.as!, socket, { capNames });
        const decision = decide(identity, {
          listener: v.listener,
          host: v.host,
          sni: v.sni,
          path: v.path,
          method: v.method,
        }, { config, capNames });
        print(`${decision.allow ? "ALLOW" : "DENY"} ${describeIdentity(identity)}`);
        print(formatExplanation(decision));
        for (const issue of identity.malformed) {
          print(`malformed rule ignored: ${issue.json} (${issue.reason})`);
        }
        return decision.allow ? EXIT.ok : EXIT.deny;
      }
      case "test": {
        const file = args.positionals[0];
        if (!file) throw new UsageError("test needs a fixtures file: tailvoy test cases.yaml");
        const cases = parseTestFile(await readText(file), file);
        const results = await runCases(cases, socket, { config, capNames });
        print(formatResults(results));
        return results.every((r) => r.pass) ? EXIT.ok : EXIT.deny;
      }
    }
  } catch (err) {
    if (err instanceof UsageError || err instanceof CheckInputError) return fail(err.message, EXIT.usage);
    if (err instanceof LocalApiError) return fail(err.message, EXIT.usage);
    getLogger().fatal("unexpected error: {error}", { error: err instanceof Error ? err.stack : String(err) });
    return EXIT.error;
  }
  return EXIT.ok;
}

async function readText(path: string): Promise<string> {
  try {
    return await Deno.readTextFile(path);
  } catch (err) {
    if (err instanceof Deno.errors.NotFound) throw new CheckInputError(`${path}: file not found`);
    throw err;
  }
}

async function readCapsFile(path: string): Promise<Record<string, unknown[]>> {
  const text = await readText(path);
  let data: unknown;
  try {
    data = JSON.parse(text);
  } catch (err) {
    throw new CheckInputError(`${path}: not valid JSON (${errorMessage(err)})`);
  }
  // Accept a whole WhoIs answer too: its CapMap is what counts.
  if (data && typeof data === "object" && "CapMap" in data) data = (data as { CapMap: unknown }).CapMap;
  if (!data || typeof data !== "object" || Array.isArray(data)) {
    throw new CheckInputError(
      `${path}: expected a capability map like {"rajsingh.info/cap/tailvoy": [{"listeners": ["web"]}]}`,
    );
  }
  for (const [name, rules] of Object.entries(data)) {
    if (!Array.isArray(rules)) throw new CheckInputError(`${path}: "${name}" must be a list of rules`);
  }
  return data as Record<string, unknown[]>;
}

if (import.meta.main) {
  Deno.exit(await main(Deno.args));
}
