/**
 * Test helpers around the real proxy process: {@link Proxy} runs `main.ts` as a user would (with the
 * compiled binary's permissions, modules only from the prepared cache) and collects its JSON log lines;
 * {@link tcpEcho} is a backend.
 *
 * @module
 */

import { join } from "node:path";
import { lineSplitter } from "../../lib/util/lines.ts";
import { sourceRunArgs } from "./cache.ts";
import { PROJECT_ROOT } from "./peers.ts";
import { waitFor } from "./tailnet.ts";
import { closeQuietly } from "../../lib/util/async.ts";

const enc = new TextEncoder();

/** Whether `line` is one of the proxy's JSON log records (`{"@timestamp":…}`). */
function isLogRecord(line: string): boolean {
  if (!line.startsWith("{")) return false;
  try {
    const value = JSON.parse(line);
    return typeof value === "object" && value !== null && "@timestamp" in value;
  } catch {
    return false;
  }
}

/** A running proxy process with its log lines. */
export class Proxy {
  /** The proxy's JSON log lines, in order (each parses as a log record). */
  readonly lines: string[] = [];
  /**
   * Anything else the process wrote (e.g. Deno's own messages): never a log line, reported on the test's
   * stderr as it arrives.
   */
  readonly other: string[] = [];
  readonly child: Deno.ChildProcess;
  readonly #done: Promise<void>;
  /**
   * Starts `tailvoy --config configPath --socket socket`, with extra environment variables; `prefix`
   * runs it under another command (e.g. `ip netns exec NS`, which execs it: the pid stays the proxy's).
   */
  constructor(
    configPath: string,
    socket: string,
    options: { env?: Record<string, string>; args?: string[]; prefix?: string[] } = {},
  ) {
    const [program, ...before] = [...options.prefix ?? [], Deno.execPath()];
    this.child = new Deno.Command(program, {
      args: [
        ...before,
        ...sourceRunArgs(join(PROJECT_ROOT, "main.ts")),
        "--config",
        configPath,
        "--socket",
        socket,
        "--log-format",
        "json",
        ...options.args ?? [],
      ],
      env: options.env,
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    const collect = async (stream: ReadableStream<Uint8Array>) => {
      for await (const line of stream.pipeThrough(new TextDecoderStream()).pipeThrough(lineSplitter())) {
        if (!line) continue;
        if (isLogRecord(line)) {
          this.lines.push(line);
        } else {
          this.other.push(line);
          console.error(`proxy pid ${this.child.pid} wrote a line that is not a log record: ${line}`);
        }
      }
    };
    this.#done = Promise.all([collect(this.child.stdout), collect(this.child.stderr)]).then(() => {});
  }
  /** The log records, parsed (fields vary by logger, as in the JSON lines a user reads). */
  // deno-lint-ignore no-explicit-any
  records(): any[] {
    return this.lines.map((l) => JSON.parse(l));
  }
  /** Everything the process wrote so far, log lines and other output. */
  get output(): string {
    return [...this.lines, ...this.other].join("\n");
  }
  /** Waits for a log line whose message matches. */
  waitLog(re: RegExp, what: string): Promise<string> {
    return waitFor(() => this.lines.find((l) => re.test(l)), {
      what: `proxy log: ${what}`,
      timeoutMs: 20_000,
    });
  }
  /** Resolves with the exit code once the process has exited by itself. */
  async exited(): Promise<number> {
    const status = await this.child.status;
    await this.#done;
    return status.code;
  }
  /** SIGTERM, then the exit code. */
  async stop(): Promise<number> {
    try {
      this.child.kill("SIGTERM");
    } catch { /* exited */ }
    const status = await this.child.status;
    await this.#done;
    return status.code;
  }
}

/** A TCP echo backend on 127.0.0.1 that answers every chunk with `echo:` + the chunk. */
export function tcpEcho(): { port: number; close: () => void } {
  const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  (async () => {
    for await (const c of l) {
      (async () => {
        const buf = new Uint8Array(4096);
        try {
          while (true) {
            const n = await c.read(buf);
            if (n === null) break;
            await c.write(new Uint8Array([...enc.encode("echo:"), ...buf.subarray(0, n)]));
          }
        } catch { /* reset */ }
        closeQuietly(c);
      })();
    }
  })();
  return { port: (l.addr as Deno.NetAddr).port, close: () => l.close() };
}
