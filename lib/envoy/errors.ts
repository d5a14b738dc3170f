/**
 * The one error type of the Envoy integration, so callers branch on `kind`, never on message text.
 *
 * @module
 */

/**
 * Why an Envoy operation failed:
 * `render`: the config cannot be turned into a bootstrap (e.g. no port for a listener);
 * `validate`: `envoy --mode validate` rejected the bootstrap (the message is Envoy's);
 * `spawn`: the binary could not be run (missing, not executable);
 * `start`: Envoy exited or did not become ready during start-up;
 * `state`: the call does not fit the supervisor's state (e.g. `start` while running);
 * `admin`: a call to Envoy's admin API failed (an `EnvoyAdminError`, with the endpoint and why).
 */
export type EnvoyErrorKind = "render" | "validate" | "spawn" | "start" | "state" | "admin";

/** A failed Envoy operation. The message names the offending value; `output` holds Envoy's own words. */
export class EnvoyError extends Error {
  /** Always `EnvoyError`. */
  override name = "EnvoyError";
  /** The failure class. */
  readonly kind: EnvoyErrorKind;
  /** What Envoy printed (its error lines), when it said anything. */
  readonly output?: string;
  /** Envoy's exit code, when it exited. */
  readonly exitCode?: number;

  /** Creates an error of `kind`. */
  constructor(
    kind: EnvoyErrorKind,
    message: string,
    options: { output?: string; exitCode?: number; cause?: unknown } = {},
  ) {
    super(message, { cause: options.cause });
    this.kind = kind;
    this.output = options.output;
    this.exitCode = options.exitCode;
  }
}
