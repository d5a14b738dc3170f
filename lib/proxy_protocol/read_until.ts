/**
 * Reads from a connection until an incremental parser has a result, under one overall deadline.
 * Shared by the PROXY header and ClientHello readers; the only module here that does I/O.
 *
 * @module
 */

/** The part of `Deno.Conn` the readers need. */
export interface ConnReader {
  /** Reads into `p`; resolves to the byte count, or `null` at EOF. */
  read(p: Uint8Array): Promise<number | null>;
}

/** Why {@link readUntil} stopped without a result (the parser's own errors pass through unchanged). */
export type ReadStop = "timeout" | "eof";

/** Options of {@link readUntil}. */
export interface ReadUntilOptions {
  /** Overall deadline in ms for the whole read, not per read (slow senders cannot extend it); `Infinity` for none. */
  timeoutMs: number;
  /** Bytes already read from the connection, parsed before the first read. */
  initial?: Uint8Array;
  /** Size of each read; a read may take bytes past what the parser needs. */
  chunkSize?: number;
  /** Builds the error to throw on a timeout or EOF. */
  fail: (stop: ReadStop, message: string) => Error;
}

/**
 * Calls `parse` on everything read so far (starting with `options.initial`) after every read, until it
 * returns a value other than `undefined`. Resolves to that value and every byte read so far.
 *
 * On timeout the pending read cannot be cancelled (Deno has no per-read cancellation): it is left to
 * settle when the caller closes the connection, so the caller must close `conn` whenever this rejects.
 * Errors thrown by `parse` or by `conn.read` propagate unchanged.
 */
export async function readUntil<T>(
  conn: ConnReader,
  parse: (bytes: Uint8Array) => T | undefined,
  options: ReadUntilOptions,
): Promise<{ value: T; bytes: Uint8Array }> {
  if (!(options.timeoutMs > 0)) {
    throw new RangeError(`timeoutMs must be a positive number of ms (or Infinity), got ${options.timeoutMs}`);
  }
  const buffer = new GrowableBuffer(options.initial);
  const first = parse(buffer.view());
  if (first !== undefined) return { value: first, bytes: buffer.view() };

  let timer: ReturnType<typeof setTimeout> | undefined;
  const deadline = new Promise<never>((_, reject) => {
    if (Number.isFinite(options.timeoutMs)) {
      timer = setTimeout(
        () =>
          reject(
            options.fail(
              "timeout",
              `timed out after ${options.timeoutMs} ms with ${buffer.length} bytes read`,
            ),
          ),
        options.timeoutMs,
      );
    }
  });
  // One read buffer for the whole call (appends copy out of it): a sender dribbling a byte per read
  // must not cost an allocation per byte.
  const chunk = new Uint8Array(options.chunkSize ?? 4096);
  try {
    while (true) {
      const pending = conn.read(chunk);
      // Once abandoned, this read rejects when the caller closes the conn; nobody awaits it then.
      pending.catch(() => {});
      const n = await Promise.race([pending, deadline]);
      if (n === null) {
        throw options.fail(
          "eof",
          `the peer closed the connection after ${buffer.length} bytes, before the end`,
        );
      }
      buffer.append(chunk.subarray(0, n));
      const value = parse(buffer.view());
      if (value !== undefined) return { value, bytes: buffer.view() };
    }
  } finally {
    clearTimeout(timer);
  }
}

/** An append-only byte buffer with amortised O(1) appends (tiny reads must not cost O(n²) copies). */
class GrowableBuffer {
  #bytes: Uint8Array;
  #length: number;

  constructor(initial: Uint8Array = new Uint8Array()) {
    this.#bytes = new Uint8Array(Math.max(1024, initial.length * 2));
    this.#bytes.set(initial);
    this.#length = initial.length;
  }

  get length(): number {
    return this.#length;
  }

  append(data: Uint8Array): void {
    if (this.#length + data.length > this.#bytes.length) {
      const grown = new Uint8Array(Math.max(this.#bytes.length * 2, this.#length + data.length));
      grown.set(this.view());
      this.#bytes = grown;
    }
    this.#bytes.set(data, this.#length);
    this.#length += data.length;
  }

  /** The bytes so far; valid until the next append. */
  view(): Uint8Array {
    return this.#bytes.subarray(0, this.#length);
  }
}
