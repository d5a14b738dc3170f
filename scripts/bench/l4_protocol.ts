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
  /** Echo every byte that follows until the caller closes (round trips on an open connection). */
  echo: 0x45, // "E"
} as const;

/** What the load generator puts in front of every connection: the PROXY v2 header tailscaled sends. */
export interface ProxyHeaderSpec {
  /** The caller's tailnet IP (the header's source; the proxy resolves it with WhoIs). */
  source: string;
  /** The gateway's tailnet IP and serve port (the header's destination). */
  destination: string;
  destinationPort: number;
}

/**
 * A proxy handshake the load generator makes before its request (the egress bench): SOCKS5 CONNECT or
 * HTTP CONNECT through the proxy listening on the command's port, to `host:port`.
 */
export interface TunnelSpec {
  kind: "socks5" | "http";
  host: string;
  port: number;
}

/** Where one connection goes: a loopback port, with a PROXY header or a proxy handshake first. */
export interface ConnectSpec {
  port: number;
  proxy?: ProxyHeaderSpec;
  tunnel?: TunnelSpec;
  /**
   * A new-connection ping closes from our side once answered (the backend holds until then), instead of
   * waiting for the backend to close first. Needed through userspace tailscaleds: the dialing node's
   * netstack picks ephemeral ports at random, and one that is still in TIME_WAIT on the node that closed
   * first stalls that dial for seconds (after a few hundred connections).
   */
  callerCloses?: boolean;
}

/** One command to the load generator (one JSON line on its stdin). */
export type LoadCommand =
  | ({ op: "throughput"; streams: number; bytes: number } & ConnectSpec)
  /** `count` sequential connections to each target, interleaved so that noise hits all alike. */
  | { op: "latency"; targets: ConnectSpec[]; count: number }
  /**
   * One open connection per target (echo request); `count` rounds of a 1-byte round trip on each, the
   * targets interleaved, `intervalMs` between rounds (a low request rate, not a saturating one).
   */
  | { op: "roundtrip"; targets: ConnectSpec[]; count: number; intervalMs: number }
  | ({ op: "rate"; durationMs: number; concurrency: number } & ConnectSpec)
  | ({ op: "hold"; count: number; concurrency: number } & ConnectSpec)
  | { op: "release" };

/** The load generator's answer (one JSON line on its stdout). */
export type LoadResult =
  | { ok: true; op: "throughput"; ms: number; bytes: number }
  | { ok: true; op: "latency"; latenciesMs: number[][]; errors: number[]; firstErrors: (string | null)[] }
  | { ok: true; op: "roundtrip"; latenciesMs: number[][] }
  | { ok: true; op: "rate"; ms: number; done: number; errors: number; firstError?: string }
  | { ok: true; op: "hold"; ms: number; open: number; errors: number; firstError?: string }
  | { ok: true; op: "release"; closed: number }
  | { ok: false; error: string };
