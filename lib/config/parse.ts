/**
 * Parsing and loading: YAML → `${VAR}` expansion → schema and rules → {@linkcode Config},
 * or a {@linkcode ConfigError} listing every problem with its position.
 *
 * @module
 */

import { own } from "../util/own.ts";
import { ConfigError, type ConfigIssue, formatPath, readFailure } from "./errors.ts";
import { fromCrossFieldIssue, fromZodIssues, GENERIC_MESSAGE, isAboutMisspeltKey } from "./issues.ts";
import { checkCrossField } from "./cross_field.ts";
import { type Config, ConfigSchema } from "./schema.ts";
import { aliasIssues, expandEnv, locate, parseYaml, toPlain, type YamlSource } from "./yaml_source.ts";
import { errorMessage } from "../util/error.ts";

/** Options for {@linkcode parseConfig}. */
export interface ParseConfigOptions {
  /** Where the text came from (usually the file path); used in messages. */
  source?: string;
  /** Variables for `${VAR}` expansion; defaults to `Deno.env` (needs `--allow-env`). */
  env?: Record<string, string | undefined>;
}

/** Options for {@linkcode loadConfig}. */
export type LoadConfigOptions = Omit<ParseConfigOptions, "source">;

/**
 * Parses configuration text. Throws {@linkcode ConfigError} listing every problem found (YAML
 * syntax first, since nothing else can be checked without a tree), each with its YAML path,
 * line:column and a hint.
 */
export function parseConfig(text: string, options: ParseConfigOptions = {}): Config {
  const { yaml, issues: syntaxIssues } = parseYaml(text, options.source);
  if (syntaxIssues.length > 0) throw new ConfigError(syntaxIssues);

  const env = options.env;
  // hasOwn: a plain object would otherwise answer ${constructor} with Object's own property.
  const envIssues = expandEnv(
    yaml,
    env ? (name) => own(env, name) : (name) => Deno.env.get(name),
  );
  const badAliases = aliasIssues(yaml);
  if (badAliases.length > 0) throw new ConfigError([...envIssues, ...badAliases]);
  let data: unknown;
  try {
    data = toPlain(yaml);
  } catch (error) {
    const message = errorMessage(error);
    throw new ConfigError([...envIssues, {
      path: [],
      message: `invalid YAML: ${message}`,
      source: options.source,
    }]);
  }

  // zod drops a `__proto__` key from records without a word: a listener so named would vanish.
  const protoKeys = protoKeyIssues(data, yaml);
  if (protoKeys.length > 0) throw new ConfigError([...envIssues, ...protoKeys]);
  const result = ConfigSchema.safeParse(data, { reportInput: true, error: () => GENERIC_MESSAGE });
  if (result.success && envIssues.length === 0) return result.data;

  if (result.success) throw new ConfigError(envIssues);
  // The schema skips its cross-field rules once a field has the wrong type, and runs them on
  // data stripped of unknown keys; run them on the raw data instead so one pass reports everything.
  const converted = fromZodIssues(result.error.issues, { yaml, schema: ConfigSchema, data }, {
    skipRules: true,
  });
  const found = [...converted.issues];
  checkCrossField(data, (issue) => found.push(fromCrossFieldIssue(issue, yaml)));
  const relevant = found.filter((issue) =>
    !isAboutMisspeltKey(issue, { misspelt: converted.misspelt, data }) && !isUnder(issue.path, envIssues)
  );
  throw new ConfigError([...envIssues, ...relevant]);
}

/** Every `__proto__` key in `data`, located: never a valid name here, and unsafe to carry further. */
function protoKeyIssues(data: unknown, yaml: YamlSource): ConfigIssue[] {
  const issues: ConfigIssue[] = [];
  const walk = (value: unknown, path: (string | number)[]) => {
    if (Array.isArray(value)) return value.forEach((item, i) => walk(item, [...path, i]));
    if (typeof value !== "object" || value === null) return;
    for (const [key, item] of Object.entries(value)) {
      const at = [...path, key];
      if (key === "__proto__") {
        issues.push({
          path: at,
          message: "unknown key",
          hint: "__proto__ is not a name tailvoy accepts anywhere; rename it",
          ...locate(yaml, at, { key: true }),
          source: yaml.source,
        });
      } else walk(item, at);
    }
  };
  walk(data, []);
  return issues;
}

// A value whose variable could not be expanded would only produce follow-on errors.
function isUnder(path: ConfigIssue["path"], envIssues: ConfigIssue[]): boolean {
  const text = formatPath(path);
  return envIssues.some((issue) => {
    const prefix = formatPath(issue.path);
    return text === prefix || text.startsWith(`${prefix}.`) || text.startsWith(`${prefix}[`);
  });
}

/**
 * Reads and parses a configuration file. A missing or unreadable file is a {@linkcode ConfigError}
 * naming the path, like any other configuration problem.
 */
export async function loadConfig(path: string, options: LoadConfigOptions = {}): Promise<Config> {
  let text: string;
  try {
    text = await Deno.readTextFile(path);
  } catch (error) {
    throw new ConfigError([{
      path: [],
      source: path,
      ...readFailure(error, {
        what: "config file",
        notFoundHint: "check the path, or pass --config <file> (see examples/config.yaml)",
        directoryHint: "pass the path of the YAML file",
      }),
    }]);
  }
  return parseConfig(text, { ...options, source: path });
}
