/**
 * The one client of Envoy's admin API, for our own Envoy (a unix socket in its private directory) and
 * for Envoy Gateway's (`discovery.envoyAdmin`, an http(s) URL): one method per endpoint we use.
 *
 * It speaks HTTP/1.1 itself, one `Connection: close` request per call, over a unix socket or TCP (TLS
 * for https): Deno's fetch through a unix "proxy" sends absolute-form targets, which Envoy's admin
 * answers with 404; and no pooled connection outlives a call (it would count as an open admin connection
 * and outlive the Envoy it was made to). Every call has one deadline and a bound on the answer's size, so
 * a hostile or broken endpoint costs at most `timeoutMs` and `maxBytes`.
 *
 * @module
 */

import { type ConnReader, readUntil } from "../proxy_protocol/read_until.ts";
import { EnvoyError } from "./errors.ts";
import { writeAll } from "../util/bytes.ts";
import { errorMessage } from "../util/error.ts";

/** Admin API paths we call: the discovery polls read only the dynamic listeners and routes, not the whole dump. */
export const ADMIN_PATHS = {
  ready: "/ready",
  listeners: "/config_dump?resource=dynamic_listeners",
  routes: "/config_dump?resource=dynamic_route_configs",
  clusters: "/clusters?format=json",
  healthcheckFail: "/healthcheck/fail",
  // skip_exit: the supervisor decides when Envoy exits, not Envoy's drain timer.
  drainListeners: "/drain_listeners?graceful&skip_exit",
  stats: "/stats?format=json",
} as const;

/** Default deadline of one call, in ms. */
export const DEFAULT_ADMIN_TIMEOUT_MS = 5000;
/** Default bound on one answer (head and body), in bytes: far above a large gateway's config dump. */
export const DEFAULT_ADMIN_MAX_BYTES = 64 * 1024 * 1024;
// A status line and a few headers; anything longer is not Envoy's admin API.
const MAX_HEAD_BYTES = 16 * 1024;
const READ_CHUNK = 64 * 1024;

/**
 * Why an admin call failed: `unreachable` (no connection), `timeout` (no full answer in time),
 * `malformed` (not an HTTP answer), `too-large` (over `maxBytes`), `status` (not 2xx), `not-json`.
 */
export type EnvoyAdminFailure = "unreachable" | "timeout" | "malformed" | "too-large" | "status" | "not-json";

/** A failed admin API call: an {@link EnvoyError} of kind `admin`, naming the endpoint and the fix. */
export class EnvoyAdminError extends EnvoyError {
  /** Always `EnvoyAdminError`. */
  override name = "EnvoyAdminError";
  /** What went wrong. */
  readonly failure: EnvoyAdminFailure;
  /** The endpoint called: a URL, or a path on a unix socket. */
  readonly endpoint: string;
  /** The HTTP status, when Envoy answered one. */
  readonly status?: number;

  /** Creates an error for `failure` at `endpoint`. */
  constructor(
    failure: EnvoyAdminFailure,
    message: string,
    options: { endpoint: string; status?: number; cause?: unknown },
  ) {
    super("admin", message, { cause: options.cause });
    this.failure = failure;
    this.endpoint = options.endpoint;
    this.status = options.status;
  }
}

/** Options of {@link EnvoyAdminClient}. */
export interface EnvoyAdminOptions {
  /** Deadline of one call (connect, request and the whole answer), in ms (default 5000). */
  timeoutMs?: number;
  /** Largest answer read, head included, in bytes (default 64 MiB); a longer one fails the call. */
  maxBytes?: number;
  /** The setting that names this admin API (e.g. `discovery.envoyAdmin`), for the fix in error messages. */
  setting?: string;
}

/** One HTTP answer of the admin API. */
interface Answer {
  status: number;
  body: string;
}

type Transport =
  | { kind: "unix"; path: string }
  | { kind: "tcp"; hostname: string; port: number; tls: boolean; host: string; prefix: string };

/**
 * Reads and drives Envoy's admin API.
 *
 * ```ts
 * const admin = new EnvoyAdminClient("http://127.0.0.1:19000", { setting: "discovery.envoyAdmin" });
 * if (await admin.readyState() === "LIVE") console.log(await admin.dynamicListeners());
 * const ours = new EnvoyAdminClient("/tmp/tailvoy-envoy-x/admin.sock", { timeoutMs: 1000 });
 * ```
 */
export class EnvoyAdminClient {
  readonly #transport: Transport;
  readonly #target: string;
  readonly #timeoutMs: number;
  readonly #maxBytes: number;
  readonly #setting?: string;

