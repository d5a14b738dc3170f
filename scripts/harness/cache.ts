/**
 * Deno's module cache for the processes the suite, the bench and `deno task dev` start.
 *
 * Why: a dynamic `import()` at run time (the proxy loads its L7 stack and Envoy Gateway mode only when a
 * config needs them) makes Deno resolve the npm packages of the newly loaded modules again, and it asks
 * the registry for their package documents when those are not cached, although the lockfile pins every
 * version and the tarballs are cached. `deno install` does not store those documents when the lockfile
 * is complete, so inside the test's network namespace every such import tried the network (and printed
 * `Download …` on the proxy's log stream). Two rules keep that from happening again:
 * - {@link cacheDependencies} caches every entry point's module graph (static and dynamic imports) before
 *   the namespace is entered;
 * - every child `deno run` uses {@link sourceRunArgs}: `--cached-only`, as the compiled binary never
 *   fetches code either, so a gap in the cache is a clear error instead of a network attempt.
 *
 * @module
 */

import { join } from "node:path";
import { RUNTIME_PERMISSIONS } from "../compile.ts";
import { PROJECT_ROOT } from "./peers.ts";

/** Flags of every child `deno run`/`deno test` of project code: modules from the prepared cache only. */
export const CACHED_ONLY = "--cached-only";

/**
 * `deno run` arguments for running `entry` from source as the compiled binary runs: its permissions, and
 * modules only from the cache. Extra permissions (e.g. `--allow-all` for a test helper) replace the
 * binary's with `options.permissions`.
 */
export function sourceRunArgs(entry: string, options: { permissions?: readonly string[] } = {}): string[] {
  return ["run", CACHED_ONLY, ...options.permissions ?? RUNTIME_PERMISSIONS, entry];
}

async function entryPoints(): Promise<string[]> {
  const entries = ["main.ts"];
  for (
    const dir of [
      "scripts",
      "scripts/bench",
      "scripts/harness",
      "tests/unit",
      "tests/e2e",
      "tests/properties",
    ]
  ) {
    for await (const entry of Deno.readDir(join(PROJECT_ROOT, dir))) {
      if (entry.isFile && entry.name.endsWith(".ts")) entries.push(join(dir, entry.name));
    }
  }
  return entries.sort();
}

/**
 * Caches the module graph of `options.entries` (default: every entry point of the project — main.ts,
 * tests, scripts, bench helpers), dynamic imports included, from the lockfile. Needs the npm registry
 * unless the cache is already warm.
 */
export async function cacheDependencies(options: { entries?: readonly string[] } = {}): Promise<void> {
  const entries = options.entries ?? await entryPoints();
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["install", "--quiet", "--frozen", "--entrypoint", ...entries],
    cwd: PROJECT_ROOT,
    stdout: "inherit",
    stderr: "inherit",
  }).output();
  if (!out.success) {
    throw new Error(
      "Caching dependencies failed (deno install --entrypoint, see above): the npm registry must be reachable " +
        "the first time, and deno.lock must match deno.json (run `deno install` and commit deno.lock)",
    );
  }
}
