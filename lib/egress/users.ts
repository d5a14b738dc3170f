/**
 * The users of an egress proxy listener (`egress.listeners.X.credentials`): read from a file or an
 * environment variable as `user:password` entries, checked once at load, and kept only as password
 * digests. Errors name the file (or variable) and line, never a password or a line's text.
 *
 * Format: one entry per line (a file) or per line or comma (a variable); surrounding whitespace is
 * trimmed; blank entries and entries starting with `#` are skipped; the user ends at the first `:`.
 * User and password are 1 to 255 bytes each, as SOCKS5 (RFC 1929) can carry no more.
 *
 * @module
 */

import { createHash, timingSafeEqual } from "node:crypto";
import { ConfigError, type ConfigIssue, readFailure } from "../config/errors.ts";
import type { EgressCredentialsConfig } from "../config/schema.ts";
import { own } from "../util/own.ts";

/** Longest user name or password SOCKS5 username/password authentication can carry, in bytes. */
export const MAX_CREDENTIAL_BYTES = 255;

const REDACTED = "[redacted]";
const encoder = new TextEncoder();
const digest = (password: string) => createHash("sha256").update(password).digest();
// Compared against when the user is unknown, so an unknown user costs what a known one does.
const NO_PASSWORD = digest("");

/** The users a listener accepts; passwords are held only as SHA-256 digests and compared in constant time. */
export class EgressUsers {
  readonly #digests: ReadonlyMap<string, Uint8Array>;

  /** Builds the set from user → password; prefer {@linkcode loadEgressUsers}, which checks entries. */
  constructor(users: Iterable<readonly [string, string]>) {
    this.#digests = new Map([...users].map(([user, password]) => [user, digest(password)]));
  }

  /** How many users there are. */
  get size(): number {
    return this.#digests.size;
  }

  /** True if `user` may use the proxy with `password`. */
  verify(user: string, password: string): boolean {
    const known = this.#digests.get(user);
    const same = timingSafeEqual(known ?? NO_PASSWORD, digest(password));
    return known !== undefined && same;
  }

