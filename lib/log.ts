/**
 * Logging: LogTape to standard error, JSON lines when stderr is not a terminal (for collectors) and
 * readable text on a terminal. Secrets are redacted before any formatter sees a record.
 *
 * @module
 */

import {
  configureSync,
  getJsonLinesFormatter,
  getLogger as logtapeLogger,
  getTextFormatter,
  type Logger,
  type LogLevel,
  type LogRecord,
  resetSync,
  type Sink,
} from "@logtape/logtape";

/** Log levels accepted by `-log-level` (the Go tailvoy's four, plus LogTape's trace and fatal). */
export const LOG_LEVELS = ["trace", "debug", "info", "warn", "error", "fatal"] as const;

/** Output format of the log sink. */
export type LogFormat = "json" | "text";

const REDACTED = "[redacted]";
// Property names whose values are credentials wherever they appear.
const SECRET_KEY = /secret|password|passwd|token|authkey|auth_key|api_?key|credential|cookie|authorization/i;
// Tailscale keys (auth keys, OAuth client secrets, API keys) that slipped into free text.
const SECRET_TEXT = /tskey-[A-Za-z0-9-]+/g;

/** Replaces credentials in a value (recursively) with `[redacted]`. */
export function redact(value: unknown, key = ""): unknown {
  if (key && SECRET_KEY.test(key) && value !== undefined && value !== null && value !== "") return REDACTED;
  if (typeof value === "string") return value.replace(SECRET_TEXT, "tskey-" + REDACTED);
  if (Array.isArray(value)) return value.map((v) => redact(v));
  if (value instanceof Error) return redact(`${value.name}: ${value.message}`);
  if (value && typeof value === "object" && Object.getPrototypeOf(value) === Object.prototype) {
    return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, redact(v, k)]));
  }
  return value;
}

function redactRecord(record: LogRecord): LogRecord {
  return {
    ...record,
    message: record.message.map((part) => redact(part)),
    properties: redact(record.properties) as Record<string, unknown>,
  };
}

/** Builds the redacting sink that writes one formatted record per line to `write`. */
export function redactingSink(
  format: LogFormat,
  options: { write?: (line: string) => void } = {},
): Sink {
  const formatter = format === "json"
    ? getJsonLinesFormatter({ properties: "flatten", categorySeparator: "." })
    : getTextFormatter({ timestamp: "time", category: "." });
  const encoder = new TextEncoder();
  const write = options.write ?? ((line: string) => Deno.stderr.writeSync(encoder.encode(line)));
  return (record) => write(formatter(redactRecord(record)));
}

/**
 * Configures logging for the process. Call once at start-up; calling again replaces the configuration.
 */
export function setupLogging(
  level: LogLevel,
  options: { format?: LogFormat; write?: (line: string) => void } = {},
): void {
  const format = options.format ?? (Deno.stderr.isTerminal() ? "text" : "json");
  current = { level, format };
  resetSync();
  configureSync({
    sinks: { main: redactingSink(format, { write: options.write }) },
    loggers: [
      { category: ["tailvoy"], lowestLevel: level, sinks: ["main"] },
      { category: ["logtape", "meta"], lowestLevel: "warning", sinks: ["main"] },
    ],
  });
}

let current: { level: LogLevel; format: LogFormat } | undefined;

/**
 * The `--log-level`/`--log-format` flags of the current configuration, for a child tailvoy process whose
 * lines share our stream. Empty before {@link setupLogging}.
 */
export function loggingArgs(): string[] {
  if (!current) return [];
  return [
    "--log-level",
    current.level === "warning" ? "warn" : current.level,
    "--log-format",
    current.format,
  ];
}

/** A logger under the `tailvoy` category, e.g. `getLogger("localapi")`. */
export function getLogger(...category: string[]): Logger {
  return logtapeLogger(["tailvoy", ...category]);
}

/** Maps the Go tailvoy's level names (`warn`) onto LogTape's (`warning`). */
export function toLogLevel(name: string): LogLevel {
  const levels: Record<string, LogLevel> = {
    trace: "trace",
    debug: "debug",
    info: "info",
    warn: "warning",
    warning: "warning",
    error: "error",
    fatal: "fatal",
  };
  const level = levels[name.toLowerCase()];
  if (!level) {
    throw new Error(`Unknown log level "${name}": use one of ${LOG_LEVELS.join(", ")}`);
  }
  return level;
}
