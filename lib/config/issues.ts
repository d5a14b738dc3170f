/**
 * Turns zod issues and rule issues into located {@linkcode ConfigIssue}s in the house style.
 *
 * @module
 */

import type { z } from "zod";
import { type ConfigIssue, formatPath, splitMessage } from "./errors.ts";
import type { CrossFieldIssue } from "./cross_field.ts";
import { own } from "../util/own.ts";
import { jsonQuote } from "./formats.ts";
import { closest } from "./suggest.ts";
import { locate, type YamlSource } from "./yaml_source.ts";

/**
 * Per-parse zod error map. Schema-level messages take precedence; everything else gets this marker
 * and is described in {@linkcode fromZodIssues}, which knows the full path and the value.
 */
export const GENERIC_MESSAGE = "\u0000generic";

type Issue = z.core.$ZodIssue;
type Schema = z.core.$ZodType;
interface Def {
  type: string;
  shape?: Record<string, Schema>;
  valueType?: Schema;
  element?: Schema;
  innerType?: Schema;
  in?: Schema;
  out?: Schema;
}

const def = (schema: Schema) => schema._zod.def as unknown as Def;

function unwrap(schema: Schema): Schema {
  for (;;) {
    const d = def(schema);
    if (d.innerType) schema = d.innerType;
    else if (d.type === "pipe" && d.in && d.out) schema = def(d.in).type === "transform" ? d.out : d.in;
    else return schema;
  }
}

/** Keys allowed by the object schema at `path`, for did-you-mean. */
function allowedKeys(schema: Schema, path: readonly PropertyKey[]): string[] {
  let current: Schema | undefined = unwrap(schema);
  for (const segment of path) {
    const d = def(current);
    const next: Schema | undefined = d.type === "object"
      ? own(d.shape, String(segment))
      : d.type === "record"
      ? d.valueType
      : d.type === "array"
      ? d.element
      : undefined;
    if (!next) return [];
    current = unwrap(next);
  }
  return Object.keys(def(current).shape ?? {});
}

function describe(value: unknown): string {
  if (value === undefined) return "nothing";
  if (Array.isArray(value)) return "a list";
  if (typeof value === "object" && value !== null) return "a mapping";
  if (typeof value === "string") return jsonQuote(value);
  return String(value);
}

const TYPE_NAMES: Record<string, string> = {
  number: "a number",
  string: "a string",
  boolean: "true or false",
  object: "a mapping",
  record: "a mapping",
  array: "a list",
};

const TYPE_HINTS: Record<string, string> = {
  number: "write a number without quotes",
  string: "quote the value",
  boolean: "write true or false",
  object: "write key: value lines indented under this key",
  record: "write key: value lines indented under this key",
  array: "write a list, e.g. [a, b] or lines starting with -",
};

// Keys the Go tailvoy removed, with its own migration message (a Map: user keys must not find Object members).
const REMOVED_KEYS = new Map<string, (value: unknown, data: unknown) => { message: string; hint: string }>([
  ["tailscale.service", (value, data) => {
    const listeners = (data as { listeners?: unknown })?.listeners;
    const names = typeof listeners === "object" && listeners !== null
      ? Object.keys(listeners).join(", ")
      : "";
    const service = typeof value === "string" && value !== "" ? value : "my-service";
    return {
      message: "has been replaced by tailscale.serviceMappings",
      hint: `write serviceMappings: {${service}: [${names || "<listener names>"}]} instead`,
    };
  }],
]);

function valueAt(data: unknown, path: readonly PropertyKey[]): unknown {
  let value = data;
  for (const segment of path) {
    if (typeof value !== "object" || value === null) return undefined;
    value = own(value as Record<string, unknown>, String(segment));
  }
  return value;
}

const toPath = (path: readonly PropertyKey[]) => path.map((s) => typeof s === "number" ? s : String(s));

