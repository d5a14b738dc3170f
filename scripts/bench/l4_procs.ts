/**
 * Child processes of the L4 bench: spawned with a raised open-files limit, their stdout read as lines,
 * the tail of their stderr kept for error messages, and their memory and CPU read from `/proc`.
 *
 * @module
 */

/** Open-files limit asked for the proxy, the backend and the load generator (10k connections each). */
export const FD_LIMIT = 65536;

/** A running child process. */
export class Child {
  readonly name: string;
  readonly process: Deno.ChildProcess;
  readonly #lines: string[] = [];
  readonly #waiters: ((line: string | undefined) => void)[] = [];
  readonly #stderr: string[] = [];
  #ended = false;
  #exited = false;
  readonly #writer?: WritableStreamDefaultWriter<Uint8Array>;

  /**
   * Starts `cmd args` through `sh` so the open-files limit can be raised first (Deno cannot call
   * setrlimit): to `options.fdLimit`, or as far as the hard limit allows when that is refused.
   */
  constructor(name: string, argv: string[], options: { fdLimit?: number; stdin?: boolean } = {}) {
    this.name = name;
    const limit = options.fdLimit ?? FD_LIMIT;
    const script = `ulimit -n ${limit} 2>/dev/null || ulimit -n "$(ulimit -Hn)"; exec "$@"`;
    this.process = new Deno.Command("sh", {
      args: ["-c", script, "sh", ...argv],
      stdin: options.stdin ? "piped" : "null",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    if (options.stdin) this.#writer = this.process.stdin.getWriter();
    this.process.status.then(() => this.#exited = true, () => this.#exited = true);
    void this.#read(this.process.stdout, (line) => {
      const waiter = this.#waiters.shift();
      if (waiter) waiter(line);
      else this.#lines.push(line);
    }).finally(() => {
      this.#ended = true;
      for (const w of this.#waiters.splice(0)) w(undefined);
    });
    void this.#read(this.process.stderr, (line) => {
      this.#stderr.push(line);
      if (this.#stderr.length > 30) this.#stderr.shift();
    });
  }

  /** The process id (of the program itself: `sh` execs it). */
  get pid(): number {
    return this.process.pid;
  }

  async #read(stream: ReadableStream<Uint8Array>, onLine: (line: string) => void): Promise<void> {
    let buf = "";
    try {
      for await (const chunk of stream.pipeThrough(new TextDecoderStream())) {
        buf += chunk;
        let nl;
        while ((nl = buf.indexOf("\n")) >= 0) {
          onLine(buf.slice(0, nl));
          buf = buf.slice(nl + 1);
        }
      }
    } catch { /* killed */ }
    if (buf) onLine(buf);
  }

  /** Whether it has exited. */
  get exited(): boolean {
    return this.#exited;
  }

  /** The last lines of its stderr, for error messages. */
  stderrTail(lines = 10): string {
    return this.#stderr.slice(-lines).join("\n");
  }

  /** The next stdout line; rejects after `timeoutMs` or when the process ends first. */
  nextLine(timeoutMs: number): Promise<string> {
    const queued = this.#lines.shift();
    if (queued !== undefined) return Promise.resolve(queued);
    return new Promise((resolve, reject) => {
      const fail = (why: string) =>
        reject(
          new Error(`${this.name}: ${why}${this.#stderr.length ? `; stderr:\n${this.stderrTail()}` : ""}`),
        );
      if (this.#ended) return fail("exited");
      const timer = setTimeout(() => {
        const i = this.#waiters.indexOf(waiter);
        if (i >= 0) this.#waiters.splice(i, 1);
        fail(`no answer within ${timeoutMs} ms`);
      }, timeoutMs);
      const waiter = (line: string | undefined) => {
        clearTimeout(timer);
        if (line === undefined) fail("exited");
        else resolve(line);
      };
      this.#waiters.push(waiter);
    });
  }

  /** Sends one JSON line on stdin and parses the JSON line it answers. */
  async request<T>(message: unknown, timeoutMs: number): Promise<T> {
    if (!this.#writer) throw new Error(`${this.name} has no stdin`);
    await this.#writer.write(new TextEncoder().encode(JSON.stringify(message) + "\n"));
    return JSON.parse(await this.nextLine(timeoutMs)) as T;
  }

  /** Stops it: SIGTERM (stdin closed first), SIGKILL after `graceMs`; resolves when it has exited. */
  async stop(graceMs = 3000): Promise<void> {
    await this.#writer?.close().catch(() => {});
    try {
      this.process.kill("SIGTERM");
    } catch { /* exited */ }
    const timer = setTimeout(() => {
      try {
        this.process.kill("SIGKILL");
      } catch { /* exited */ }
    }, graceMs);
    await this.process.status.catch(() => {});
    clearTimeout(timer);
  }
}

/** Resident set size of `pid` in MiB (VmRSS of `/proc/<pid>/status`). */
export async function rssMiB(pid: number): Promise<number> {
  const status = await Deno.readTextFile(`/proc/${pid}/status`);
  const kb = Number(/^VmRSS:\s+(\d+)\s+kB/m.exec(status)?.[1]);
  if (!Number.isFinite(kb)) throw new Error(`no VmRSS for pid ${pid}`);
  return kb / 1024;
}

/** Threads of `pid` (all of them, not only the ones doing I/O). */
export async function threadCount(pid: number): Promise<number> {
  const status = await Deno.readTextFile(`/proc/${pid}/status`);
  return Number(/^Threads:\s+(\d+)/m.exec(status)?.[1]);
}

// Clock ticks per second of /proc/<pid>/stat times: 100 on every Linux we run on.
const CLK_TCK = 100;

/** CPU time (user + system, all threads) `pid` has used so far, in ms (10 ms resolution). */
export async function cpuMs(pid: number): Promise<number> {
  const stat = await Deno.readTextFile(`/proc/${pid}/stat`);
  // Fields after the command name (which may hold spaces) start at field 3; utime and stime are 14, 15.
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  return (Number(fields[11]) + Number(fields[12])) * 1000 / CLK_TCK;
}

/** A port that was free a moment ago on 127.0.0.1. */
export function freePort(): number {
  const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const { port } = l.addr;
  l.close();
  return port;
}

/** Whether `cmd` is found in PATH. */
export async function onPath(cmd: string): Promise<boolean> {
  try {
    const out = await new Deno.Command("sh", { args: ["-c", `command -v ${cmd}`], stdout: "null" }).output();
    return out.success;
  } catch {
    return false;
  }
}
