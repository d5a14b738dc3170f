/**
 * The L7 bench's load generator, in its own process so it shares no event loop with what it measures.
 * Reads {@link L7LoadCommand}s as JSON lines on stdin and answers each with one {@link L7LoadResult}
 * line on stdout; exits when stdin closes.
 *
 * HTTP: keep-alive HTTP/1.1 connections, each starting with an optional preamble (the PROXY v2 header
 * tailscaled, or our relay, would send), then one request at a time; latency is from writing a request
 * to the last byte of its response. ext_authz: the same connections on a unix socket, each sending the
 * pre-built check request (what Envoy sends) one at a time.
 *
 * @module
 */

import { type HttpTarget, type L7LoadCommand, type L7LoadResult, latencyOf } from "./l7_protocol.ts";
import { delay } from "../../lib/util/async.ts";
import { errorMessage } from "../../lib/util/error.ts";

const enc = new TextEncoder();
const latin1 = new TextDecoder("latin1");

/** One keep-alive HTTP/1.1 client connection, sending the same request again and again. */
class HttpConn {
  readonly #connect: () => Promise<Deno.Conn>;
  readonly #request: Uint8Array;
  readonly #first: Uint8Array;
  #conn?: Deno.Conn;
  #buf = new Uint8Array(64 * 1024);
  #len = 0;
  #fresh = true;

  /** `first` is what a new connection sends (preamble + request), `request` every later request. */
  constructor(connect: () => Promise<Deno.Conn>, request: Uint8Array, first = request) {
    this.#connect = connect;
    this.#request = request;
    this.#first = first;
  }

  /** A connection to an HTTP target on 127.0.0.1 (`GET path`, with its preamble first). */
  static tcp(target: HttpTarget): HttpConn {
    const request = enc.encode(`GET ${target.path} HTTP/1.1\r\nHost: ${target.host}\r\n\r\n`);
    const preamble = target.preamble
      ? Uint8Array.from(atob(target.preamble), (c) => c.charCodeAt(0))
      : undefined;
    const connect = async () => {
      const conn = await Deno.connect({ hostname: "127.0.0.1", port: target.port });
      conn.setNoDelay(true);
      return conn;
    };
    return new HttpConn(connect, request, preamble ? new Uint8Array([...preamble, ...request]) : request);
  }

  async open(): Promise<void> {
    this.#conn = await this.#connect();
    this.#len = 0;
    this.#fresh = true;
  }

  close(): void {
    try {
      this.#conn?.close();
    } catch { /* closed */ }
    this.#conn = undefined;
  }

