/**
 * What every command starts from: the config (when given, or required), the LocalAPI socket and the
 * capability names, read once from the command line and the config.
 *
 * @module
 */

import type { CliArgs } from "../cli.ts";
import {
  type Config,
  ConfigError,
  DEFAULT_CAPABILITY,
  DEFAULT_LOCALAPI_SOCKET,
  loadConfig,
} from "../config/mod.ts";

/** Default config path, as the Go tailvoy's `-config`. */
export const DEFAULT_CONFIG = "config.yaml";

/** A command's starting point. */
export interface CommandContext {
  /** The config file read, if any. */
  configPath?: string;
  config?: Config;
  /** LocalAPI socket: `--socket`, the config's, or the default. */
  socket: string;
  /** App capability names that carry tailvoy rules. */
  capNames: string[];
}

/** The config could not be loaded; the message names the file and every problem. */
export class ContextError extends Error {
  /** `message` says what is wrong and where. */
  constructor(message: string) {
    super(message);
    this.name = "ContextError";
  }
}

/**
 * Loads the config for `args`: `--config`, or `config.yaml` for commands that need one (`run`,
 * `validate`); `check` and `test` read one only when given. Rejects with a {@link ContextError}.
 */
export async function commandContext(args: CliArgs): Promise<CommandContext> {
  const v = args.values;
  const configPath = v.config ?? (["run", "validate"].includes(args.command) ? DEFAULT_CONFIG : undefined);
  let config: Config | undefined;
  try {
    if (configPath) config = await loadConfig(configPath);
  } catch (err) {
    if (err instanceof ConfigError) throw new ContextError(`invalid config ${configPath}:\n${err.message}`);
    throw err;
  }
  return {
    configPath,
    config,
    socket: v.socket ?? config?.tailvoy.localApiSocket ?? DEFAULT_LOCALAPI_SOCKET,
    capNames: config?.tailvoy.capabilities ?? [DEFAULT_CAPABILITY],
  };
}
