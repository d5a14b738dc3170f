/**
 * Tailscale credentials. They come from the environment only, never from the config file,
 * and are hidden from logs, JSON and inspection.
 *
 * @module
 */

import { ConfigError, type ConfigIssue } from "./errors.ts";
import { errorMessage } from "../util/error.ts";

/** Environment variables holding credentials. */
export const CREDENTIAL_VARIABLES = ["TS_AUTHKEY", "TS_CLIENT_ID", "TS_CLIENT_SECRET"] as const;

const REDACTED = "[redacted]";

/** Credential values; all optional. */
export interface CredentialValues {
  /** Auth key (`TS_AUTHKEY`). */
  authKey?: string;
  /** OAuth client ID (`TS_CLIENT_ID`). */
  clientId?: string;
  /** OAuth client secret (`TS_CLIENT_SECRET`). */
  clientSecret?: string;
}

/**
 * Credentials whose values cannot leak by accident: `JSON.stringify`, `String()`, `console.log`
 * and `Deno.inspect` show only which ones are set. Read the values through the getters.
 */
export class Credentials {
  // Private fields are invisible to Object.keys, structuredClone and spreading.
  #authKey?: string;
  #clientId?: string;
  #clientSecret?: string;

  /** Wraps the given values; empty strings count as unset. */
  constructor(values: CredentialValues = {}) {
    this.#authKey = values.authKey || undefined;
    this.#clientId = values.clientId || undefined;
    this.#clientSecret = values.clientSecret || undefined;
  }

  /** Auth key (`TS_AUTHKEY`), if set. */
  get authKey(): string | undefined {
    return this.#authKey;
  }

  /** OAuth client ID (`TS_CLIENT_ID`), if set. */
  get clientId(): string | undefined {
    return this.#clientId;
  }

  /** OAuth client secret (`TS_CLIENT_SECRET`), if set. */
  get clientSecret(): string | undefined {
    return this.#clientSecret;
  }

  /** True when both OAuth client ID and secret are set. */
  get hasOAuthClient(): boolean {
    return this.#clientId !== undefined && this.#clientSecret !== undefined;
  }

  /** True when nothing is set. */
  get isEmpty(): boolean {
    return this.#authKey === undefined && this.#clientId === undefined && this.#clientSecret === undefined;
  }

  /** Which credentials are set, with values replaced by `"[redacted]"`. */
  toJSON(): Record<string, string | null> {
    const show = (value: string | undefined) => value === undefined ? null : REDACTED;
    return {
      authKey: show(this.#authKey),
      clientId: show(this.#clientId),
      clientSecret: show(this.#clientSecret),
    };
  }

  /** `Credentials [redacted]`. */
  toString(): string {
    return `Credentials ${REDACTED}`;
  }

  /** Shown by `Deno.inspect` and `console.log`: which credentials are set, never their values. */
  [Symbol.for("Deno.customInspect")](): string {
    return this.#describe();
  }

  /** Shown by `node:util` inspect. */
  [Symbol.for("nodejs.util.inspect.custom")](): string {
    return this.#describe();
  }

  #describe(): string {
    const set = Object.entries(this.toJSON()).filter(([, value]) => value !== null).map(([key]) =>
      `${key}: ${REDACTED}`
    );
    return set.length ? `Credentials { ${set.join(", ")} }` : "Credentials {}";
  }
}

/** Options for {@linkcode readCredentials}. */
export interface ReadCredentialsOptions {
  /** Environment to read instead of `Deno.env` (for tests). */
  env?: Record<string, string | undefined>;
}

/**
 * Reads `TS_AUTHKEY`, `TS_CLIENT_ID` and `TS_CLIENT_SECRET`. Values are trimmed (secrets mounted
 * from files often end in a newline). Throws {@linkcode ConfigError} if only half of the OAuth
 * client pair is set, or the environment cannot be read.
 */
export function readCredentials(options: ReadCredentialsOptions = {}): Credentials {
  const issues: ConfigIssue[] = [];
  const read = (name: string) => {
    try {
      return (options.env ? options.env[name] : Deno.env.get(name))?.trim() || undefined;
    } catch (error) {
      issues.push({
        path: [],
        source: name,
        message: `cannot read environment variable: ${errorMessage(error)}`,
        hint: `allow access with --allow-env=${CREDENTIAL_VARIABLES.join(",")}`,
      });
      return undefined;
    }
  };
  const [authKey, clientId, clientSecret] = CREDENTIAL_VARIABLES.map(read);
  if ((clientId === undefined) !== (clientSecret === undefined)) {
    const missing = clientId === undefined ? "TS_CLIENT_ID" : "TS_CLIENT_SECRET";
    const present = clientId === undefined ? "TS_CLIENT_SECRET" : "TS_CLIENT_ID";
    issues.push({
      path: [],
      source: missing,
      message: `not set, but ${present} is`,
      hint: "set both TS_CLIENT_ID and TS_CLIENT_SECRET for an OAuth client, or neither",
    });
  }
  if (issues.length > 0) throw new ConfigError(issues);
  return new Credentials({ authKey, clientId, clientSecret });
}
