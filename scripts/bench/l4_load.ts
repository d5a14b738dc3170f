/**
 * The L4 bench's load generator, in its own process so it shares no event loop with the proxy or the
 * backend. Reads {@link LoadCommand}s as JSON lines on stdin, runs each, and answers one
 * {@link LoadResult} line on stdout. Exits when stdin closes.
 *
 * @module
 */

import { encodeProxyV2 } from "../../lib/proxy_protocol/mod.ts";
import { closeQuietly } from "../../lib/util/async.ts";
import { writeAll } from "../../lib/util/bytes.ts";
import {
  type ConnectSpec,
  type LoadCommand,
  type LoadResult,
  type ProxyHeaderSpec,
  REQ,
} from "./l4_protocol.ts";
import { errorMessage } from "../../lib/util/error.ts";
import { socks5Connect } from "../harness/socks5.ts";
import { httpConnect } from "../harness/http_connect.ts";
import { delay } from "../../lib/util/async.ts";

/** Size of each write of the throughput rows: large, so per-op overhead is not what we measure. */
const WRITE_SIZE = 256 * 1024;
const payload = new Uint8Array(WRITE_SIZE);
/** How long one held connection may take to be answered. */
const HOLD_TIMEOUT_MS = 5000;

async function readByte(conn: Deno.Conn, buf: Uint8Array): Promise<void> {
  const n = await conn.read(buf.subarray(0, 1));
  if (n === null) throw new Error("closed before the response byte");
}

/** The request: PROXY v2 header (what tailscaled sends; a random source port like a real peer's) + body. */
function request(proxy: ProxyHeaderSpec | undefined, body: Uint8Array): Uint8Array {
  if (!proxy) return body;
  const header = encodeProxyV2({
    command: "PROXY",
    transport: "tcp",
    source: { address: proxy.source, port: 1024 + Math.floor(Math.random() * 64000) },
    destination: { address: proxy.destination, port: proxy.destinationPort },
  });
  const out = new Uint8Array(header.length + body.length);
  out.set(header);
  out.set(body, header.length);
  return out;
}

/** A connection to `to.port`, through the proxy handshake of `to.tunnel` when there is one. */
async function connect(to: ConnectSpec): Promise<Deno.TcpConn> {
  const proxy = { hostname: "127.0.0.1", port: to.port };
  const conn = to.tunnel?.kind === "socks5"
    ? await socks5Connect(proxy, to.tunnel)
    : to.tunnel?.kind === "http"
    ? await httpConnect(proxy, to.tunnel)
    : await Deno.connect(proxy);
  conn.setNoDelay(true);
  return conn;
}

async function stream(to: ConnectSpec, bytes: number): Promise<void> {
  const conn = await connect(to);
  try {
    const head = new Uint8Array(9);
    head[0] = REQ.sink;
    new DataView(head.buffer).setBigUint64(1, BigInt(bytes));
    await writeAll(conn, request(to.proxy, head));
    let left = bytes;
    while (left > 0) {
      const n = await conn.write(left >= WRITE_SIZE ? payload : payload.subarray(0, left));
      left -= n;
    }
    await readByte(conn, head);
  } finally {
    closeQuietly(conn);
  }
}

/**
 * One "new connection": connect (and proxy handshake), request byte (after the PROXY header), response
 * byte, close (see {@link ConnectSpec.callerCloses} for which side first).
 */
async function ping(to: ConnectSpec): Promise<number> {
  const t0 = performance.now();
  const conn = await connect(to);
  const buf = new Uint8Array(16);
  try {
    await writeAll(conn, request(to.proxy, new Uint8Array([to.callerCloses ? REQ.hold : REQ.ping])));
    await readByte(conn, buf);
    const ms = performance.now() - t0;
    if (to.callerCloses) return ms;
    // The server closes first (its side keeps TIME_WAIT, not our ephemeral ports): wait for its FIN.
    while (await conn.read(buf) !== null) { /* nothing more expected */ }
    return ms;
  } finally {
    closeQuietly(conn);
  }
}

const held: Deno.Conn[] = [];