  /**
   * A client for the admin API at `target`: the path of a unix socket (starting with `/`), or an
   * http(s) base URL such as `http://127.0.0.1:19000` (a path in it prefixes every call).
   */
  constructor(target: string, options: EnvoyAdminOptions = {}) {
    this.#target = target;
    this.#timeoutMs = options.timeoutMs ?? DEFAULT_ADMIN_TIMEOUT_MS;
    this.#maxBytes = options.maxBytes ?? DEFAULT_ADMIN_MAX_BYTES;
    this.#setting = options.setting;
    this.#transport = parseTarget(target);
  }

  /** Where the admin API is, as given to the constructor. */
  get target(): string {
    return this.#target;
  }

  /**
   * Envoy's server state from `/ready`: `LIVE` once initialized (and only with HTTP 200); before its
   * first xDS answer (`PRE_INITIALIZING`, `INITIALIZING`) it reports no listeners, which must not be
   * taken for "all listeners removed"; `DRAINING` while it shuts down.
   */
  async readyState(): Promise<string> {
    const { status, body } = await this.#call("GET", ADMIN_PATHS.ready);
    const state = body.trim();
    // Envoy answers a word; anything longer is not Envoy's admin API (cut, so a page is not logged whole).
    if (state === "") return `HTTP ${status}`;
    if (state.length > 40) return `${state.slice(0, 40)}… (HTTP ${status})`;
    return state === "LIVE" && status !== 200 ? `${state} (HTTP ${status})` : state;
  }

  /** `/config_dump?resource=dynamic_listeners`, parsed JSON (`parseListeners` reads it). */
  dynamicListeners(): Promise<unknown> {
    return this.#json(ADMIN_PATHS.listeners);
  }

  /** `/config_dump?resource=dynamic_route_configs`, parsed JSON (the HTTP listeners' routes). */
  dynamicRouteConfigs(): Promise<unknown> {
    return this.#json(ADMIN_PATHS.routes);
  }

  /** `/clusters?format=json`, parsed JSON (`parseClusterHealth` reads it). */
  clusters(): Promise<unknown> {
    return this.#json(ADMIN_PATHS.clusters);
  }

  /** `/stats?format=json` for the stats whose name matches the RE2 regex `filter`, parsed JSON. */
  stats(filter: string): Promise<unknown> {
    return this.#json(`${ADMIN_PATHS.stats}&filter=${encodeURIComponent(filter)}`);
  }

  /** `POST /healthcheck/fail`: Envoy's health check fails from now on (load balancers move away). */
  async failHealthcheck(): Promise<void> {
    await this.#call("POST", ADMIN_PATHS.healthcheckFail, { ok: true });
  }

  /** `POST /drain_listeners?graceful&skip_exit`: Envoy drains its listeners and does not exit by itself. */
  async drainListeners(): Promise<void> {
    await this.#call("POST", ADMIN_PATHS.drainListeners, { ok: true });
  }

  async #json(path: string): Promise<unknown> {
    const { body } = await this.#call("GET", path, { ok: true });
    try {
      return JSON.parse(body);
    } catch {
      const endpoint = this.#endpoint(path);
      throw new EnvoyAdminError("not-json", `Envoy admin ${endpoint} did not answer JSON: ${this.#isIt()}`, {
        endpoint,
      });
    }
  }

  #endpoint(path: string): string {
    const t = this.#transport;
    return t.kind === "unix"
      ? `${path} on unix socket ${t.path}`
      : `${this.#target.replace(/\/+$/, "")}${path}`;
  }

  #isIt(): string {
    return `is ${this.#setting ?? "it"} Envoy's admin API?`;
  }

  async #call(method: string, path: string, options: { ok?: boolean } = {}): Promise<Answer> {
    const endpoint = this.#endpoint(path);
    const fail = (
      failure: EnvoyAdminFailure,
      message: string,
      extra: { status?: number; cause?: unknown } = {},
    ) => new EnvoyAdminError(failure, `Envoy admin ${endpoint} ${message}`, { endpoint, ...extra });
    const check = this.#setting ? `check ${this.#setting} and that Envoy runs` : "check that Envoy runs";
    const deadline = performance.now() + this.#timeoutMs;
    const late = () => fail("timeout", `is unreachable (no answer within ${this.#timeoutMs} ms): ${check}`);
    let conn: Deno.Conn;
    try {
      conn = await withDeadline(connect(this.#transport), this.#timeoutMs, late, (c) => c.close());
    } catch (error) {
      if (error instanceof EnvoyAdminError) throw error;
      throw fail("unreachable", `is unreachable (${errorMessage(error)}): ${check}`, { cause: error });
    }
    try {
      const t = this.#transport;
      const target = t.kind === "unix" ? path : `${t.prefix}${path}`;
      const host = t.kind === "unix" ? "envoy" : t.host;
      const request =
        `${method} ${target} HTTP/1.1\r\nHost: ${host}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n`;
      const remaining = () => Math.max(1, deadline - performance.now());
      await withDeadline(writeAll(conn, new TextEncoder().encode(request)), remaining(), late);
      const answer = await readAnswer(conn, {
        timeoutMs: remaining(),
        maxBytes: this.#maxBytes,
        fail: (stop, detail) =>
          stop === "timeout"
            ? late()
            : stop === "too-large"
            ? fail("too-large", `answered more than ${this.#maxBytes} bytes: ${this.#isIt()}`)
            : fail("malformed", `did not answer HTTP (${detail}): ${this.#isIt()}`),
      });
      if (options.ok && (answer.status < 200 || answer.status > 299)) {
        throw fail("status", `answered ${answer.status}: ${answer.body.slice(0, 200).trim()}`, {
          status: answer.status,
        });
      }
      return answer;
    } catch (error) {
      if (error instanceof EnvoyAdminError) throw error;
      throw fail("unreachable", `is unreachable (${errorMessage(error)}): ${check}`, { cause: error });
    } finally {
      try {
        conn.close();
      } catch { /* closed by the peer */ }
    }
  }
}

