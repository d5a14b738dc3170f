/**
 * The LocalAPI client: the only code that speaks to tailscaled. HTTP over tailscaled's unix socket
 * (`Host: local-tailscaled.sock`, no Origin or Referer, which tailscaled refuses), a timeout on every
 * call, and typed errors that say what to do.
 *
 * @module
 */

import { z } from "zod";
import { DEFAULT_LOCALAPI_SOCKET } from "../config/constants.ts";
import {
  DEFAULT_DIAL_TIMEOUT_MS,
  DialedConn,
  DialHandshakeError,
  type DialOptions,
  type DialRefusal,
  dialTarget,
  isDialRefusal,
  openDial,
} from "./dial.ts";

export { DEFAULT_DIAL_TIMEOUT_MS, DialedConn, type DialOptions, MAX_DIAL_HEAD_BYTES } from "./dial.ts";

/** Default timeout of one LocalAPI call, in milliseconds. */
export const DEFAULT_TIMEOUT_MS = 1000;

/** Why a LocalAPI call failed; callers branch on this, never on message text. */
export type LocalApiErrorKind =
  | "socket-missing"
  | "connection-refused"
  | "permission-denied"
  | "needs-login"
  | "not-found"
  | "timeout"
  | "precondition-failed"
  | "http"
  | "bad-response"
  | "dial-refused"
  | "dial-unreachable"
  | "dial-not-tailnet";

/** A failed LocalAPI call. The message names the socket or request and what to do about it. */
export class LocalApiError extends Error {
  override name = "LocalApiError";
  /** The failure class. */
  readonly kind: LocalApiErrorKind;
  /** HTTP status, when tailscaled answered. */
  readonly status?: number;
  /** Creates an error of `kind`. */
  constructor(kind: LocalApiErrorKind, message: string, options: { status?: number; cause?: unknown } = {}) {
    super(message, { cause: options.cause });
    this.kind = kind;
    this.status = options.status;
  }
}

// Go's JSON: a nil map or slice is `null`; accept it wherever an empty value would do.
const nullableArray = <T extends z.ZodType>(item: T) => z.array(item).nullish().transform((v) => v ?? []);

/** The part of tailcfg.Node that tailvoy reads (keys are Go field names). */
export const WhoIsNodeSchema = z.looseObject({
  ID: z.number().optional(),
  StableID: z.string(),
  Name: z.string(),
  User: z.number().optional(),
  Addresses: nullableArray(z.string()),
  Tags: nullableArray(z.string()),
  ComputedName: z.string().optional(),
});

/** The part of tailcfg.UserProfile that tailvoy reads. */
export const UserProfileSchema = z.looseObject({
  ID: z.number().optional(),
  LoginName: z.string().default(""),
  DisplayName: z.string().default(""),
});

/** A WhoIs answer: the peer node, its user, and the app capabilities it holds towards this node. */
export const WhoIsResponseSchema = z.looseObject({
  Node: WhoIsNodeSchema,
  UserProfile: UserProfileSchema.nullish(),
  CapMap: z.record(z.string(), nullableArray(z.unknown())).nullish().transform((v) => v ?? {}),
});

/** A parsed WhoIs response. */
export type WhoIsResponse = z.infer<typeof WhoIsResponseSchema>;

/** The part of ipnstate.Status that tailvoy reads. */
export const StatusSchema = z.looseObject({
  Version: z.string().default(""),
  TUN: z.boolean().default(false),
  BackendState: z.string(),
  TailscaleIPs: nullableArray(z.string()),
  Self: z.looseObject({
    ID: z.string().optional(),
    HostName: z.string().default(""),
    DNSName: z.string().default(""),
    TailscaleIPs: nullableArray(z.string()),
    Tags: nullableArray(z.string()),
    Online: z.boolean().optional(),
  }).nullish(),
  Peer: z.record(
    z.string(),
    z.looseObject({
      TailscaleIPs: nullableArray(z.string()),
      Online: z.boolean(),
      HostName: z.string().default(""),
      DNSName: z.string().default(""),
      Tags: nullableArray(z.string()),
      /** Subnet routes this peer serves (the primary for each; what a dial to them goes through). */
      PrimaryRoutes: nullableArray(z.string()),
    }),
  ).nullish().transform((v) => v ?? {}),
  CurrentTailnet: z.looseObject({ MagicDNSSuffix: z.string().default("") }).nullish(),
});

