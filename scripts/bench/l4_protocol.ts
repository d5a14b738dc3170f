/**
 * What the L4 bench's helper processes say to each other: the one-byte requests the backend
 * (`l4_sink.ts`) understands, and the JSON-lines commands the load generator (`l4_load.ts`) takes on
 * stdin and answers on stdout.
 *
 * @module
 */

/** Request bytes the backend understands (the first byte a connection sends). */
export const REQ = {
  /** Followed by a u64 big-endian length: that many bytes follow, then the backend answers 1 byte. */
  sink: 0x53, // "S"
  /** Answer 1 byte and close (one "new connection" of the rate and latency rows). */
  ping: 0x50, // "P"
  /** Answer 1 byte, then hold the connection open until the caller closes it. */
  hold: 0x48, // "H"
} as const;

/** What the load generator puts in front of every connection: the PROXY v2 header tailscaled sends. */
export interface ProxyHeaderSpec {
  /** The caller's tailnet IP (the header's source; the proxy resolves it with WhoIs). */
  source: string;
  /** The gateway's tailnet IP and serve port (the header's destination). */
  destination: string;
  destinationPort: number;
}

/** One command to the load generator (one JSON line on its stdin). */
export type LoadCommand =
  | { op: "throughput"; port: number; streams: number; bytes: number; proxy?: ProxyHeaderSpec }
  /** `count` sequential connections to each target, interleaved so that noise hits all alike. */
  | { op: "latency"; targets: { port: number; proxy?: ProxyHeaderSpec }[]; count: number }
  | { op: "rate"; port: number; durationMs: number; concurrency: number; proxy?: ProxyHeaderSpec }
  | { op: "hold"; port: number; count: number; concurrency: number; proxy?: ProxyHeaderSpec }
  | { op: "release" };

/** The load generator's answer (one JSON line on its stdout). */
export type LoadResult =
  | { ok: true; op: "throughput"; ms: number; bytes: number }
  | { ok: true; op: "latency"; latenciesMs: number[][]; errors: number[] }
  | { ok: true; op: "rate"; ms: number; done: number; errors: number }
  | { ok: true; op: "hold"; ms: number; open: number; errors: number; firstError?: string }
  | { ok: true; op: "release"; closed: number }
  | { ok: false; error: string };
