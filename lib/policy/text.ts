/**
 * Small text helpers shared by the policy module (internal; not re-exported from `mod.ts`).
 *
 * @module
 */

/** Longest user-controlled string copied into a reason before it is cut. */
const MAX_QUOTED = 200;

/**
 * Quotes a user-controlled string for a reason: JSON escaping makes control characters and quotes
 * visible and harmless in logs, and long values are cut so one request cannot flood a log line.
 */
export function quote(value: string, max: number = MAX_QUOTED): string {
  return JSON.stringify(value.length > max ? `${value.slice(0, max)}…` : value);
}

/** Longest rule JSON kept in a {@link RuleRef}-like report before it is cut. */
const MAX_JSON = 2000;

/**
 * Serialises any value for reporting. Never throws (cycles, BigInt and `undefined` can reach us
 * when a caller passes something that did not come from JSON) and caps the length.
 */
export function safeJson(value: unknown): string {
  let text: string;
  try {
    text = JSON.stringify(value) ?? String(value);
  } catch {
    try {
      text = String(value);
    } catch {
      // No usable toString: a null-prototype object, or an own `toString` that is not a function.
      text = Object.prototype.toString.call(value);
    }
  }
  return text.length > MAX_JSON ? `${text.slice(0, MAX_JSON)}…` : text;
}
