/**
 * What the L7 bench's load generator (`l7_load.ts`) takes on stdin and answers on stdout, one JSON line
 * each.
 *
 * @module
 */

/** One HTTP target of the load generator. */
export interface HttpTarget {
  port: number;
  /** Bytes (base64) every connection starts with: a PROXY v2 header, or nothing. */
  preamble?: string;
  /** Request path and Host header. */
  path: string;
  host: string;
}

/** One command to the load generator. */
export type L7LoadCommand =
  /** Closed loop: `connections` keep-alive connections, each sending its next request on the response. */
  | { op: "closed"; target: HttpTarget; connections: number; durationMs: number }
  /** Open loop: `rate` requests/s spread evenly over `connections` keep-alive connections. */
  | { op: "open"; target: HttpTarget; connections: number; durationMs: number; rate: number }
  /**
   * HTTP ext_authz checks to the unix socket `socket`: `concurrency` keep-alive HTTP/1.1 connections,
   * each with one check in flight, each check the bytes `request` (base64: a whole HTTP/1.1 request).
   */
  | { op: "authz"; socket: string; request: string; concurrency: number; durationMs: number };

/** Latency percentiles in ms. */
export interface Latency {
  p50: number;
  p90: number;
  p99: number;
  max: number;
}

/** What one HTTP run measured. */
export interface HttpFigures {
  /** Completed requests (any status). */
  requests: number;
  /** Responses other than 2xx. */
  non2xx: number;
  /** Requests that failed (refused, reset, closed early). */
  errors: number;
  firstError?: string;
  ms: number;
  latency: Latency;
}

/** The load generator's answer. */
export type L7LoadResult =
  | ({ ok: true; op: "closed" } & HttpFigures)
  | ({ ok: true; op: "open" } & HttpFigures)
  | {
    ok: true;
    op: "authz";
    calls: number;
    /** Checks answered 200 (allowed). */
    allowed: number;
    errors: number;
    firstError?: string;
    ms: number;
    latency: Latency;
  }
  | { ok: false; error: string };

/** Percentiles of `samples` (sorted in place). */
export function latencyOf(samples: number[]): Latency {
  samples.sort((a, b) => a - b);
  const at = (p: number) =>
    samples.length ? samples[Math.min(samples.length - 1, Math.floor(samples.length * p))] : NaN;
  return {
    p50: at(0.5),
    p90: at(0.9),
    p99: at(0.99),
    max: samples.length ? samples[samples.length - 1] : NaN,
  };
}
