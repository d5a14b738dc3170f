/**
 * Process trees from `/proc`: which processes a command started, so a test can check that none is left
 * after the command stopped, and `deno task dev` can make sure its proxy leaves no Envoy behind.
 *
 * @module
 */

/** A process, identified by its pid and start time (so a reused pid is not mistaken for it). */
export interface ProcessEntry {
  pid: number;
  /** Start time in clock ticks since boot (field 22 of `/proc/<pid>/stat`). */
  start: number;
  /** The command name (`comm`). */
  name: string;
}

async function stat(pid: number): Promise<{ start: number; name: string; state: string } | undefined> {
  const text = await Deno.readTextFile(`/proc/${pid}/stat`).catch(() => undefined);
  if (text === undefined) return undefined;
  // The name may hold spaces and parentheses: it ends at the last ")".
  const close = text.lastIndexOf(")");
  const fields = text.slice(close + 2).split(" ");
  return { name: text.slice(text.indexOf("(") + 1, close), start: Number(fields[19]), state: fields[0] };
}

/** Direct children of `pid` (all threads' children), from `/proc`. */
export async function childPids(pid: number): Promise<number[]> {
  const out: number[] = [];
  try {
    for await (const task of Deno.readDir(`/proc/${pid}/task`)) {
      const text = await Deno.readTextFile(`/proc/${pid}/task/${task.name}/children`).catch(() => "");
      out.push(...text.trim().split(/\s+/).filter(Boolean).map(Number));
    }
  } catch { /* exited */ }
  return out;
}

/** Every live descendant of `pid` (not `pid` itself), parents before children. */
export async function descendants(pid: number): Promise<ProcessEntry[]> {
  const out: ProcessEntry[] = [];
  const queue = await childPids(pid);
  while (queue.length) {
    const next = queue.shift()!;
    const info = await stat(next);
    if (!info) continue;
    out.push({ pid: next, start: info.start, name: info.name });
    queue.push(...await childPids(next));
  }
  return out;
}

/**
 * Those of `entries` that are still running (same pid and start time). A zombie has exited: in the test's
 * PID namespace nobody may reap an orphan, so its entry stays until the namespace ends.
 */
export async function stillRunning(entries: readonly ProcessEntry[]): Promise<ProcessEntry[]> {
  const alive: ProcessEntry[] = [];
  for (const e of entries) {
    const now = await stat(e.pid);
    if (now && now.start === e.start && now.state !== "Z") alive.push(e);
  }
  return alive;
}

/** Sends `signal` to each of `entries` that is still the same process; gone ones are skipped. */
export async function killAll(entries: readonly ProcessEntry[], signal: Deno.Signal): Promise<void> {
  for (const e of await stillRunning(entries)) {
    try {
      Deno.kill(e.pid, signal);
    } catch { /* exited meanwhile */ }
  }
}

/** Whether `pid` exists and can run (not a zombie, not stopped by a signal or a tracer). */
export async function isRunning(pid: number): Promise<boolean> {
  const info = await stat(pid);
  return info !== undefined && !["Z", "X", "T", "t"].includes(info.state);
}