/** `count` 1-byte round trips on one open echo connection per target, interleaved; see the command. */
async function roundTrips(targets: ConnectSpec[], count: number, intervalMs: number): Promise<number[][]> {
  const conns: Deno.TcpConn[] = [];
  try {
    const buf = new Uint8Array(1);
    for (const to of targets) {
      const conn = await connect(to);
      conns.push(conn);
      await writeAll(conn, request(to.proxy, new Uint8Array([REQ.echo, 0x2e])));
      await readByte(conn, buf); // the path is open end to end
    }
    const latenciesMs: number[][] = targets.map(() => []);
    for (let i = 0; i < count; i++) {
      for (let j = 0; j < conns.length; j++) {
        const k = (i + j) % conns.length;
        const t0 = performance.now();
        await writeAll(conns[k], buf);
        await readByte(conns[k], buf);
        latenciesMs[k].push(performance.now() - t0);
      }
      await delay(intervalMs);
    }
    return latenciesMs;
  } finally {
    for (const conn of conns) closeQuietly(conn);
  }
}

async function run(cmd: LoadCommand): Promise<LoadResult> {
  switch (cmd.op) {
    case "throughput": {
      const t0 = performance.now();
      await Promise.all(Array.from({ length: cmd.streams }, () => stream(cmd, cmd.bytes)));
      return { ok: true, op: "throughput", ms: performance.now() - t0, bytes: cmd.bytes * cmd.streams };
    }
    case "latency": {
      const latenciesMs: number[][] = cmd.targets.map(() => []);
      const errors = cmd.targets.map(() => 0);
      const firstErrors: (string | null)[] = cmd.targets.map(() => null);
      for (let i = 0; i < cmd.count; i++) {
        for (let j = 0; j < cmd.targets.length; j++) {
          // Rotate who goes first, so no target always follows the same one.
          const k = (i + j) % cmd.targets.length;
          try {
            latenciesMs[k].push(await ping(cmd.targets[k]));
          } catch (err) {
            errors[k]++;
            firstErrors[k] ??= errorMessage(err);
          }
        }
      }
      return { ok: true, op: "latency", latenciesMs, errors, firstErrors };
    }
    case "roundtrip":
      return {
        ok: true,
        op: "roundtrip",
        latenciesMs: await roundTrips(cmd.targets, cmd.count, cmd.intervalMs),
      };
    case "rate": {
      let done = 0;
      let errors = 0;
      let firstError: string | undefined;
      const t0 = performance.now();
      const deadline = t0 + cmd.durationMs;
      await Promise.all(Array.from({ length: cmd.concurrency }, async () => {
        while (performance.now() < deadline) {
          try {
            await ping(cmd);
            done++;
          } catch (err) {
            errors++;
            firstError ??= errorMessage(err);
          }
        }
      }));
      return { ok: true, op: "rate", ms: performance.now() - t0, done, errors, firstError };
    }
    case "hold": {
      let errors = 0;
      let firstError: string | undefined;
      let next = 0;
      const t0 = performance.now();
      await Promise.all(Array.from({ length: cmd.concurrency }, async () => {
        const buf = new Uint8Array(1);
        while (next < cmd.count) {
          next++;
          let conn: Deno.TcpConn | undefined;
          try {
            conn = await connect(cmd);
            await writeAll(conn, request(cmd.proxy, new Uint8Array([REQ.hold])));
            // The backend answered: the whole path is open. A proxy that stopped accepting must not
            // hang the bench: give up on this connection after a while.
            const c = conn;
            const timer = setTimeout(() => closeQuietly(c), HOLD_TIMEOUT_MS);
            try {
              await readByte(conn, buf);
            } finally {
              clearTimeout(timer);
            }
            held.push(conn);
          } catch (err) {
            if (conn) closeQuietly(conn);
            errors++;
            firstError ??= errorMessage(err);
          }
        }
      }));
      return { ok: true, op: "hold", ms: performance.now() - t0, open: held.length, errors, firstError };
    }
    case "release": {
      const closed = held.length;
      for (const conn of held.splice(0)) closeQuietly(conn);
      return { ok: true, op: "release", closed };
    }
  }
}

if (import.meta.main) {
  const out = new TextEncoder();
  let buffered = "";
  for await (const chunk of Deno.stdin.readable.pipeThrough(new TextDecoderStream())) {
    buffered += chunk;
    let nl;
    while ((nl = buffered.indexOf("\n")) >= 0) {
      const line = buffered.slice(0, nl);
      buffered = buffered.slice(nl + 1);
      let result: LoadResult;
      try {
        result = await run(JSON.parse(line) as LoadCommand);
      } catch (err) {
        result = { ok: false, error: errorMessage(err) };
      }
      await Deno.stdout.write(out.encode(JSON.stringify(result) + "\n"));
    }
  }
  for (const conn of held) closeQuietly(conn);
}
