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
 * the default, else the `ENVOY_BIN` environment variable (the Go tailvoy's), else `envoy` from PATH.
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
const ALIASES = new Map([["-l", "--log-level"], ["-c", "--config-path"]]);
// Options without a value.
const SWITCHES = new Set(["--disable-hot-restart"]);

function optionName(token: string): string {
  const name = token.split("=")[0];
  return ALIASES.get(name) ?? name;
}

/**
 * Our Envoy arguments followed by the user's `extra` ones (the CLI's arguments after `--`). An
 * option given in both keeps the user's value, since Envoy refuses an option given twice. `-c` is
 * refused: the bootstrap is ours (add to it with `--config-yaml`, which Envoy merges on top) —
 * unless `external`, when the user's arguments configure Envoy alone (discovery mode).
 */
export function mergeEnvoyArgs(
  ours: readonly string[],
  extra: readonly string[],
  options: { external?: boolean } = {},
): string[] {
  const theirs = new Set(extra.filter((t) => t.startsWith("-")).map(optionName));
  if (theirs.has("--config-path") && !options.external) {
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
 * Free loopback ports, one per name, chosen at random *below* the kernel's ephemeral range: a port
 * from `bind(0)` is an ephemeral one, which the kernel may hand to any outgoing connection in the
 * moment between our release and Envoy's bind. Each candidate is checked by binding it (all held
 * together, so they differ) and released.
 */
export function allocatePorts(names: readonly string[]): Map<string, number> {
  const low = ephemeralLow();
  const held: Deno.Listener[] = [];
  try {
    const ports = new Map<string, number>();
    for (const name of names) {
      for (let attempt = 0;; attempt++) {
        // [10000, low): well clear of well-known ports and of the ephemeral range.
        const port = attempt < 50 ? 10_000 + Math.floor(Math.random() * (low - 10_000)) : 0;
        try {
          const l = Deno.listen({ hostname: "127.0.0.1", port });
          held.push(l);
          ports.set(name, (l.addr as Deno.NetAddr).port);
          break;
        } catch (err) {
          if (!(err instanceof Deno.errors.AddrInUse) || attempt >= 50) throw err;
        }
      }
    }
    return ports;
  } finally {
    for (const l of held) l.close();
  }
}

// Lowest port of the kernel's ephemeral range (Linux default 32768).
function ephemeralLow(): number {
  try {
    const low = Number(
      Deno.readTextFileSync("/proc/sys/net/ipv4/ip_local_port_range").trim().split(/\s+/)[0],
    );
    return low > 11_000 ? low : 32768;
  } catch {
    return 32768;
  }
}
