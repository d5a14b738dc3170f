/**
 * Envoy's own log lines, turned into records for our logger: Envoy's level marker picks our level,
 * so a `[critical]` from Envoy is not lost among our `info` lines.
 *
 * Envoy's default format is `[time][thread][level][component] [file:line] message`; a message may
 * span lines (config errors, stack traces), and those continuation lines carry no marker.
 *
 * @module
 */

import type { LogLevel } from "@logtape/logtape";

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
