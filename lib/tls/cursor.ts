/**
 * A bounds-checked reader over TLS presentation-language structures (RFC 8446 §3): fixed-size integers
 * and length-prefixed vectors. Every overrun throws a `malformed` {@link ClientHelloError}.
 *
 * @module
 */

import { ClientHelloError } from "./errors.ts";

/** Reads big-endian integers and vectors from `bytes`, front to back. */
export class Cursor {
  #bytes: Uint8Array;
  #at = 0;
  /** What is being read, for error messages (e.g. "ClientHello", "server_name extension"). */
  readonly what: string;

  /** Creates a cursor over `bytes`; `what` names the structure in errors. */
  constructor(bytes: Uint8Array, what: string) {
    this.#bytes = bytes;
    this.what = what;
  }

  /** Bytes not read yet. */
  get remaining(): number {
    return this.#bytes.length - this.#at;
  }

  /** Reads `n` bytes. */
  bytes(n: number, field: string): Uint8Array {
    if (n > this.remaining) {
      throw new ClientHelloError(
        "malformed",
        `${this.what} ${field} needs ${n} bytes at offset ${this.#at}, only ${this.remaining} remain`,
      );
    }
    const out = this.#bytes.subarray(this.#at, this.#at + n);
    this.#at += n;
    return out;
  }

  /** Reads an unsigned 8-bit integer. */
  u8(field: string): number {
    return this.bytes(1, field)[0];
  }

  /** Reads an unsigned big-endian 16-bit integer. */
  u16(field: string): number {
    const b = this.bytes(2, field);
    return b[0] << 8 | b[1];
  }

  /**
   * Reads a vector with a `lengthBytes`-byte length prefix (1 or 2) whose length must lie in
   * `[min, max]`, as a cursor over its contents.
   */
  vector(lengthBytes: 1 | 2, field: string, range: { min: number; max?: number }): Cursor {
    const length = lengthBytes === 1 ? this.u8(`${field} length`) : this.u16(`${field} length`);
    const max = range.max ?? (lengthBytes === 1 ? 0xff : 0xffff);
    if (length < range.min || length > max) {
      throw new ClientHelloError(
        "malformed",
        `${this.what} ${field} length ${length} is outside ${range.min}-${max}`,
      );
    }
    return new Cursor(this.bytes(length, field), `${this.what} ${field}`);
  }

  /** Throws unless every byte has been read. */
  end(): void {
    if (this.remaining !== 0) {
      throw new ClientHelloError("malformed", `${this.what} has ${this.remaining} unexpected trailing bytes`);
    }
  }
}