function parseTarget(target: string): Transport {
  if (target.startsWith("/")) return { kind: "unix", path: target };
  let url: URL | undefined;
  try {
    url = new URL(target);
  } catch {
    // Reported below.
  }
  if (!url || (url.protocol !== "http:" && url.protocol !== "https:")) {
    throw new TypeError(
      `Envoy admin target ${JSON.stringify(target)} is neither a unix socket path nor an http(s) URL: ` +
        'give e.g. "http://127.0.0.1:19000" or "/run/envoy/admin.sock"',
    );
  }
  const tls = url.protocol === "https:";
  return {
    kind: "tcp",
    hostname: url.hostname.replace(/^\[(.*)\]$/, "$1"),
    port: Number(url.port || (tls ? 443 : 80)),
    tls,
    host: url.host,
    prefix: url.pathname.replace(/\/+$/, ""),
  };
}

function connect(t: Transport): Promise<Deno.Conn> {
  if (t.kind === "unix") return Deno.connect({ transport: "unix", path: t.path });
  return t.tls ? Deno.connectTls({ hostname: t.hostname, port: t.port }) : Deno.connect(t);
}

/**
 * `work`, or `late()` thrown after `ms`; a result that arrives after the deadline is handed to
 * `discard` (a connection made too late is closed, not leaked).
 */
async function withDeadline<T>(
  work: Promise<T>,
  ms: number,
  late: () => Error,
  discard?: (value: T) => void,
): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  let expired = false;
  const deadline = new Promise<never>((_, reject) => {
    timer = setTimeout(() => {
      expired = true;
      reject(late());
    }, ms);
  });
  work.then((value) => expired && discard?.(value), () => {});
  try {
    return await Promise.race([work, deadline]);
  } finally {
    clearTimeout(timer);
  }
}

/** Why {@link readAnswer} gave up. */
type AnswerStop = "timeout" | "too-large" | "malformed";

/**
 * Reads one HTTP/1.x answer: framed by content-length, chunked, or ending at EOF. Stops as soon as the
 * answer is complete (a peer that keeps the connection open costs nothing more), or at `maxBytes`.
 */
async function readAnswer(
  conn: Deno.Conn,
  options: { timeoutMs: number; maxBytes: number; fail: (stop: AnswerStop, detail: string) => Error },
): Promise<Answer> {
  let ended = false;
  // EOF becomes an empty read, so the parser sees it and ends an unframed answer (or calls it cut short).
  const reader: ConnReader = {
    read: async (p) => {
      const n = await conn.read(p);
      if (n !== null) return n;
      if (ended) return null;
      ended = true;
      return 0;
    },
  };
  const parser = new AnswerParser();
  const { value } = await readUntil(reader, (bytes) => {
    if (bytes.length > options.maxBytes) throw options.fail("too-large", "");
    const result = parser.parse(bytes, ended);
    if (typeof result === "string") throw options.fail("malformed", result);
    // An announced length over the bound fails at once, before its bytes are waited for.
    if (parser.announced > options.maxBytes) throw options.fail("too-large", "");
    return result;
  }, {
    timeoutMs: options.timeoutMs,
    chunkSize: READ_CHUNK,
    fail: (stop, message) => options.fail(stop === "timeout" ? "timeout" : "malformed", message),
  });
  return value;
}

/**
 * An incremental HTTP/1.x answer parser over a growing buffer: `undefined` while incomplete, the answer
 * once complete, or a string saying why the bytes are not an HTTP answer.
 */
