/**
 * `deno task compile [TARGET...]`: builds self-contained `tailvoy` binaries into `dist/`.
 *
 * `deno compile` downloads the Deno runtime for each target, so it needs internet access (it cannot run
 * on the project's offline development machines; the release workflow runs it). The permissions baked in
 * are {@link RUNTIME_PERMISSIONS}, the same ones `deno task start` uses, and everything read at run time
 * from the source tree (e.g. `proto/`) is embedded with `--include`.
 *
 * @module
 */

import { join } from "node:path";
import { RUNTIME_PERMISSIONS } from "../lib/self.ts";
import { PROJECT_ROOT } from "./harness/peers.ts";

/** Targets built by default. */
export const TARGETS = [
  "x86_64-unknown-linux-gnu",
  "aarch64-unknown-linux-gnu",
  "x86_64-apple-darwin",
  "aarch64-apple-darwin",
] as const;

/** Permissions of the proxy at run time (defined beside the code that re-runs tailvoy as a child). */
export { RUNTIME_PERMISSIONS };

/** Source folders the binary reads at run time; embedded with `--include`. */
export const RUNTIME_INCLUDES = ["proto"] as const;

async function exists(path: string): Promise<boolean> {
  try {
    await Deno.stat(path);
    return true;
  } catch {
    return false;
  }
}

if (import.meta.main) {
  const targets = Deno.args.length ? Deno.args : [...TARGETS];
  const includes = [];
  for (const dir of RUNTIME_INCLUDES) {
    if (await exists(join(PROJECT_ROOT, dir))) includes.push("--include", dir);
  }
  for (const target of targets) {
    const output = join("dist", `tailvoy-${target}`);
    console.error(`compile: ${output}`);
    const out = await new Deno.Command(Deno.execPath(), {
      args: [
        "compile",
        ...RUNTIME_PERMISSIONS,
        ...includes,
        "--target",
        target,
        "--output",
        output,
        "main.ts",
      ],
      cwd: PROJECT_ROOT,
      stdout: "inherit",
      stderr: "inherit",
    }).output();
    if (!out.success) {
      console.error(
        `compile: deno compile for ${target} failed; it downloads the Deno runtime for the target, so it needs internet access`,
      );
      Deno.exit(1);
    }
  }
}
