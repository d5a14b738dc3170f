/**
 * Envoy's output: its stdout and stderr read line by line into our logger, the last lines kept for error
 * messages. Envoy's level marker picks our level, so a `[critical]` from Envoy is not lost among our
 * `info` lines.
 *
 * Envoy's default format is `[time][thread][level][component] [file:line] message`; a message may
 * span lines (config errors, stack traces), and those continuation lines carry no marker.
 *
 * @module
 */

import type { Logger, LogLevel } from "@logtape/logtape";
import { lineSplitter } from "../util/lines.ts";

/** One parsed Envoy log line. */
export interface EnvoyLogLine {
  /** Our level for it. */
  level: LogLevel;
  /** Envoy's level word (`warning`, `critical`, …), or `undefined` for a line without a marker. */
  envoyLevel?: string;
  /** Envoy's logger (`main`, `config`, `upstream`, …). */
  component?: string;
  /** The message without Envoy's time, thread, level and source prefix. */
  message: string;
}

const ENVOY_LEVELS: Record<string, LogLevel> = {
  trace: "trace",
  debug: "debug",
  info: "info",
  warning: "warning",
  warn: "warning",
  error: "error",
  critical: "fatal",
};

const LINE = /^\[[^\]]*\]\[\d+\]\[([a-z]+)\]\[([^\]]*)\] (?:\[[^\]]*\] )?(.*)$/s;

/**
 * Parses one line of Envoy output. A line without a level marker takes `previous` (the level of the
 * message it continues), or `info`.
 */
export function parseEnvoyLogLine(line: string, options: { previous?: LogLevel } = {}): EnvoyLogLine {
  const m = LINE.exec(line);
  const level = m ? ENVOY_LEVELS[m[1]] : undefined;
  if (!m || !level) return { level: options.previous ?? "info", message: line };
  return { level, envoyLevel: m[1], component: m[2], message: m[3] };
}

/** The error lines of Envoy's output without their prefixes (what to show a user), else the last lines. */
export function envoyErrorSummary(output: string): string {
  const lines = output.split("\n").map((l) => l.trimEnd()).filter(Boolean);
  let previous: LogLevel | undefined;
  const parsed = lines.map((l) => {
    const p = parseEnvoyLogLine(l, { previous });
    previous = p.level;
    return p;
  });
  const errors = parsed.filter((p) => p.level === "error" || p.level === "fatal");
  const picked = errors.length > 0 ? errors : parsed.slice(-5);
  // Protobuf's messages pad with a random number of spaces (on purpose, against exact matching).
  return picked.map((p) => p.message.replace(/ {2,}/g, " ")).join("\n");
}

/** How many of Envoy's last lines {@link EnvoyOutput.tail} keeps. */
const TAIL_LINES = 50;

/**
 * Reads a running Envoy's stdout and stderr into `log` until the pipes close, each line a record at
 * Envoy's own level, tagged with the stream and pid.
 */
export class EnvoyOutput {
  /** Settles when both pipes are closed (Envoy and everything it started exited). */
  readonly done: Promise<void>;
  readonly #tail: string[] = [];
  readonly #log: Logger;
  readonly #pid: number;

  /** Starts reading `child`'s piped stdout and stderr. */
  constructor(child: Pick<Deno.ChildProcess, "stdout" | "stderr" | "pid">, options: { log: Logger }) {
    this.#log = options.log;
    this.#pid = child.pid;
    this.done = Promise.all([this.#pump(child.stderr, "stderr"), this.#pump(child.stdout, "stdout")])
      .then(() => {});
  }

  /** Envoy's last lines (at most 50), for error messages. */
  get tail(): string {
    return this.#tail.join("\n");
  }

  async #pump(stream: ReadableStream<Uint8Array>, name: string): Promise<void> {
    let previous: LogLevel | undefined;
    try {
      for await (const line of stream.pipeThrough(new TextDecoderStream()).pipeThrough(lineSplitter())) {
        if (!line) continue;
        this.#tail.push(line);
        if (this.#tail.length > TAIL_LINES) this.#tail.shift();
        const parsed = parseEnvoyLogLine(line, { previous });
        previous = parsed.level;
        const emit = this.#log[parsed.level] as (
          message: string,
          properties: Record<string, unknown>,
        ) => void;
        emit.call(this.#log, "{message}", {
          message: parsed.message,
          envoyLevel: parsed.envoyLevel,
          component: parsed.component,
          stream: name,
          pid: this.#pid,
        });
      }
    } catch {
      // The pipe broke with the process; nothing more to read.
    }
  }
}
