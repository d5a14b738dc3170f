/**
 * How the data-plane benches (L4, egress) print their figures: one row per figure with its ratio against
 * earlier rows, and the goals with PASS/MISS, repeated in a summary.
 *
 * @module
 */

/** Receives each figure: name, value, unit, and the name of the figure it is compared with. */
export type RecordFigure = (name: string, value: number, unit: string, baseline?: string) => void;

/** The median of `xs` (not modified). */
export function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const mid = s.length >> 1;
  return s.length % 2 ? s[mid] : (s[mid - 1] + s[mid]) / 2;
}

/** The `p` quantile (0..1) of `sorted`, ascending. */
export function percentile(sorted: number[], p: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor(sorted.length * p))];
}

/** Width of the name column. */
export const ROW_NAME = 50;

function formatValue(value: number, unit: string): string {
  const digits = unit === "conn/s" ? 0 : unit === "ms" ? 3 : value >= 100 ? 0 : value >= 10 ? 1 : 2;
  return `${value.toFixed(digits)} ${unit}`;
}

/** Prints figures with ratios against figures printed before, and hands them to `record`. */
export class Report {
  readonly #values = new Map<string, number>();
  readonly #record?: RecordFigure;
  /** The goal lines so far, for the summary. */
  readonly goals: string[] = [];

  /** A report that also hands each figure to `record`. */
  constructor(record?: RecordFigure) {
    this.#record = record;
  }

  /** The value of an earlier row. */
  get(name: string): number | undefined {
    return this.#values.get(name);
  }

  /** One row; `baselines` are names of earlier rows (the first is passed to `record`). */
  row(name: string, value: number, unit: string, baselines: string[] = [], note = ""): void {
    this.#values.set(name, value);
    // "x: label" rows are compared by label alone: "0.9x envoy tcp_proxy c1".
    const ratios = baselines.flatMap((b) => {
      const base = this.#values.get(b);
      return base ? [`${(value / base).toFixed(2)}x ${b.slice(b.indexOf(": ") + 2)}`] : [];
    });
    const tail = [ratios.join(", "), note].filter(Boolean).join("  ");
    console.log(`${name.padEnd(ROW_NAME)} ${formatValue(value, unit).padStart(14)}  ${tail}`);
    this.#record?.(name, value, unit, baselines[0]);
  }

  /** A goal of the issue, with PASS/MISS, printed again in the summary. */
  goal(text: string, measured: string, pass: boolean): void {
    const line = `${pass ? "PASS" : "MISS"}  ${text.padEnd(44)} measured ${measured}`;
    this.goals.push(line);
    console.log(`  goal: ${line}`);
  }
}
