/**
 * "Did you mean" suggestions for mistyped keys, enum values and names.
 *
 * @module
 */

/** Levenshtein edit distance between two strings. */
export function levenshtein(a: string, b: string): number {
  if (a === b) return 0;
  let previous = Array.from({ length: b.length + 1 }, (_, i) => i);
  for (let i = 1; i <= a.length; i++) {
    const current = [i];
    for (let j = 1; j <= b.length; j++) {
      const cost = a[i - 1] === b[j - 1] ? 0 : 1;
      current[j] = Math.min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + cost);
    }
    previous = current;
  }
  return previous[b.length];
}

// Case and separators are the most common typos (service_mappings, ServiceMappings), so they cost nothing.
function normalize(s: string): string {
  return s.toLowerCase().replace(/[-_]/g, "");
}

/**
 * The candidate closest to `input`, or undefined when none is plausibly what was meant
 * (edit distance at most 2, or 1 for names of three characters or fewer).
 */
export function closest(input: string, candidates: Iterable<string>): string | undefined {
  const wanted = normalize(input);
  let best: string | undefined;
  let bestDistance = Infinity;
  for (const candidate of candidates) {
    if (candidate === input) continue;
    const distance = levenshtein(wanted, normalize(candidate));
    const limit = Math.min(wanted.length, candidate.length) <= 3 ? 1 : 2;
    if (distance <= limit && distance < bestDistance) {
      best = candidate;
      bestDistance = distance;
    }
  }
  return best;
}
