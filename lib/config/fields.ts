/**
 * zod builders for the field kinds the configuration schemas share (checked strings, durations,
 * ports), so every block reports them with the same messages.
 *
 * @module
 */

import { z } from "zod";
import { joinMessage } from "./errors.ts";
import { checkDuration, parseDuration, type Problem } from "./formats.ts";

/** A string that must pass `check`; its problem becomes the issue message. */
export function checked(check: (value: string) => Problem | undefined) {
  return z.string().superRefine((value, ctx) => {
    const problem = check(value);
    if (problem) {
      ctx.addIssue({ code: "custom", message: joinMessage(problem.message, problem.hint), input: value });
    }
  });
}

/** A string that must not be empty; `what` names the value in the hint ("give the key file path"). */
export const nonEmpty = (what: string) =>
  z.string().min(1, { error: joinMessage("must not be empty", `give ${what}`) });

// The Go tailvoy's decoder read `pollInterval: 5` as the string "5"; do the same so the duration check explains it.
const numberAsString = (value: unknown) => typeof value === "number" ? String(value) : value;

/** Inclusive bounds of a duration, written as durations. */
export type DurationRange = { min: string; max: string };

/** Options for {@linkcode duration} and {@linkcode optionalDuration}. */
export interface DurationOptions {
  /** Accept `0` (usually "disabled"). */
  allowZero?: boolean;
  /** Inclusive bounds. */
  range?: DurationRange;
}

/**
 * A duration string parsed to milliseconds, with no default; `example` (a duration string) is shown
 * in hints. `range` bounds it.
 */
export function optionalDuration(example: string, options: DurationOptions = {}) {
  const outOfRange = (ms: number, range: DurationRange) =>
    ms < (parseDuration(range.min) ?? 0) || ms > (parseDuration(range.max) ?? Infinity);
  const text = checked((value) =>
    checkDuration(value) ??
      (!options.allowZero && parseDuration(value) === 0
        ? { message: "must be greater than 0", hint: `e.g. "${example}"` }
        : options.range && outOfRange(parseDuration(value) ?? 0, options.range)
        ? {
          message: `must be between ${options.range.min} and ${options.range.max}, got "${value}"`,
          hint: `e.g. "${example}"`,
        }
        : undefined)
  );
  return z.preprocess(numberAsString, text.transform((value) => parseDuration(value) ?? 0)).optional();
}

/**
 * A duration string parsed to milliseconds, with a default also written as a duration string;
 * `range` bounds it.
 */
export function duration(defaultValue: string, options: DurationOptions = {}) {
  return optionalDuration(defaultValue, options).default(parseDuration(defaultValue) ?? 0);
}

/** A TCP or UDP port number, 1 to 65535. */
export const port = z.number().superRefine((value, ctx) => {
  if (!Number.isInteger(value) || value < 1 || value > 65535) {
    ctx.addIssue({
      code: "custom",
      message: joinMessage(
        `must be between 1 and 65535, got ${value}`,
        "use a whole port number in that range",
      ),
      input: value,
    });
  }
});