  /** The user names, never their passwords. */
  toJSON(): { users: string[] } {
    return { users: [...this.#digests.keys()] };
  }

  /** `EgressUsers [redacted]`. */
  toString(): string {
    return `EgressUsers ${REDACTED}`;
  }

  /** Shown by `Deno.inspect` and `console.log`: how many users, nothing else. */
  [Symbol.for("Deno.customInspect")](): string {
    return `EgressUsers { ${this.size} ${this.size === 1 ? "user" : "users"} }`;
  }
}

/** Options for {@linkcode loadEgressUsers}. */
export interface LoadEgressUsersOptions {
  /** Environment to read instead of `Deno.env` (for tests). */
  env?: Record<string, string | undefined>;
  /** Config path of the credentials, shown in messages (e.g. `["egress", "listeners", "proxy", "credentials"]`). */
  path?: (string | number)[];
}

/**
 * Reads and checks the users `credentials` names. Throws {@linkcode ConfigError} listing every problem
 * (unreadable file, unset variable, malformed or duplicate entries, no users), each naming the file and
 * line (or variable and entry) and never a password.
 */
export async function loadEgressUsers(
  credentials: EgressCredentialsConfig,
  options: LoadEgressUsersOptions = {},
): Promise<EgressUsers> {
  const path = options.path ?? [];
  if (credentials.file !== undefined) {
    const file = credentials.file;
    let text: string;
    try {
      text = await Deno.readTextFile(file);
    } catch (error) {
      const failure = readFailure(error, {
        what: "users file",
        notFoundHint: "check the path in credentials.file",
        directoryHint: "give the path of the user:password file",
      });
      throw new ConfigError([{ path: [...path, "file"], source: file, ...failure }]);
    }
    return parseEgressUsers(text, { source: file, path: [...path, "file"], commas: false });
  }
  const name = credentials.env;
  if (name === undefined) {
    throw new ConfigError([{ path, message: "needs file or env", hint: "add file: /path/to/users" }]);
  }
  let text: string | undefined;
  try {
    text = options.env ? own(options.env, name) : Deno.env.get(name);
  } catch (error) {
    const reason = error instanceof Error ? error.message : String(error);
    throw new ConfigError([{
      path: [...path, "env"],
      source: name,
      message: `cannot read environment variable ${name}: ${reason}`,
      hint: `allow access with --allow-env=${name}`,
    }]);
  }
  if (text === undefined) {
    throw new ConfigError([{
      path: [...path, "env"],
      source: name,
      message: `environment variable ${name} is not set`,
      hint: "set it to user:password entries (one per line or comma-separated), or use credentials.file",
    }]);
  }
  return parseEgressUsers(text, { source: name, path: [...path, "env"], commas: true });
}

/** Options for {@linkcode parseEgressUsers}. */
export interface ParseEgressUsersOptions {
  /** The file or variable the text came from, for messages. */
  source: string;
  /** Config path shown in messages. */
  path?: (string | number)[];
  /** Commas separate entries too (an environment variable); lines are then counted as entries. */
  commas?: boolean;
}

/** Parses `user:password` entries; see the module documentation for the format and the errors. */
export function parseEgressUsers(text: string, options: ParseEgressUsersOptions): EgressUsers {
  const issues: ConfigIssue[] = [];
  const users = new Map<string, string>();
  const firstSeen = new Map<string, number>();
  const entries = text.split(options.commas ? /\r?\n|,/ : /\r?\n/);
  // A variable has no lines to point at: its entries are numbered instead.
  const where = (n: number) => options.commas ? `entry ${n}` : `line ${n}`;
  const problem = (n: number | undefined, message: string, hint: string) =>
    issues.push({
      path: options.path ?? [],
      source: options.source,
      message,
      hint,
      ...(options.commas || n === undefined ? {} : { line: n, column: 1 }),
    });
  entries.forEach((raw, index) => {
    const n = index + 1;
    const entry = raw.trim();
    if (entry === "" || entry.startsWith("#")) return;
    const colon = entry.indexOf(":");
    if (colon < 0) {
      // The entry itself is not shown: it may be a password on its own.
      return problem(n, `${where(n)} has no ":" between user and password`, "write user:password");
    }
    const user = entry.slice(0, colon);
    const password = entry.slice(colon + 1);
    if (user === "") return problem(n, `${where(n)} has no user before ":"`, "write user:password");
    if (/[\s\p{Cc}]/u.test(user)) {
      return problem(
        n,
        `user ${JSON.stringify(user)} on ${where(n)} contains whitespace or control characters`,
        "use a user name without spaces",
      );
    }
    if (encoder.encode(user).length > MAX_CREDENTIAL_BYTES) {
      return problem(
        n,
        `user on ${where(n)} is longer than ${MAX_CREDENTIAL_BYTES} bytes`,
        "shorten it: SOCKS5 carries at most 255 bytes",
      );
    }
    if (password === "") {
      return problem(n, `user ${JSON.stringify(user)} has an empty password`, "give every user a password");
    }
    if (encoder.encode(password).length > MAX_CREDENTIAL_BYTES) {
      return problem(
        n,
        `password of user ${JSON.stringify(user)} is longer than ${MAX_CREDENTIAL_BYTES} bytes`,
        "shorten it: SOCKS5 carries at most 255 bytes",
      );
    }
    const first = firstSeen.get(user);
    if (first !== undefined) {
      return problem(
        n,
        `user ${JSON.stringify(user)} is listed twice (first on ${where(first)})`,
        "keep one entry per user",
      );
    }
    firstSeen.set(user, n);
    users.set(user, password);
  });
  if (issues.length === 0 && users.size === 0) {
    problem(
      undefined,
      "no users",
      "add user:password entries; a listener with credentials and no users would refuse everyone",
    );
  }
  if (issues.length > 0) throw new ConfigError(issues);
  return new EgressUsers(users);
}
