/**
 * Envoys left behind: Envoy runs in its own session, so it outlives a tailvoy that dies abruptly
 * (SIGKILL, a crash) and keeps holding its ports. Each run records who owns its Envoy in its temp
 * directory; the next supervisor on the machine stops Envoys whose owner is gone.
 *
 * @module
 */

import type { Logger } from "@logtape/logtape";

/** Prefix of the supervisor's per-run temp directories (the owner records are looked for in these). */
export const ENVOY_DIR_PREFIX = "tailvoy-envoy-";

/** Records in `dir` (a run's temp directory) that this process owns the Envoy with pid `envoyPid`. */
export async function recordOwner(dir: string, envoyPid: number): Promise<void> {
  await Deno.writeTextFile(`${dir}/owner.json`, JSON.stringify({ tailvoy: Deno.pid, envoy: envoyPid }));
}

/**
 * Stops Envoys left behind by tailvoy processes that no longer exist (killed, or crashed), and removes
 * their temp dirs. Only an Envoy whose command line names that dir is signalled, so a reused pid is safe.
 */
export async function reapOrphans(tempDir: string | undefined, log: Logger): Promise<number> {
  const base = tempDir ?? Deno.env.get("TMPDIR") ?? "/tmp";
  const alive = (pid: number) => Deno.stat(`/proc/${pid}`).then(() => true, () => false);
  let reaped = 0;
  let entries: Deno.DirEntry[] = [];
  try {
    entries = await Array.fromAsync(Deno.readDir(base));
  } catch {
    return 0;
  }
  for (const entry of entries) {
    if (!entry.isDirectory || !entry.name.startsWith(ENVOY_DIR_PREFIX)) continue;
    const dir = `${base}/${entry.name}`;
    let owner: { tailvoy: number; envoy: number };
    try {
      owner = JSON.parse(await Deno.readTextFile(`${dir}/owner.json`));
    } catch {
      continue; // not ours to judge (no owner record yet, or another user's)
    }
    if (await alive(owner.tailvoy)) continue;
    // Only when the pid provably is that Envoy: pids mean nothing across PID namespaces sharing /tmp.
    const cmdline = await Deno.readTextFile(`/proc/${owner.envoy}/cmdline`).catch(() => "");
    if (!cmdline.includes(dir)) continue;
    try {
      Deno.kill(owner.envoy, "SIGKILL");
      reaped++;
      log.warn("stopped an Envoy (pid {pid}) left behind by a tailvoy that is gone (pid {owner})", {
        pid: owner.envoy,
        owner: owner.tailvoy,
      });
    } catch { /* gone meanwhile */ }
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
  return reaped;
}