class AnswerParser {
  #headEnd = -1;
  #status = 0;
  #framing: { kind: "length"; length: number } | { kind: "chunked" } | { kind: "eof" } = { kind: "eof" };
  /** Chunked: where the next chunk's size line starts, and the chunks so far (start, end). */
  #next = 0;
  #chunks: [number, number][] = [];
  /** Chunked: bytes of the complete chunks, and the size of the one still arriving. */
  #done = 0;
  #pending = 0;

  /** Body bytes announced so far: the content-length, or the sizes of the chunks seen. */
  get announced(): number {
    const f = this.#framing;
    return f.kind === "length" ? f.length : f.kind === "chunked" ? this.#done + this.#pending : 0;
  }

  parse(bytes: Uint8Array, ended: boolean): Answer | string | undefined {
    if (this.#headEnd < 0) {
      const end = indexOfCrlfCrlf(bytes);
      if (end < 0) {
        if (bytes.length > MAX_HEAD_BYTES) return `no end of headers in the first ${MAX_HEAD_BYTES} bytes`;
        return ended ? "the connection closed before the end of the headers" : undefined;
      }
      const problem = this.#head(new TextDecoder().decode(bytes.subarray(0, end)));
      if (problem) return problem;
      this.#headEnd = end + 4;
      this.#next = this.#headEnd;
    }
    const f = this.#framing;
    if (f.kind === "length") {
      if (bytes.length - this.#headEnd >= f.length) {
        return this.#answer(bytes.subarray(this.#headEnd, this.#headEnd + f.length));
      }
    } else if (f.kind === "chunked") {
      const done = this.#scanChunks(bytes);
      if (typeof done === "string") return done;
      if (done) {
        const body = new Uint8Array(this.#done);
        let at = 0;
        for (const [start, end] of this.#chunks) {
          body.set(bytes.subarray(start, end), at);
          at += end - start;
        }
        return this.#answer(body);
      }
    } else if (ended) {
      return this.#answer(bytes.subarray(this.#headEnd));
    }
    return ended ? "the connection closed before the end of the body" : undefined;
  }

  #head(head: string): string | undefined {
    const [statusLine, ...lines] = head.split("\r\n");
    const status = /^HTTP\/1\.[01] (\d{3})(?: |$)/.exec(statusLine);
    if (!status) return `status line ${JSON.stringify(statusLine.slice(0, 60))}`;
    this.#status = Number(status[1]);
    for (const line of lines) {
      const colon = line.indexOf(":");
      const name = line.slice(0, colon).trim().toLowerCase();
      const value = line.slice(colon + 1).trim();
      if (name === "transfer-encoding" && /(^|,)\s*chunked\s*$/i.test(value)) {
        this.#framing = { kind: "chunked" };
      } else if (name === "content-length" && this.#framing.kind !== "chunked") {
        if (!/^\d{1,15}$/.test(value)) return `content-length ${JSON.stringify(value.slice(0, 20))}`;
        this.#framing = { kind: "length", length: Number(value) };
      }
    }
    return undefined;
  }

  /** Walks the chunks read so far: true at the last (empty) chunk, a string when the framing is broken. */
  #scanChunks(bytes: Uint8Array): boolean | string {
    while (true) {
      const eol = indexOfCrlf(bytes, this.#next);
      if (eol < 0) return bytes.length - this.#next > 1024 ? "a chunk size line over 1024 bytes" : false;
      const sizeText = new TextDecoder().decode(bytes.subarray(this.#next, eol)).split(";")[0].trim();
      if (!/^[0-9a-fA-F]{1,12}$/.test(sizeText)) return `chunk size ${JSON.stringify(sizeText.slice(0, 20))}`;
      const size = parseInt(sizeText, 16);
      // Trailers after the last chunk are not read: Envoy's admin sends none, and the answer is complete.
      if (size === 0) return true;
      const start = eol + 2;
      if (bytes.length < start + size + 2) {
        this.#pending = size;
        return false;
      }
      this.#pending = 0;
      this.#done += size;
      this.#chunks.push([start, start + size]);
      this.#next = start + size + 2;
    }
  }

  #answer(body: Uint8Array): Answer {
    return { status: this.#status, body: new TextDecoder().decode(body) };
  }
}

function indexOfCrlf(bytes: Uint8Array, from: number): number {
  for (let i = from; i + 1 < bytes.length; i++) {
    if (bytes[i] === 13 && bytes[i + 1] === 10) return i;
  }
  return -1;
}

function indexOfCrlfCrlf(bytes: Uint8Array): number {
  for (let i = 0; i + 3 < bytes.length; i++) {
    if (bytes[i] === 13 && bytes[i + 1] === 10 && bytes[i + 2] === 13 && bytes[i + 3] === 10) return i;
  }
  return -1;
}