/** A parsed status response. */
export type Status = z.infer<typeof StatusSchema>;

/** One TCP port's handler in a serve config (Go field names). */
export const TcpPortHandlerSchema = z.looseObject({
  HTTPS: z.boolean().optional(),
  HTTP: z.boolean().optional(),
  TCPForward: z.string().optional(),
  TerminateTLS: z.string().optional(),
  ProxyProtocol: z.number().optional(),
});

const ServeConfigBase = z.looseObject({
  TCP: z.record(z.string(), TcpPortHandlerSchema).nullish(),
  Web: z.record(z.string(), z.unknown()).nullish(),
  Services: z.record(z.string(), z.looseObject({ TCP: z.record(z.string(), TcpPortHandlerSchema).nullish() }))
    .nullish(),
  AllowFunnel: z.record(z.string(), z.boolean()).nullish(),
});

/** tailscaled's serve config (ipn.ServeConfig); unknown fields are kept so a write never drops them. */
export const ServeConfigSchema = ServeConfigBase.extend({
  Foreground: z.record(z.string(), ServeConfigBase).nullish(),
});

/** A parsed serve config. */
export type ServeConfig = z.infer<typeof ServeConfigSchema>;

/** The fields of an IPN bus notification (ipn.Notify) tailvoy reads. */
export const NotifySchema = z.looseObject({
  Version: z.string().optional(),
  SessionID: z.string().optional(),
  ErrMessage: z.string().nullish(),
  State: z.number().nullish(),
});

/** The fields of tailscaled's prefs (ipn.Prefs) tailvoy reads; the rest are kept on a write. */
export const PrefsSchema = z.looseObject({
  ControlURL: z.string().default(""),
  WantRunning: z.boolean().default(false),
  Hostname: z.string().default(""),
  AdvertiseTags: nullableArray(z.string()),
  AdvertiseServices: nullableArray(z.string()),
});

/** Parsed prefs. */
export type Prefs = z.infer<typeof PrefsSchema>;

/** One IPN bus notification. */
export type Notify = z.infer<typeof NotifySchema>;

/** IPN bus mask bits (ipn.NotifyWatchOpt). */
export const NOTIFY = { initialState: 2, initialPrefs: 4, peerChanges: 4096 } as const;

/** Options of a WhoIs lookup. */
export interface WhoIsOptions {
  /** `tcp` or `udp`: which proxy mapping a `127.0.0.1:port` address is looked up in. */
  proto?: "tcp" | "udp";
  /** A Tailscale Service (`svc:name`): scopes the returned caps to grants whose `dst` is that service. */
  svcName?: string;
  /** Per-call timeout in milliseconds (default: the client's). */
  timeoutMs?: number;
}

/** A client of one tailscaled's LocalAPI. Close it when done. */
export class LocalApiClient {
  /** The socket path this client talks to. */
  readonly socket: string;
  readonly #timeoutMs: number;
  #http: Deno.HttpClient;

  /** Creates a client of the tailscaled listening on `socket`. No connection is made yet. */
  constructor(socket: string = DEFAULT_LOCALAPI_SOCKET, options: { timeoutMs?: number } = {}) {
    this.socket = socket;
    this.#timeoutMs = options.timeoutMs ?? DEFAULT_TIMEOUT_MS;
    this.#http = Deno.createHttpClient({ proxy: { transport: "unix", path: socket } });
  }

  /**
   * Who is at `addr` (an IP, `IP:port`, or the `127.0.0.1:port` end of a connection tailscaled
   * forwarded). A 404 becomes a `not-found` error.
   */
  async whois(addr: string, options: WhoIsOptions = {}): Promise<WhoIsResponse> {
    const params = new URLSearchParams({ addr });
    if (options.proto) params.set("proto", options.proto);
    if (options.svcName) params.set("svc_name", options.svcName);
    const body = await this.#request("GET", `whois?${params}`, { timeoutMs: options.timeoutMs });
    return parse(WhoIsResponseSchema, body, `whois ${addr}`);
  }

