/**
 * The YAML side of configuration parsing: syntax errors with positions, `${VAR}` expansion on
 * the parsed tree (so every variable has a YAML path and position), mapping a YAML path back to
 * a line and column, and conversion to plain data.
 *
 * @module
 */

import { own } from "../util/own.ts";
import {
  type Document,
  isAlias,
  isMap,
  isScalar,
  isSeq,
  LineCounter,
  parse,
  parseDocument,
  type Scalar,
  visit,
} from "yaml";
import type { ConfigIssue } from "./errors.ts";
import { errorMessage } from "../util/error.ts";

/** A parsed YAML document together with what is needed to report positions in it. */
export interface YamlSource {
  /** The original text. */
  text: string;
  /** The parsed document. */
  doc: Document.Parsed;
  /** Offset → line/column conversion for `text`. */
  lines: LineCounter;
  /** Where the text came from, for messages. */
  source?: string;
}

/** A path into the document: map keys and sequence indices. */
export type YamlPath = readonly (string | number)[];

const SYNTAX_HINTS: Record<string, string> = {
  DUPLICATE_KEY: "remove or rename one of the keys",
  TAB_AS_INDENT: "indent with spaces, not tabs",
  BAD_INDENT: "check the indentation of this line",
  MISSING_CHAR: "add the missing closing quote or bracket",
  MULTIPLE_DOCS: "keep a single YAML document in the file (remove ---)",
  BLOCK_AS_IMPLICIT_KEY: "check the indentation and add a space after the colon",
  MULTILINE_IMPLICIT_KEY: "keep each key on one line, and put a space after its colon",
};

/** Parses `text`; YAML syntax errors come back as issues (all of them) rather than being thrown. */
export function parseYaml(text: string, source?: string): { yaml: YamlSource; issues: ConfigIssue[] } {
  const lines = new LineCounter();
  // merge: yes, because Go's yaml.v3 (the Go tailvoy) honours `<<:` merge keys.
  // logLevel: problems come back as issues; the yaml package must not also write to the console.
  const doc = parseDocument(text, {
    lineCounter: lines,
    prettyErrors: false,
    merge: true,
    uniqueKeys: true,
    logLevel: "error",
  });
  const yaml: YamlSource = { text, doc, lines, source };
  const issues = doc.errors.map((error): ConfigIssue => {
    const unclosed = unclosedOpening(text, error);
    if (unclosed) {
      const closing = unclosed.char === "[" ? "]" : unclosed.char === "{" ? "}" : unclosed.char;
      return {
        path: [],
        message: `invalid YAML: ${
          closing === unclosed.char ? "quote" : "bracket"
        } ${unclosed.char} is never closed`,
        hint: `add the closing ${closing}` +
          (closing === unclosed.char ? "" : ", or check the indentation after it"),
        ...position(yaml, unclosed.offset),
        source,
      };
    }
    // One issue, one line: a message quoting the source across a line break shows it as \n.
    const detail = (error.code === "DUPLICATE_KEY"
      ? `duplicate key ${duplicateKey(text, error.pos[0])}`
      : error.message.replace(/\.$/, "").replace(/^./, (c) =>
        c.toLowerCase())).replace(/\r?\n/g, "\\n");
    return {
      path: [],
      message: `invalid YAML: ${detail}`,
      hint: own(SYNTAX_HINTS, error.code) ?? "fix the YAML syntax near this position",
      ...position(yaml, error.pos[0]),
      source,
    };
  });
  return { yaml, issues };
}

