/**
 * The byte relay between a caller and a backend: both directions at once, half-close propagated (a
 * side that finishes sending shuts down writing on the other), one buffer per direction sized to the
 * traffic, an optional idle timeout and maximum lifetime, and an abort for revocation and drain.
 *
 * @module
 */

import { closeQuietly } from "../util/async.ts";
import { writeAll } from "../util/bytes.ts";
import { errorMessage } from "../util/error.ts";

/** Why a relay ended. */
export type RelayEnd = "done" | "idle" | "lifetime" | "aborted" | "error";

/** Result of a finished relay. */
export interface RelayResult {
  /** Bytes from the caller to the backend. */
  bytesUp: number;
  /** Bytes from the backend to the caller. */
  bytesDown: number;
  /** How it ended. */
  end: RelayEnd;
  /** Abort reason or I/O error text, when there is one. */
  detail?: string;
}

/** Options of {@link relay}. */
export interface RelayOptions {
  /** Close both sides after this long without a byte either way (0 = never). */
  idleTimeoutMs?: number;
  /** Close both sides after this long in total (0 = never). */
  maxLifetimeMs?: number;
  /** Aborting closes both sides at once (revocation, drain). */
  signal?: AbortSignal;
  /**
   * Largest buffer per direction (buffers start at 2 KiB, grow on full reads and shrink on reads that
   * fill a sixteenth of them).
   */
  bufferSize?: number;
}

/** A connection the relay can drive (TCP or unix). */
export type RelayConn = Deno.Conn & { closeWrite(): Promise<void> };

/** A running relay: its byte counters are live. */
export interface Relay {
  /** Resolves when both directions have ended and both connections are closed. */
  done: Promise<RelayResult>;
  /** Live byte counts. */
  readonly bytesUp: number;
  readonly bytesDown: number;
}

/** The first buffer of each direction. */
const FIRST_BUFFER = 2048;

/**
 * Frees `buf`'s memory now, not at the garbage collection that finds it dead: a flow that lived through
 * a few scavenges is in the old generation, where after a burst thousands of dead buffers would wait for
 * the next full collection. Only for a buffer no pending read or write holds.
 */
function release(buf: Uint8Array<ArrayBuffer>): void {
  buf.buffer.transfer(0);
}

/** A new buffer of `length` bytes to use instead of `buf`, which is released. */
function resize(buf: Uint8Array<ArrayBuffer>, length: number): Uint8Array<ArrayBuffer> {
  release(buf);
  return new Uint8Array(length);
}

/** Relays bytes between `caller` and `backend` until both directions end or it is stopped. */
export function relay(caller: RelayConn, backend: RelayConn, options: RelayOptions = {}): Relay {
  const size = options.bufferSize ?? 256 * 1024;
  const first = Math.min(FIRST_BUFFER, size);
  const state = { bytesUp: 0, bytesDown: 0, lastActivity: performance.now() };
  let end: RelayEnd = "done";
  let detail: string | undefined;
  let closed = false;
  const stop = (why: RelayEnd, text?: string) => {
    if (closed) return;
    closed = true;
    end = why;
    detail = text;
    closeQuietly(caller);
    closeQuietly(backend);
  };

  const trackIdle = Boolean(options.idleTimeoutMs);
  const pump = async (from: Deno.Conn, to: RelayConn, count: "bytesUp" | "bytesDown") => {
    // Start small and grow on full reads: most flows are chatty and small (memory at 10k flows),
    // bulk transfers reach the full size within a few reads (throughput). Shrink when a read fills a
    // sixteenth of the buffer: a long-lived flow must not keep a burst's buffer for the rest of its life.
    let buf = new Uint8Array(first);
    try {
      while (true) {
        const n = await from.read(buf);
        if (n === null) break;
        state[count] += n;
        if (trackIdle) state.lastActivity = performance.now();
        await writeAll(to, buf.subarray(0, n));
        if (n === buf.length && buf.length < size) buf = resize(buf, Math.min(buf.length * 4, size));
        else if (n <= buf.length / 16 && buf.length > first) buf = resize(buf, Math.max(first, n * 4));
      }
      if (!closed) await to.closeWrite().catch(() => {});
    } catch (err) {
      // A read or write on a connection we closed ourselves is not an error.
      if (!closed) stop("error", errorMessage(err));
    } finally {
      // Every read and write of this direction has settled: nothing holds the buffer any more.
      release(buf);
    }
  };

  const timers: ReturnType<typeof setTimeout>[] = [];
  if (options.maxLifetimeMs) {
    timers.push(setTimeout(() => stop("lifetime"), options.maxLifetimeMs));
  }
  if (options.idleTimeoutMs) {
    const idle = options.idleTimeoutMs;
    timers.push(setInterval(() => {
      if (performance.now() - state.lastActivity >= idle) stop("idle");
    }, Math.max(50, Math.min(1000, idle / 4))));
  }
  const onAbort = () => stop("aborted", String(options.signal?.reason ?? "aborted"));
  if (options.signal?.aborted) onAbort();
  options.signal?.addEventListener("abort", onAbort, { once: true });

  const done = Promise.all([pump(caller, backend, "bytesUp"), pump(backend, caller, "bytesDown")]).then(
    () => {
      for (const t of timers) clearTimeout(t);
      options.signal?.removeEventListener("abort", onAbort);
      if (!closed) {
        closed = true;
        closeQuietly(caller);
        closeQuietly(backend);
      }
      return { bytesUp: state.bytesUp, bytesDown: state.bytesDown, end, detail };
    },
  );
  return {
    done,
    get bytesUp() {
      return state.bytesUp;
    },
    get bytesDown() {
      return state.bytesDown;
    },
  };
}
