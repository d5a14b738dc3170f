/**
 * Command-line parsing. Accepts the Go tailvoy's flags (`-config`, `-authz-addr`, `-log-level`) as well
 * as `--config`; everything after `--` is passed to Envoy untouched.
 *
 * @module
 */

import { parseArgs, type ParseArgsConfig } from "node:util";
import { errorMessage } from "./util/error.ts";

/** Exit codes shared by every subcommand. */
export const EXIT = { ok: 0, deny: 1, usage: 2, config: 2, error: 1 } as const;

/** Subcommands; `run` is the default. */
export const COMMANDS = ["run", "validate", "check", "test", "version", "help"] as const;

/**
 * Subcommands tailvoy runs itself, not listed in the help: `authz-bridge` is the gRPC ext_authz child
 * process of Envoy Gateway mode (`--authz-addr ADDR --judge SOCKET`).
 */
export const INTERNAL_COMMANDS = ["authz-bridge"] as const;

/** One subcommand name. */
export type Command = typeof COMMANDS[number] | typeof INTERNAL_COMMANDS[number];

const OPTIONS = {
  config: { type: "string", short: "c" },
  "authz-addr": { type: "string" },
  judge: { type: "string" },
  "log-level": { type: "string" },
  "log-format": { type: "string" },
  socket: { type: "string" },
  help: { type: "boolean", short: "h" },
  version: { type: "boolean", short: "v" },
  // check / test
  as: { type: "string" },
  caps: { type: "string" },
  listener: { type: "string" },
  host: { type: "string" },
  sni: { type: "string" },
  path: { type: "string" },
  method: { type: "string" },
} as const satisfies ParseArgsConfig["options"];

/** Parsed command line. */
export interface CliArgs {
  /** The subcommand. */
  command: Command;
  /** Option values by long name (strings or booleans as declared). */
  values: ReturnType<typeof parse>["values"];
  /** Positional arguments after the subcommand. */
  positionals: string[];
  /** Arguments after `--`, for Envoy. */
  envoyArgs: string[];
}

function parse(args: string[]) {
  return parseArgs({ args, options: OPTIONS, allowPositionals: true, strict: true });
}

/** A command line that cannot be understood; the message says what to type instead. */
export class UsageError extends Error {
  override name = "UsageError";
}

const LONG_NAMES = new Set(Object.keys(OPTIONS));

// Go's flag package takes `-name value` and `-name=value`; rewrite those to `--name` for parseArgs.
function normalizeGoFlags(args: string[]): string[] {
  return args.map((arg) => {
    const m = /^-([a-z][a-z-]+)(=.*)?$/.exec(arg);
    return m && LONG_NAMES.has(m[1]) ? `-${arg}` : arg;
  });
}

/** Parses `argv` (without the program name). Throws {@link UsageError} on a bad command line. */
export function parseCli(argv: string[]): CliArgs {
  const dash = argv.indexOf("--");
  const own = normalizeGoFlags(dash === -1 ? argv : argv.slice(0, dash));
  const envoyArgs = dash === -1 ? [] : argv.slice(dash + 1);
  let parsed: ReturnType<typeof parse>;
  try {
    parsed = parse(own);
  } catch (err) {
    const msg = errorMessage(err);
    throw new UsageError(`${msg.replace(/\. To specify.*$/s, "")}; see \`tailvoy --help\``);
  }
  const [first, ...rest] = parsed.positionals;
  let command: Command = "run";
  if (first !== undefined) {
    if (![...COMMANDS, ...INTERNAL_COMMANDS].includes(first as Command)) {
      throw new UsageError(
        `Unknown command "${first}": use one of ${COMMANDS.join(", ")}; see \`tailvoy --help\``,
      );
    }
    command = first as Command;
  }
  if (parsed.values.help) command = "help";
  else if (parsed.values.version) command = "version";
  return { command, values: parsed.values, positionals: rest, envoyArgs };
}

/** The text of `tailvoy --help`. */
export const HELP =
  `tailvoy: Tailscale identity-aware proxy (L4 relay + Envoy ext_authz), driven by tailnet grants

Usage:
  tailvoy [run] [flags] [-- envoy args...]   run the proxy
  tailvoy validate --config FILE             check a config file; exit 0 valid, 2 invalid
  tailvoy check [--as IP | --caps FILE] --listener NAME [--host H | --sni H] [--path P] [--method M]
                                             explain one decision; exit 0 allow, 1 deny, 2 error
  tailvoy test FIXTURES.yaml                 run policy test cases; exit 0 all pass, 1 any fail
  tailvoy version                            print the version

Flags (Go-style single dash works too: -config, -authz-addr, -log-level):
  -c, --config FILE       config file (default: config.yaml)
      --authz-addr ADDR   discovery mode: gRPC ext_authz listen address for Envoy Gateway's
                          SecurityPolicy, host:port or unix:/path (default 127.0.0.1:9001; 0.0.0.0:9001
                          in an Envoy Gateway pod). Standalone mode ignores it: our own Envoy calls
                          ext_authz over HTTP on a private unix socket
      --log-level LEVEL   trace, debug, info, warn, error (default: info)
      --log-format FMT    json or text (default: text on a terminal, else json)
      --socket PATH       tailscaled LocalAPI socket (default: config tailvoy.localApiSocket, else
                          /var/run/tailscale/tailscaled.sock)
  -h, --help              this help
  -v, --version           print the version

Environment: TS_AUTHKEY, or TS_CLIENT_ID and TS_CLIENT_SECRET, to log tailscaled in; never logged.
`;