  async #write(bytes: Uint8Array): Promise<void> {
    let off = 0;
    while (off < bytes.length) off += await this.#conn!.write(bytes.subarray(off));
  }

  async #read(): Promise<void> {
    if (this.#len === this.#buf.length) {
      const bigger = new Uint8Array(this.#buf.length * 2);
      bigger.set(this.#buf);
      this.#buf = bigger;
    }
    const n = await this.#conn!.read(this.#buf.subarray(this.#len));
    if (n === null) throw new Error("connection closed by the server");
    this.#len += n;
  }

  /** Sends one request and reads its response (Content-Length framing); resolves with the status. */
  async exchange(): Promise<number> {
    if (!this.#conn) await this.open();
    await this.#write(this.#fresh ? this.#first : this.#request);
    this.#fresh = false;
    let scan = 0;
    while (true) {
      const b = this.#buf;
      let end = -1;
      for (let i = Math.max(0, scan - 3); i + 3 < this.#len; i++) {
        if (b[i] === 13 && b[i + 1] === 10 && b[i + 2] === 13 && b[i + 3] === 10) {
          end = i;
          break;
        }
      }
      if (end < 0) {
        scan = this.#len;
        await this.#read();
        continue;
      }
      const head = latin1.decode(b.subarray(0, end));
      const status = Number(head.slice(9, 12));
      const m = /\r\ncontent-length:\s*(\d+)/i.exec(head);
      if (!m) throw new Error(`response without Content-Length: ${head.split("\r\n")[0]}`);
      const total = end + 4 + Number(m[1]);
      while (this.#len < total) await this.#read();
      this.#buf.copyWithin(0, total, this.#len);
      this.#len -= total;
      if (/\r\nconnection:\s*close/i.test(head)) this.close();
      return status;
    }
  }
}

interface Tally {
  requests: number;
  non2xx: number;
  errors: number;
  firstError?: string;
  samples: number[];
}

async function oneRequest(conn: HttpConn, tally: Tally): Promise<void> {
  const t0 = performance.now();
  try {
    const status = await conn.exchange();
    tally.samples.push(performance.now() - t0);
    tally.requests++;
    if (status < 200 || status > 299) tally.non2xx++;
  } catch (err) {
    tally.errors++;
    tally.firstError ??= errorMessage(err);
    conn.close();
    // Do not spin on a target that refuses everything.
    await delay(10);
  }
}

/** `connections` connections from `open`, each sending its next request on the response, until the deadline. */
async function closed(
  connections: number,
  durationMs: number,
  open: () => HttpConn,
): Promise<{ tally: Tally; ms: number }> {
  const tally: Tally = { requests: 0, non2xx: 0, errors: 0, samples: [] };
  const t0 = performance.now();
  const deadline = t0 + durationMs;
  await Promise.all(Array.from({ length: connections }, async () => {
    const conn = open();
    try {
      while (performance.now() < deadline) await oneRequest(conn, tally);
    } finally {
      conn.close();
    }
  }));
  return { tally, ms: performance.now() - t0 };
}

async function closedLoop(cmd: Extract<L7LoadCommand, { op: "closed" }>): Promise<L7LoadResult> {
  const { tally: { samples, ...rest }, ms } = await closed(
    cmd.connections,
    cmd.durationMs,
    () => HttpConn.tcp(cmd.target),
  );
  return { ok: true, op: "closed", ...rest, ms, latency: latencyOf(samples) };
}

async function openLoop(cmd: Extract<L7LoadCommand, { op: "open" }>): Promise<L7LoadResult> {
  const tally: Tally = { requests: 0, non2xx: 0, errors: 0, samples: [] };
  const t0 = performance.now();
  const deadline = t0 + cmd.durationMs;
  // Each connection sends every `interval` ms, the connections staggered evenly.
  const interval = (cmd.connections * 1000) / cmd.rate;
  await Promise.all(Array.from({ length: cmd.connections }, async (_, i) => {
    const conn = HttpConn.tcp(cmd.target);
    await conn.open().catch(() => {});
    let next = t0 + (i * interval) / cmd.connections;
    try {
      while (next < deadline) {
        const wait = next - performance.now();
        if (wait > 0) await delay(wait);
        await oneRequest(conn, tally);
        next += interval;
      }
    } finally {
      conn.close();
    }
  }));
  const { samples, ...rest } = tally;
  return { ok: true, op: "open", ...rest, ms: performance.now() - t0, latency: latencyOf(samples) };
}

async function authz(cmd: Extract<L7LoadCommand, { op: "authz" }>): Promise<L7LoadResult> {
  const request = Uint8Array.from(atob(cmd.request), (c) => c.charCodeAt(0));
  const connect = () => Deno.connect({ transport: "unix", path: cmd.socket });
  const { tally, ms } = await closed(cmd.concurrency, cmd.durationMs, () => new HttpConn(connect, request));
  return {
    ok: true,
    op: "authz",
    calls: tally.requests,
    allowed: tally.requests - tally.non2xx,
    errors: tally.errors,
    ...(tally.firstError ? { firstError: tally.firstError } : {}),
    ms,
    latency: latencyOf(tally.samples),
  };
}

function run(cmd: L7LoadCommand): Promise<L7LoadResult> {
  switch (cmd.op) {
    case "closed":
      return closedLoop(cmd);
    case "open":
      return openLoop(cmd);
    case "authz":
      return authz(cmd);
  }
}

let buf = "";
for await (const chunk of Deno.stdin.readable.pipeThrough(new TextDecoderStream())) {
  buf += chunk;
  let nl;
  while ((nl = buf.indexOf("\n")) >= 0) {
    const line = buf.slice(0, nl);
    buf = buf.slice(nl + 1);
    let result: L7LoadResult;
    try {
      result = await run(JSON.parse(line) as L7LoadCommand);
    } catch (err) {
      result = { ok: false, error: errorMessage(err) };
    }
    console.log(JSON.stringify(result));
  }
}