// The error range covers only the key's first character; the key runs to the ": " on its line.
function duplicateKey(text: string, offset: number): string {
  const line = text.slice(offset).split("\n", 1)[0];
  const key = /^(.*?):(?:\s|$)/.exec(line)?.[1] ?? line;
  return /^["']/.test(key) ? key : JSON.stringify(key.trim());
}

// The parser notices an unclosed quote or bracket only at the end of the file; find the opening one.
function unclosedOpening(
  text: string,
  error: { code: string; message: string; pos: [number, number] },
): { char: string; offset: number } | undefined {
  const quote = error.code === "MISSING_CHAR" ? /closing (["'])quote/.exec(error.message)?.[1] : undefined;
  const bracket = /^Flow (sequence|mapping)/.exec(error.message)?.[1];
  const char = quote ?? (bracket === "sequence" ? "[" : bracket === "mapping" ? "{" : undefined);
  const offset = char ? text.lastIndexOf(char, error.pos[0] - 1) : -1;
  return char && offset >= 0 ? { char, offset } : undefined;
}

function position(yaml: YamlSource, offset: number): { line: number; column: number } {
  const { line, col } = yaml.lines.linePos(Math.min(offset, yaml.text.length));
  return { line, column: col };
}

type AnyNode = unknown;

function resolve(yaml: YamlSource, node: AnyNode): AnyNode {
  return isAlias(node) ? node.resolve(yaml.doc) : node;
}

const keyText = (key: unknown) => isScalar(key) ? String(key.value) : undefined;

function isMergeKey(key: unknown): boolean {
  return isScalar(key) && (typeof key.value === "symbol" || key.source === "<<");
}

// Finds the pair for `segment`, looking through `<<:` merges the way toJS resolves them.
function findPair(
  yaml: YamlSource,
  map: AnyNode,
  segment: string | number,
): { key: unknown; value: unknown } | undefined {
  if (!isMap(map)) return undefined;
  const own = map.items.find((pair) => keyText(pair.key) === String(segment));
  if (own) return own;
  for (const pair of map.items) {
    if (!isMergeKey(pair.key)) continue;
    const sources = isSeq(pair.value) ? pair.value.items : [pair.value];
    for (const merged of sources) {
      const found = findPair(yaml, resolve(yaml, merged), segment);
      if (found) return found;
    }
  }
  return undefined;
}

function rangeStart(node: unknown): number | undefined {
  const range = (node as { range?: [number, number, number] } | null)?.range;
  return range?.[0];
}

/**
 * Line and column for a YAML path. A scalar points at itself; a mapping or list, a key
 * (`key: true`), an empty value or a missing node points at the key of the deepest pair that
 * exists on the path, so "listeners.web.tls is required" points at `web:`.
 */
export function locate(
  yaml: YamlSource,
  path: YamlPath,
  options: { key?: boolean } = {},
): { line: number; column: number } {
  let node: AnyNode = yaml.doc.contents;
  let key: unknown;
  let depth = 0;
  for (const segment of path) {
    const current = resolve(yaml, node);
    if (isMap(current)) {
      const pair = findPair(yaml, current, segment);
      if (!pair) break;
      node = pair.value;
      key = pair.key;
    } else if (isSeq(current) && typeof segment === "number" && segment < current.items.length) {
      node = current.items[segment];
      key = undefined;
    } else break;
    depth++;
  }
  const target = resolve(yaml, node);
  const isValue = depth === path.length && !options.key && isScalar(target) && target.value !== null;
  const offset = (isValue ? rangeStart(node) : undefined) ?? rangeStart(key) ?? rangeStart(node) ?? 0;
  return position(yaml, offset);
}

const ENV_REFERENCE = /\$(\$?)\{([^}]*)\}/g;
const ENV_NAME = /^[A-Za-z_][A-Za-z0-9_]*$/;

/**
 * Expands `${VAR}` in every string scalar (keys included) using `lookup`. Unlike the Go tailvoy, an unset
 * variable is an error naming the variable and its YAML path, never an empty string. `$${VAR}`
 * stands for a literal `${VAR}`. Comments are left alone. An unquoted value is re-typed after
 * expansion, so `port: ${PORT}` still gives a number as it did in the Go tailvoy.
 */
export function expandEnv(yaml: YamlSource, lookup: (name: string) => string | undefined): ConfigIssue[] {
  const issues: ConfigIssue[] = [];

  const expandScalar = (scalar: Scalar, path: (string | number)[], retype: boolean) => {
    if (typeof scalar.value !== "string" || !scalar.value.includes("${")) return;
    const raw = scalar.range ? yaml.text.slice(scalar.range[0], scalar.range[1]) : "";
    const problem = (reference: string, message: string, hint: string) => {
      const at = raw.indexOf(reference);
      const offset = (scalar.range?.[0] ?? 0) + Math.max(at, 0);
      issues.push({ path, message, hint, ...position(yaml, offset), source: yaml.source });
    };
    let changed = false;
    const expanded = scalar.value.replace(
      ENV_REFERENCE,
      (reference: string, escape: string, name: string) => {
        changed = true;
        if (escape) return reference.slice(1);
        if (!ENV_NAME.test(name)) {
          problem(
            reference,
            `invalid environment variable reference ${JSON.stringify(reference)}`,
            "use ${NAME} with letters, digits and underscores, or $${...} for a literal",
          );
          return reference;
        }
        let value: string | undefined;
        try {
          value = lookup(name);
        } catch (error) {
          const reason = errorMessage(error);
          problem(
            reference,
            `cannot read environment variable ${name}: ${reason}`,
            "allow environment access (--allow-env)",
          );
          return reference;
        }
        if (value === undefined) {
          problem(
            reference,
            `environment variable ${name} is not set`,
            `set ${name}, or write $\${${name}} for a literal \${${name}}`,
          );
          return reference;
        }
        return value;
      },
    );
    if (!changed) return;
    scalar.value = retype && scalar.type === "PLAIN" ? retypePlain(expanded) : expanded;
  };

  // Aliases are skipped: their anchor is expanded where it is defined.
  const walk = (node: AnyNode, path: (string | number)[]) => {
    if (isMap(node)) {
      for (const pair of node.items) {
        const segment = keyText(pair.key) ?? "?";
        if (isScalar(pair.key)) expandScalar(pair.key, [...path, segment], false);
        walk(pair.value, [...path, keyText(pair.key) ?? segment]);
      }
    } else if (isSeq(node)) {
      node.items.forEach((item, index) => walk(item, [...path, index]));
    } else if (isScalar(node)) {
      expandScalar(node, path, true);
    }
  };
  walk(yaml.doc.contents, []);
  return issues;
}

// Numbers, booleans and null keep their YAML meaning after expansion; anything structural stays a string.
function retypePlain(text: string): unknown {
  try {
    const value = parse(text);
    return value === null || typeof value === "number" || typeof value === "boolean" ? value : text;
  } catch {
    return text;
  }
}

/** How many nodes aliases may expand to in all (the yaml package's guard against alias bombs). */
const MAX_ALIAS_COUNT = 1000;

/**
 * Aliases that cannot be expanded, each located at the alias: one with no anchor of its name before it,
 * one inside the node its anchor names (a loop, which would recurse forever), and, when the document's
 * aliases would expand to more than {@link MAX_ALIAS_COUNT} nodes, the first alias.
 */
export function aliasIssues(yaml: YamlSource): ConfigIssue[] {
  const issues: ConfigIssue[] = [];
  let first: number | undefined;
  const at = (offset: number, message: string, hint: string): ConfigIssue => ({
    path: [],
    message: `invalid YAML: ${message}`,
    hint,
    ...position(yaml, offset),
    source: yaml.source,
  });
  visit(yaml.doc, {
    Alias(_key, node, ancestors) {
      const offset = node.range?.[0] ?? 0;
      first ??= offset;
      const target = node.resolve(yaml.doc);
      if (!target) {
        issues.push(
          at(
            offset,
            `alias *${node.source} has no anchor &${node.source} before it`,
            `define &${node.source} before its first use`,
          ),
        );
      } else if ((ancestors as readonly unknown[]).includes(target)) {
        issues.push(
          at(
            offset,
            `alias *${node.source} is inside the node it names (a loop)`,
            "an alias cannot repeat a mapping or list inside itself",
          ),
        );
      }
    },
  });
  if (issues.length === 0 && first !== undefined) {
    try {
      yaml.doc.toJS({ maxAliasCount: MAX_ALIAS_COUNT });
    } catch {
      issues.push(
        at(
          first,
          `aliases expand to more than ${MAX_ALIAS_COUNT} nodes`,
          "repeat fewer or smaller anchors, or write the values out",
        ),
      );
    }
  }
  return issues;
}

/**
 * The document as plain data. Null map values are dropped, as Go's decoder turned them into
 * zero values: `backend:` with nothing after it reads as "no backend". Check {@link aliasIssues} first.
 */
export function toPlain(yaml: YamlSource): unknown {
  return dropNulls(yaml.doc.toJS({ maxAliasCount: MAX_ALIAS_COUNT }) ?? {});
}

function dropNulls(value: unknown): unknown {
  if (Array.isArray(value)) return value.map(dropNulls);
  if (typeof value !== "object" || value === null) return value;
  // fromEntries makes own properties: a `__proto__` key stays a key (and is then an unknown one).
  return Object.fromEntries(
    Object.entries(value).filter(([, item]) => item !== null).map(([key, item]) => [key, dropNulls(item)]),
  );
}