function generic(issue: Issue, path: (string | number)[]): { message: string; hint?: string } {
  const input = (issue as { input?: unknown }).input;
  const key = path.length > 0 ? String(path[path.length - 1]) : "it";
  if (input === undefined && issue.code !== "unrecognized_keys") {
    return { message: "required", hint: `add ${key}` };
  }
  switch (issue.code) {
    case "invalid_type":
      return {
        message: `expected ${own(TYPE_NAMES, issue.expected) ?? issue.expected}, got ${describe(input)}`,
        hint: own(TYPE_HINTS, issue.expected),
      };
    case "invalid_value": {
      const values = issue.values.map(String);
      const suggestion = typeof input === "string" ? closest(input, values) : undefined;
      return {
        message: `must be one of ${values.join(", ")}; got ${describe(input)}`,
        hint: suggestion ? `did you mean ${jsonQuote(suggestion)}?` : `use one of ${values.join(", ")}`,
      };
    }
    case "too_small":
      return issue.origin === "array" || issue.origin === "string" || issue.origin === "record"
        ? {
          message: "must not be empty",
          hint: issue.origin === "array" ? "add at least one entry" : `give ${key} a value`,
        }
        : { message: `must be at least ${issue.minimum}, got ${describe(input)}` };
    case "too_big":
      return { message: `must be at most ${issue.maximum}, got ${describe(input)}` };
    default:
      return { message: `invalid value ${describe(input)}` };
  }
}

/** Locates a cross-field issue (from the schema's refinement or a direct run of the checks). */
export function fromCrossFieldIssue(issue: CrossFieldIssue, yaml: YamlSource): ConfigIssue {
  const where = issue.at ? locate(yaml, issue.at, { key: true }) : locate(yaml, issue.path);
  return { path: issue.path, message: issue.message, hint: issue.hint, ...where, source: yaml.source };
}

/** Options for {@linkcode fromZodIssues}. */
export interface FromZodOptions {
  /** Drop issues raised by the cross-field rules (the caller runs them on the raw data instead). */
  skipRules?: boolean;
}

/** Result of {@linkcode fromZodIssues}. */
export interface ConvertedIssues {
  /** Located issues. */
  issues: ConfigIssue[];
  /**
   * Formatted paths that an unknown key probably meant (`listeners.db.backend` for `bakend`).
   * Complaints that such a path is missing are noise next to the did-you-mean.
   */
  misspelt: Set<string>;
}

/** Converts zod issues to located issues; `schema` supplies allowed keys, `data` the values, `yaml` the positions. */
export function fromZodIssues(
  issues: readonly Issue[],
  context: { yaml: YamlSource; schema: Schema; data: unknown },
  options: FromZodOptions = {},
): ConvertedIssues {
  const { yaml, schema, data } = context;
  const source = yaml.source;
  const misspelt = new Set<string>();
  const converted = issues.flatMap((issue): ConfigIssue[] => {
    const path = toPath(issue.path);
    if (issue.code === "unrecognized_keys") {
      const allowed = allowedKeys(schema, issue.path);
      return issue.keys.map((key) => {
        const keyPath = [...path, key];
        const removed = REMOVED_KEYS.get(formatPath(keyPath));
        const suggestion = closest(key, allowed);
        if (suggestion && !removed) misspelt.add(formatPath([...path, suggestion]));
        const text = removed ? removed(valueAt(data, keyPath), data) : {
          message: "unknown key",
          hint: suggestion
            ? `did you mean ${jsonQuote(suggestion)}?`
            : `allowed keys here: ${allowed.join(", ")}`,
        };
        return { path: keyPath, ...text, ...locate(yaml, keyPath, { key: true }), source };
      });
    }
    if (issue.code === "custom") {
      const params = issue.params as { at?: (string | number)[]; rule?: boolean } | undefined;
      if (params?.rule && options.skipRules) return [];
      return [fromCrossFieldIssue({ path, ...splitMessage(issue.message), at: params?.at }, yaml)];
    }
    if (issue.code === "invalid_key") {
      const inner = issue.issues.find((i) => i.message !== GENERIC_MESSAGE);
      const text = inner
        ? splitMessage(inner.message)
        : { message: `invalid key ${jsonQuote(path[path.length - 1])}` };
      return [{ path, ...text, ...locate(yaml, path, { key: true }), source }];
    }
    const text = issue.message === GENERIC_MESSAGE ? generic(issue, path) : splitMessage(issue.message);
    return [{ path, ...text, ...locate(yaml, path), source }];
  });
  return { issues: converted, misspelt };
}

/** True if `issue` complains about a path that is absent from `data` but probably misspelt. */
export function isAboutMisspeltKey(
  issue: ConfigIssue,
  context: { misspelt: ReadonlySet<string>; data: unknown },
): boolean {
  return context.misspelt.has(formatPath(issue.path)) && valueAt(context.data, issue.path) === undefined;
}
