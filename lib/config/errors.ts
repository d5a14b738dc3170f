/**
 * Configuration problems and how they are shown to people.
 *
 * House style, one problem per line:
 * `listeners.web.tls: required for protocol https (line 7:5) — add tls.cert and tls.key`
 *
 * @module
 */

/** One problem found in a configuration file. */
export interface ConfigIssue {
  /** YAML path of the offending node, e.g. `["listeners", "web", "tls"]`; empty for the whole file. */
  path: (string | number)[];
  /** What is wrong, in sentence case and quoting the offending value. */
  message: string;
  /** What to do about it. */
  hint?: string;
  /** 1-based line of the offending node, when it is known. */
  line?: number;
  /** 1-based column of the offending node, when it is known. */
  column?: number;
  /** File (or other origin) the text came from, e.g. `examples/config.yaml`. */
  source?: string;
}

/** Thrown by {@linkcode parseConfig} and {@linkcode loadConfig}; `message` lists every issue, one per line. */
export class ConfigError extends Error {
  /** Every problem found, in document order. */
  readonly issues: ConfigIssue[];

  /** Builds the error; the message is {@linkcode formatIssues} of `issues`. */
  constructor(issues: readonly ConfigIssue[]) {
    const sorted = sortIssues(issues);
    super(sorted.map(formatIssue).join("\n"));
    this.name = "ConfigError";
    this.issues = sorted;
  }
}

// Separates message from hint in zod issue messages, which carry a single string.
export const HINT_SEPARATOR = " — ";

/** Joins a message and an optional hint into one zod issue message; {@linkcode splitMessage} undoes it. */
export function joinMessage(message: string, hint?: string): string {
  return hint ? `${message}${HINT_SEPARATOR}${hint}` : message;
}

/** Splits a message made by {@linkcode joinMessage}. */
export function splitMessage(text: string): { message: string; hint?: string } {
  const at = text.indexOf(HINT_SEPARATOR);
  return at < 0 ? { message: text } : {
    message: text.slice(0, at),
    hint: text.slice(at + HINT_SEPARATOR.length),
  };
}

const PLAIN_SEGMENT = /^[A-Za-z_][A-Za-z0-9_-]*$/;

/** Renders a YAML path the way people write it: `listeners.web.routes[0].paths["/api/*"]`. */
export function formatPath(path: readonly (string | number)[]): string {
  let out = "";
  for (const segment of path) {
    if (typeof segment === "number") out += `[${segment}]`;
    else if (PLAIN_SEGMENT.test(segment)) out += out ? `.${segment}` : segment;
    else out += `[${JSON.stringify(segment)}]`;
  }
  return out;
}

/** Renders one issue in the house style. */
export function formatIssue(issue: ConfigIssue): string {
  const subject = issue.path.length > 0 ? formatPath(issue.path) : issue.source ?? "config";
  let where = "";
  if (issue.line !== undefined) {
    const lineCol = `${issue.line}:${issue.column ?? 1}`;
    // A path-less issue already names the source as its subject.
    where = issue.source && issue.path.length > 0 ? ` (${issue.source}:${lineCol})` : ` (line ${lineCol})`;
  }
  const hint = issue.hint ? `${HINT_SEPARATOR}${issue.hint}` : "";
  return `${subject}: ${issue.message}${where}${hint}`;
}

/** Renders issues one per line, in document order (issues without a position last). */
export function formatIssues(issues: readonly ConfigIssue[]): string {
  return sortIssues(issues).map(formatIssue).join("\n");
}

/** Issues in document order; stable for issues at the same position. */
export function sortIssues(issues: readonly ConfigIssue[]): ConfigIssue[] {
  const rank = (issue: ConfigIssue) =>
    issue.line === undefined ? Infinity : issue.line * 1e6 + (issue.column ?? 0);
  return [...issues].sort((a, b) => rank(a) - rank(b));
}

/** Options for {@linkcode readFailure}. */
export interface ReadFailureOptions {
  /** What the file is, e.g. `config file`. */
  what: string;
  /** Advice when the file does not exist. */
  notFoundHint: string;
  /** Advice when the path is a directory. */
  directoryHint: string;
}

/** Message and hint for a file that could not be read, by the error `Deno.readTextFile` threw. */
export function readFailure(error: unknown, options: ReadFailureOptions): { message: string; hint: string } {
  const { what } = options;
  if (error instanceof Deno.errors.NotFound) {
    return { message: `${what} not found`, hint: options.notFoundHint };
  }
  if (error instanceof Deno.errors.IsADirectory) {
    return { message: `is a directory, not a ${what}`, hint: options.directoryHint };
  }
  if (error instanceof Deno.errors.NotCapable || error instanceof Deno.errors.PermissionDenied) {
    return {
      message: `cannot read ${what}: permission denied`,
      hint: "run with --allow-read, or fix the file's permissions",
    };
  }
  const reason = error instanceof Error ? error.message : String(error);
  return { message: `cannot read ${what}: ${reason}`, hint: "check that the file exists and is readable" };
}
