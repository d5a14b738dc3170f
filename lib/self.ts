/**
 * Running tailvoy itself again as a child process (the gRPC ext_authz bridge), the same way whether it
 * is the compiled binary or `main.ts` run by Deno, and the permissions both have.
 *
 * @module
 */

import { basename } from "node:path";
import { fileURLToPath } from "node:url";

/**
 * Permissions of the proxy at run time: network (listeners, backends, Envoy admin, ext_authz), the
 * LocalAPI socket and config files, temp files for Envoy's bootstrap, spawning Envoy, environment for
 * credentials, system info for the hostname, and FFI for the kernel's socket diagnostics (who opened a
 * serve-ingress connection; `lib/sockdiag/`). `deno compile` bakes them in.
 */
export const RUNTIME_PERMISSIONS = [
  "--allow-net",
  "--allow-read",
  "--allow-write",
  "--allow-env",
  "--allow-run",
  "--allow-sys",
  "--allow-ffi",
] as const;

const MAIN = fileURLToPath(new URL("../main.ts", import.meta.url));

/**
 * The command that runs `tailvoy ARGS...`: the compiled binary itself, or Deno running `main.ts` with
 * {@link RUNTIME_PERMISSIONS} and modules from the cache only (a child never fetches code).
 */
export function selfCommand(args: readonly string[]): { command: string; args: string[] } {
  const exe = Deno.execPath();
  if (/^deno(\.exe)?$/.test(basename(exe))) {
    return { command: exe, args: ["run", "--cached-only", ...RUNTIME_PERMISSIONS, MAIN, ...args] };
  }
  return { command: exe, args: [...args] };
}
