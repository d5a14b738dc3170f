/**
 * The error class of the ClientHello parser and reader.
 *
 * @module
 */

/** Why reading or parsing a ClientHello failed; callers branch on this, never on message text. */
export type ClientHelloErrorReason =
  | "timeout"
  | "eof"
  | "malformed"
  | "unsupported"
  | "too-large"
  | "too-many-records"
  | "not-tls";

/** A ClientHello that could not be read or parsed. The message names the offending value. */
export class ClientHelloError extends Error {
  /** Always `"ClientHelloError"`. */
  override name = "ClientHelloError";
  /** The failure class. */
  readonly reason: ClientHelloErrorReason;
  /** Creates an error of `reason`. */
  constructor(reason: ClientHelloErrorReason, message: string, options: { cause?: unknown } = {}) {
    super(message, { cause: options.cause });
    this.reason = reason;
  }
}