  /** This node's status, without the peer list unless `peers` is set. */
  async status(options: { peers?: boolean; timeoutMs?: number } = {}): Promise<Status> {
    const body = await this.#request("GET", `status?peers=${options.peers ? "true" : "false"}`, options);
    return parse(StatusSchema, body, "status");
  }

  /** The current serve config (`{}` when unset) and its ETag for a conditional write. */
  async getServeConfig(options: { timeoutMs?: number } = {}): Promise<{ config: ServeConfig; etag: string }> {
    const { body, headers } = await this.#call("GET", "serve-config", options);
    const config = parse(ServeConfigSchema.nullable(), body, "serve-config") ?? {};
    return { config, etag: headers.get("etag") ?? "" };
  }

  /**
   * Replaces the serve config. With `etag`, only if nobody changed it since it was read: a
   * `precondition-failed` error means read again and retry. Needs LocalAPI write access.
   */
  async setServeConfig(
    config: ServeConfig,
    options: { etag?: string; timeoutMs?: number } = {},
  ): Promise<void> {
    await this.#call("POST", "serve-config", {
      ...options,
      body: JSON.stringify(config),
      headers: options.etag ? { "If-Match": options.etag } : {},
    });
  }

  /**
   * Streams IPN bus notifications (`watch-ipn-bus`) until `signal` aborts or tailscaled closes the
   * stream. The first one (with {@link NOTIFY.initialState}) carries the session ID that owns
   * foreground serve entries: they vanish when this stream ends.
   */
  async *watchIpnBus(mask: number, options: { signal?: AbortSignal } = {}): AsyncGenerator<Notify> {
    let res: Response;
    try {
      res = await fetch(`http://local-tailscaled.sock/localapi/v0/watch-ipn-bus?mask=${mask}`, {
        client: this.#http,
        signal: options.signal,
      });
    } catch (err) {
      throw await this.#transportError(err, "GET /localapi/v0/watch-ipn-bus", this.#timeoutMs);
    }
    if (!res.ok) throw this.#httpError("GET /localapi/v0/watch-ipn-bus", res.status, await res.text());
    let buf = "";
    const decoder = new TextDecoder();
    for await (const chunk of res.body!) {
      buf += decoder.decode(chunk, { stream: true });
      let nl: number;
      while ((nl = buf.indexOf("\n")) >= 0) {
        const line = buf.slice(0, nl).trim();
        buf = buf.slice(nl + 1);
        if (line) yield parse(NotifySchema, JSON.parse(line), "watch-ipn-bus");
      }
    }
  }

  /** tailscaled's current prefs. */
  async getPrefs(options: { timeoutMs?: number } = {}): Promise<Prefs> {
    return parse(PrefsSchema, await this.#request("GET", "prefs", options), "prefs");
  }

  /**
   * Changes some prefs (`PATCH prefs` with a MaskedPrefs: each `Xxx` field with `XxxSet: true`).
   * Needs LocalAPI write access. Resolves with the new prefs.
   */
  async editPrefs(changes: Partial<Prefs>, options: { timeoutMs?: number } = {}): Promise<Prefs> {
    const masked: Record<string, unknown> = {};
    for (const [key, value] of Object.entries(changes)) {
      masked[key] = value;
      masked[`${key}Set`] = true;
    }
    const { body } = await this.#call("PATCH", "prefs", { ...options, body: JSON.stringify(masked) });
    return parse(PrefsSchema, body, "prefs");
  }

  /**
   * Starts tailscaled's backend with `prefs` (which replace the stored ones) and, when given, an auth
   * key to log in with (`POST /start`). Needs LocalAPI write access. The key is never logged.
   */
  async start(prefs: Prefs, options: { authKey?: string; timeoutMs?: number } = {}): Promise<void> {
    const body = JSON.stringify({ UpdatePrefs: prefs, AuthKey: options.authKey ?? "" });
    await this.#call("POST", "start", { timeoutMs: options.timeoutMs ?? 10_000, body });
  }

  /**
   * Starts the login (`POST /login-interactive`). With an auth key given to {@link start} it completes
   * without interaction, as `tailscale up --auth-key` does.
   */
  async startLogin(options: { timeoutMs?: number } = {}): Promise<void> {
    await this.#call("POST", "login-interactive", { timeoutMs: options.timeoutMs ?? 10_000 });
  }

  /**
   * Opens a TCP connection to `host:port` on the tailnet through tailscaled (`POST /localapi/v0/dial`),
   * the way into the tailnet beside a userspace-networking tailscaled. `host` must be an IP address,
   * already checked by the caller's policy: tailscaled would resolve a name again. Errors:
   * `dial-refused` (nothing listens there), `dial-unreachable` (tailscaled could not dial it),
   * `dial-not-tailnet` (not a tailnet destination: tailscaled leaves such dials to the caller, and
   * tailvoy never makes them), `timeout` (no answer: the node is offline or the tailnet policy drops
   * the connection). Needs only read access to the socket.
   */
  async dial(host: string, port: number, options: DialOptions = {}): Promise<DialedConn> {
    const what = `Dial ${dialTarget(host, port)}`;
    const timeoutMs = options.timeoutMs ?? DEFAULT_DIAL_TIMEOUT_MS;
    let answer: DialedConn | DialRefusal;
    try {
      answer = await openDial(this.socket, { host, port }, { ...options, timeoutMs });
    } catch (err) {
      if (options.signal?.aborted) throw err;
      throw await this.#dialError(what, err, timeoutMs);
    }
    if (answer instanceof DialedConn) return answer;
    throw await this.#dialError(what, answer, timeoutMs);
  }

  /** Releases the HTTP client. */
  close(): void {
    this.#http.close();
  }

  /** Closes the client (for `using`). */
  [Symbol.dispose](): void {
    this.close();
  }

  async #request(method: string, path: string, options: { timeoutMs?: number }): Promise<unknown> {
    return (await this.#call(method, path, options)).body;
  }

  async #call(
    method: string,
    path: string,
    options: { timeoutMs?: number; body?: string; headers?: Record<string, string> },
  ): Promise<{ body: unknown; headers: Headers }> {
    const what = `${method} /localapi/v0/${path.split("?")[0]}`;
    const timeoutMs = options.timeoutMs ?? this.#timeoutMs;
    let res: Response;
    let text: string;
    try {
      res = await fetch(`http://local-tailscaled.sock/localapi/v0/${path}`, {
        method,
        client: this.#http,
        body: options.body,
        headers: options.headers,
        signal: AbortSignal.timeout(timeoutMs),
      });
      text = await res.text();
    } catch (err) {
      throw await this.#transportError(err, what, timeoutMs);
    }
    if (!res.ok) throw this.#httpError(what, res.status, text);
    if (text.trim() === "") return { body: null, headers: res.headers };
    try {
      return { body: JSON.parse(text), headers: res.headers };
    } catch (err) {
      throw new LocalApiError(
        "bad-response",
        `${what}: tailscaled answered with invalid JSON: ${text.slice(0, 200)}`,
        {
          cause: err,
        },
      );
    }
  }

  #httpError(what: string, status: number, text: string): LocalApiError {
    const detail = text.trim().slice(0, 300);
    if (status === 404 && what.includes("/whois")) {
      return new LocalApiError("not-found", `${what}: tailscaled knows no peer at that address (${detail})`, {
        status,
      });
    }
    if (status === 412) {
      return new LocalApiError(
        "precondition-failed",
        `${what}: changed by someone else meanwhile (${detail})`,
        {
          status,
        },
      );
    }
    if (status === 403) {
      return new LocalApiError(
        "permission-denied",
        `${what}: tailscaled refused access (${detail}); run as root, as tailscaled's user, or set \`tailscale set --operator=$USER\``,
        { status },
      );
    }
    if (/not logged in|NeedsLogin|no netmap|netMap is nil/i.test(detail)) {
      return new LocalApiError(
        "needs-login",
        `${what}: tailscaled is not logged in (${detail}); run \`tailscale up\` or set TS_AUTHKEY`,
        { status },
      );
    }
    return new LocalApiError("http", `${what}: tailscaled answered HTTP ${status}: ${detail}`, { status });
  }

  // Maps a dial's failure (a thrown error or a non-101 answer) to a LocalApiError naming the target.
  async #dialError(
    what: string,
    failure: unknown,
    timeoutMs: number,
  ): Promise<LocalApiError> {
    if (failure instanceof DialHandshakeError) {
      if (failure.failure === "timeout") {
        return new LocalApiError(
          "timeout",
          `${what}: tailscaled at ${this.socket} gave no answer within ${timeoutMs} ms; the node is offline or the tailnet policy drops the connection (check \`tailscale status\` and the grants)`,
          { cause: failure },
        );
      }
      return new LocalApiError("bad-response", `${what}: ${failure.message}; is this tailscaled too old?`, {
        cause: failure,
      });
    }
    if (!isDialRefusal(failure)) {
      return await this.#transportError(failure, `${what} (POST /localapi/v0/dial)`, timeoutMs);
    }
    const { status, headers, body } = failure;
    if (status === 200 && headers.get("dial-self") === "true") {
      return new LocalApiError(
        "dial-not-tailnet",
        `${what}: not a tailnet destination (tailscaled would leave ${
          headers.get("dial-addr") ?? "it"
        } to the caller); tailvoy dials only tailnet nodes and routes`,
        { status },
      );
    }
    if (status === 502 && /refused/i.test(body)) {
      return new LocalApiError(
        "dial-refused",
        `${what}: the tailnet node refused the connection (${body}); is the service listening on that port?`,
        { status },
      );
    }
    if (status === 502) {
      return new LocalApiError(
        "dial-unreachable",
        `${what}: tailscaled could not reach it (${body}); check the address and \`tailscale status\``,
        { status },
      );
    }
    return this.#httpError(`${what} (POST /localapi/v0/dial)`, status, body);
  }

  async #transportError(err: unknown, what: string, timeoutMs: number): Promise<LocalApiError> {
    if (err instanceof DOMException && (err.name === "TimeoutError" || err.name === "AbortError")) {
      return new LocalApiError(
        "timeout",
        `${what}: tailscaled at ${this.socket} did not answer within ${timeoutMs} ms; is it overloaded or hung?`,
        { cause: err },
      );
    }
    const text = String(err instanceof Error ? `${err.message} ${err.cause ?? ""}` : err);
    let exists = true;
    try {
      await Deno.lstat(this.socket);
    } catch {
      exists = false;
    }
    if (!exists) {
      return new LocalApiError(
        "socket-missing",
        `${what}: no tailscaled socket at ${this.socket}; is tailscaled running? Set the path with --socket or tailvoy.localApiSocket in the config`,
        { cause: err },
      );
    }
    if (/permission denied|EACCES/i.test(text)) {
      return new LocalApiError(
        "permission-denied",
        `${what}: permission denied on ${this.socket}; run as root, as tailscaled's user, or set \`tailscale set --operator=$USER\``,
        { cause: err },
      );
    }
    if (/refused|ECONNREFUSED/i.test(text)) {
      return new LocalApiError(
        "connection-refused",
        `${what}: nothing listens on ${this.socket} (stale socket); is tailscaled running?`,
        { cause: err },
      );
    }
    return new LocalApiError(
      "bad-response",
      `${what}: talking to tailscaled at ${this.socket} failed: ${text}`,
      {
        cause: err,
      },
    );
  }
}

function parse<T extends z.ZodType>(schema: T, body: unknown, what: string): z.infer<T> {
  const result = schema.safeParse(body);
  if (!result.success) {
    throw new LocalApiError(
      "bad-response",
      `${what}: unexpected answer from tailscaled (${
        result.error.issues.map((i) => `${i.path.join(".")}: ${i.message}`).join("; ")
      }); is this tailscaled too old?`,
    );
  }
  return result.data;
}
