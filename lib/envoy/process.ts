/**
 * Small process-level helpers of the Envoy supervisor: which binary, which arguments, which ports.
 *
 * @module
 */

import { EnvoyError } from "./errors.ts";

/** Default Envoy executable (looked up in PATH), as `tailvoy.envoyBinary` defaults to. */
export const DEFAULT_ENVOY_BINARY = "envoy";

/**
 * The Envoy executable to run: `configured` (`tailvoy.envoyBinary`) when set to something other than
 * the default, else tailvoy's `ENVOY_BIN` environment variable, else `envoy` from PATH.
 */
export function resolveEnvoyBinary(
  configured: string | undefined,
  options: { env?: (name: string) => string | undefined } = {},
): string {
  if (configured && configured !== DEFAULT_ENVOY_BINARY) return configured;
  const env = options.env ?? ((name: string) => Deno.env.get(name));
  return env("ENVOY_BIN") || DEFAULT_ENVOY_BINARY;
}

// Envoy's short options and their long names (TCLAP rejects an option given twice).
const ALIASES: Record<string, string> = { "-l": "--log-level", "-c": "--config-path" };
// Options without a value.
const SWITCHES = new Set(["--disable-hot-restart"]);

function optionName(token: string): string {
  const name = token.split("=")[0];
  return ALIASES[name] ?? name;
}

/**
 * Our Envoy arguments followed by the user's `extra` ones (the CLI's arguments after `--`). An
 * option given in both keeps the user's value, since Envoy refuses an option given twice. `-c` is
 * refused: the bootstrap is ours (add to it with `--config-yaml`, which Envoy merges on top).
 */
export function mergeEnvoyArgs(ours: readonly string[], extra: readonly string[]): string[] {
  const theirs = new Set(extra.filter((t) => t.startsWith("-")).map(optionName));
  if (theirs.has("--config-path")) {
    throw new EnvoyError(
      "spawn",
      `Extra Envoy argument "${
        extra.find((t) => optionName(t) === "--config-path")
      }" would replace tailvoy's ` +
        "bootstrap: use --config-yaml to add to it",
    );
  }
  const kept: string[] = [];
  for (let i = 0; i < ours.length; i++) {
    const token = ours[i];
    const name = optionName(token);
    const hasValue = !SWITCHES.has(name) && !token.includes("=") && i + 1 < ours.length;
    if (theirs.has(name)) {
      if (hasValue) i++;
      continue;
    }
    kept.push(token);
    if (hasValue) kept.push(ours[++i]);
  }
  return [...kept, ...extra];
}

/**
 * Free loopback ports, one per name: each is bound on 127.0.0.1 with port 0 and released at once
 * (all held together, so they differ). Another process could take one before Envoy binds it; Envoy
 * then fails to start with a bind error and the caller may pick again.
 */
export function allocatePorts(names: readonly string[]): Map<string, number> {
  const listeners = names.map(() => Deno.listen({ hostname: "127.0.0.1", port: 0 }));
  try {
    return new Map(names.map((name, i) => [name, (listeners[i].addr as Deno.NetAddr).port]));
  } finally {
    for (const l of listeners) l.close();
  }
}
