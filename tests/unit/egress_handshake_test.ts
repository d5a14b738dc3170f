/**
 * The egress handshake edge (`lib/egress/handshake.ts`) over real loopback TCP: sniffing HTTP vs SOCKS5,
 * exact SOCKS5 reads (nothing past the request consumed), HTTP `rest`, credentials, refusals with their
 * replies and the close, slow senders cut off at the deadline (short deadlines here; the tests assert
 * the reply and the close, not the timing), and the caps against a connection that never stops sending.
 */

import assert from "node:assert/strict";
import { withPair } from "../../scripts/harness/clients.ts";
import {
  type Handshake,
  type HandshakeConn,
  HandshakeError,
  type HandshakeOptions,
  readHandshake,
} from "../../lib/egress/handshake.ts";
import { renderHttpResponse } from "../../lib/egress/http_proxy.ts";

const text = (s: string) => Uint8Array.from(s, (c) => c.charCodeAt(0));
const show = (b: Uint8Array) => String.fromCharCode(...b);
const concat = (...parts: Uint8Array[]) => {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  parts.reduce((at, p) => (out.set(p, at), at + p.length), 0);
  return out;
};
const delay = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

const BOTH: HandshakeOptions = { protocols: ["http", "socks5"], lingerMs: 200 };
const alice = (c: { user: string; password: string }) => c.user === "alice" && c.password === "s3cret";

/** Reads until EOF (or a reset); a guard fails the test if the server never closes. */
async function readToEnd(conn: Deno.Conn): Promise<Uint8Array> {
  const parts: Uint8Array[] = [];
  let guard: ReturnType<typeof setTimeout> | undefined;
  const hang = new Promise<never>((_, reject) => {
    guard = setTimeout(() => reject(new Error("the server did not close the connection")), 15_000);
  });
  try {
    const buf = new Uint8Array(4096);
    while (true) {
      const n = await Promise.race([conn.read(buf), hang]).catch((error) => {
        if (error instanceof Deno.errors.ConnectionReset) return null;
        throw error;
      });
      if (n === null) return concat(...parts);
      parts.push(buf.slice(0, n));
    }
  } finally {
    clearTimeout(guard);
  }
}

async function readExactly(conn: Deno.Conn, n: number): Promise<Uint8Array> {
  const out = new Uint8Array(n);
  for (let at = 0; at < n;) {
    const got = await conn.read(out.subarray(at));
    if (got === null) assert.fail(`EOF after ${at} of ${n} bytes`);
    at += got;
  }
  return out;
}

/** Runs the handshake on the server end while `client` plays the client; returns both outcomes. */
async function handshake<T>(
  options: HandshakeOptions,
  client: (conn: Deno.TcpConn) => Promise<T>,
  after?: (server: Deno.TcpConn, result: Handshake) => Promise<void>,
): Promise<{ result: Handshake | HandshakeError; client: T }> {
  let out: { result: Handshake | HandshakeError; client: T } | undefined;
  await withPair(async (c, s) => {
    const server = readHandshake(s, options).then(async (result) => {
      await after?.(s, result);
      return result;
    }, (error) => {
      if (!(error instanceof HandshakeError)) throw error;
      return error;
    });
    const clientResult = await client(c);
    out = { result: await server, client: clientResult };
  });
  return out!;
}

function succeeded(result: Handshake | HandshakeError): Handshake {
  if (result instanceof HandshakeError) assert.fail(`handshake failed: ${result.reason}: ${result.message}`);
  return result;
}

function failed(result: Handshake | HandshakeError): HandshakeError {
  if (!(result instanceof HandshakeError)) assert.fail(`expected a failure, got ${JSON.stringify(result)}`);
  return result;
}

Deno.test("HTTP CONNECT on a shared port: the request, and the bytes after the head as rest", async () => {
  const { result } = await handshake(BOTH, async (c) => {
    await c.write(text("CONNECT pg-primary:5432 HTTP/1.1\r\nHost: pg-primary:5432\r\n\r\nHELLO"));
  }, async (s, r) => {
    // Whatever of "HELLO" the handshake did not read is still on the connection.
    assert.equal(r.protocol, "http");
    const rest = r.protocol === "http" ? r.rest : new Uint8Array();
    const more = rest.length < 5 ? await readExactly(s, 5 - rest.length) : new Uint8Array();
    assert.equal(show(concat(rest, more)), "HELLO");
  });
  const ok = succeeded(result);
  assert.equal(ok.protocol, "http");
  assert.deepEqual(ok.request.destination, { host: "pg-primary", kind: "name", port: 5432 });
  assert.equal(ok.user, undefined);
});

Deno.test("SOCKS5 on a shared port: pipelined greeting and request, nothing after them read", async () => {
  const { result, client } = await handshake(BOTH, async (c) => {
    await c.write(
      concat(Uint8Array.of(5, 1, 0), Uint8Array.of(5, 1, 0, 3, 2, 0x64, 0x62, 0x15, 0x38), text("DATA")),
    );
    return await readExactly(c, 2);
  }, async (s) => {
    assert.equal(show(await readExactly(s, 4)), "DATA");
  });
  assert.deepEqual(client, Uint8Array.of(5, 0));
  const ok = succeeded(result);
  assert.deepEqual(ok, {
    protocol: "socks5",
    request: { command: "connect", destination: { host: "db", kind: "name", port: 5432 } },
  });
});

Deno.test("SOCKS5 with username/password: accepted, and the user is reported", async () => {
  const { result, client } = await handshake({ ...BOTH, authenticate: alice }, async (c) => {
    await c.write(Uint8Array.of(5, 2, 0, 2));
    const method = await readExactly(c, 2);
    await c.write(concat(Uint8Array.of(1, 5), text("alice"), Uint8Array.of(6), text("s3cret")));
    const status = await readExactly(c, 2);
    await c.write(Uint8Array.of(5, 1, 0, 1, 100, 64, 0, 7, 0, 80));
    return { method, status };
  });
  assert.deepEqual(client, { method: Uint8Array.of(5, 2), status: Uint8Array.of(1, 0) });
  const ok = succeeded(result);
  assert.equal(ok.user, "alice");
  assert.deepEqual(ok.request.destination, { host: "100.64.0.7", kind: "ipv4", port: 80 });
});

Deno.test("SOCKS5 refusals: the reply, then the close", async (t) => {
  const cases: {
    name: string;
    options: HandshakeOptions;
    send: Uint8Array;
    reply: number[];
    reason: string;
  }[] = [
    {
      name: "wrong password: status 0x01",
      options: { ...BOTH, authenticate: alice },
      send: concat(Uint8Array.of(5, 1, 2, 1, 5), text("alice"), Uint8Array.of(5), text("guess")),
      reply: [5, 2, 1, 1],
      reason: "unauthorized",
    },
    {
      name: "no username/password offered: method 0xFF",
      options: { ...BOTH, authenticate: alice },
      send: Uint8Array.of(5, 1, 0),
      reply: [5, 0xff],
      reason: "unauthorized",
    },
    {
      name: "only username/password offered where none is configured: method 0xFF",
      options: BOTH,
      send: Uint8Array.of(5, 1, 2),
      reply: [5, 0xff],
      reason: "unauthorized",
    },
    {
      name: "BIND: 0x07",
      options: BOTH,
      send: Uint8Array.of(5, 1, 0, 5, 2, 0, 1, 1, 2, 3, 4, 0, 80),
      reply: [5, 0, 5, 7, 0, 1, 0, 0, 0, 0, 0, 0],
      reason: "unsupported",
    },
    {
      name: "address type 9: 0x08",
      options: BOTH,
      send: Uint8Array.of(5, 1, 0, 5, 1, 0, 9, 1, 2, 3),
      reply: [5, 0, 5, 8, 0, 1, 0, 0, 0, 0, 0, 0],
      reason: "unsupported",
    },
    {
      name: "bad domain: 0x01",
      options: BOTH,
      send: concat(Uint8Array.of(5, 1, 0, 5, 1, 0, 3, 9), text("localhost"), Uint8Array.of(0, 0)),
      reply: [5, 0, 5, 1, 0, 1, 0, 0, 0, 0, 0, 0],
      reason: "malformed",
    },
    {
      name: "HTTP on a SOCKS5-only port: no reply",
      options: { protocols: ["socks5"], lingerMs: 200 },
      send: text("GET http://a/ HTTP/1.1\r\n\r\n"),
      reply: [],
      reason: "malformed",
    },
  ];
  for (const c of cases) {
    await t.step(c.name, async () => {
      const { result, client } = await handshake(c.options, async (conn) => {
        await conn.write(c.send);
        return await readToEnd(conn);
      });
      assert.deepEqual(client, Uint8Array.from(c.reply));
      const error = failed(result);
      assert.equal(error.reason, c.reason, error.message);
      assert.equal(error.protocol, "socks5");
    });
  }
});

Deno.test("HTTP credentials: 407 without or with wrong ones, the user with right ones", async () => {
  const head = (auth?: string) =>
    text(`CONNECT a:443 HTTP/1.1\r\n${auth ? `Proxy-Authorization: Basic ${btoa(auth)}\r\n` : ""}\r\n`);
  const options = { ...BOTH, authenticate: alice };
  for (const auth of [undefined, "alice:wrong", "mallory:s3cret", "alice"]) {
    const { result, client } = await handshake(options, async (c) => {
      await c.write(head(auth));
      return await readToEnd(c);
    });
    assert.equal(show(client), show(renderHttpResponse(407, { reason: "proxy authentication required" })));
    assert.ok(show(client).includes('Proxy-Authenticate: Basic realm="tailvoy"\r\n'));
    assert.equal(failed(result).reason, "unauthorized", String(auth));
  }
  const { result } = await handshake(options, (c) => c.write(head("alice:s3cret")));
  assert.equal(succeeded(result).user, "alice");
});

Deno.test("HTTP refusals: the exact reply, then the close, even with more bytes unread", async (t) => {
  const cases: { name: string; options: HandshakeOptions; send: string; reply: string; reason: string }[] = [
    {
      name: "origin-form",
      options: BOTH,
      send: `GET / HTTP/1.1\r\nHost: a\r\n\r\n${"body".repeat(2500)}`,
      reply: show(
        renderHttpResponse(400, { reason: "this is a proxy: send an absolute http:// URL, or CONNECT" }),
      ),
      reason: "malformed",
    },
    {
      name: "SOCKS5 bytes on an HTTP-only port",
      options: { protocols: ["http"], lingerMs: 200 },
      send: "\x05\x01\x00",
      reply: show(renderHttpResponse(400, { reason: "not an HTTP request" })),
      reason: "malformed",
    },
    {
      name: "head over the cap",
      options: { ...BOTH, maxHeadBytes: 1024 },
      send: `GET http://a/ HTTP/1.1\r\n${
        "X-Pad: yyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyy\r\n".repeat(40)
      }\r\n`,
      reply: show(renderHttpResponse(431, { reason: "request head too large" })),
      reason: "too-large",
    },
    {
      name: "unknown method",
      options: BOTH,
      send: "BREW http://pot/ HTTP/1.1\r\n\r\n",
      reply: show(renderHttpResponse(501, { reason: "method not implemented" })),
      reason: "unsupported",
    },
  ];
  for (const c of cases) {
    await t.step(c.name, async () => {
      const { result, client } = await handshake(c.options, async (conn) => {
        await conn.write(text(c.send));
        return await readToEnd(conn);
      });
      assert.equal(show(client), c.reply);
      const error = failed(result);
      assert.equal(error.reason, c.reason, error.message);
      assert.equal(error.protocol, "http");
    });
  }
});

/** Sends `head` one byte at a time, `everyMs` apart, until told to stop or the server goes away. */
function dribble(conn: Deno.Conn, head: Uint8Array, everyMs: number): { stop: () => Promise<void> } {
  let stopped = false;
  const done = (async () => {
    for (let i = 0; !stopped; i++) {
      try {
        await conn.write(head.subarray(i % head.length, i % head.length + 1));
      } catch {
        return;
      }
      await delay(everyMs);
    }
  })();
  return {
    stop: () => {
      stopped = true;
      return done;
    },
  };
}

Deno.test("slowloris over HTTP: 408 at the deadline, then the close", async () => {
  const { result, client } = await handshake({ ...BOTH, timeoutMs: 300 }, async (c) => {
    const sender = dribble(c, text("GET http://a/ HTTP/1.1\r\nX-Slow: "), 20);
    const first = await readExactly(c, 12);
    await sender.stop();
    return show(concat(first, await readToEnd(c)));
  });
  assert.equal(client, show(renderHttpResponse(408)));
  const error = failed(result);
  assert.equal(error.reason, "timeout");
  assert.equal(error.protocol, "http");
  assert.match(error.message, /within 300 ms/);
});

Deno.test("slowloris over SOCKS5: closed at the deadline without a reply", async () => {
  const { result, client } = await handshake({ ...BOTH, timeoutMs: 300 }, async (c) => {
    await c.write(Uint8Array.of(5, 3, 0)); // two of three methods
    return await readToEnd(c);
  });
  assert.equal(client.length, 0);
  const error = failed(result);
  assert.equal(error.reason, "timeout");
  assert.equal(error.protocol, "socks5");
  assert.equal(error.reply, undefined);
});

Deno.test("a silent client: nothing on a shared port, 408 on an HTTP-only one", async () => {
  const shared = await handshake({ ...BOTH, timeoutMs: 200 }, readToEnd);
  assert.equal(shared.client.length, 0);
  assert.equal(failed(shared.result).reason, "timeout");
  assert.equal(failed(shared.result).protocol, undefined);
  const http = await handshake({ protocols: ["http"], timeoutMs: 200, lingerMs: 200 }, readToEnd);
  assert.equal(show(http.client), show(renderHttpResponse(408)));
  assert.equal(failed(http.result).reason, "timeout");
});

Deno.test("a client that leaves mid-handshake: closed, no reply", async () => {
  for (const send of [text("CONNECT a:1 HTTP/1.1\r\n"), Uint8Array.of(5, 1, 0, 5, 1, 0, 1, 100)]) {
    const { result } = await handshake(BOTH, async (c) => {
      await c.write(send);
      await c.closeWrite();
      return await readToEnd(c);
    });
    const error = failed(result);
    assert.equal(error.reason, "closed", error.message);
    assert.equal(error.reply, undefined);
  }
});

/** A connection that sends `pattern` forever, recording how much the handshake asked for and read. */
class Firehose implements HandshakeConn {
  largestRead = 0;
  readBeforeReply = 0;
  written: Uint8Array[] = [];
  closed = false;
  #sent = 0;
  constructor(readonly pattern: Uint8Array, readonly prefix: Uint8Array = new Uint8Array()) {}
  read(p: Uint8Array): Promise<number> {
    this.largestRead = Math.max(this.largestRead, p.length);
    for (let i = 0; i < p.length; i++, this.#sent++) {
      const at = this.#sent - this.prefix.length;
      p[i] = at < 0 ? this.prefix[this.#sent] : this.pattern[at % this.pattern.length];
    }
    if (this.written.length === 0) this.readBeforeReply += p.length;
    return Promise.resolve(p.length);
  }
  write(p: Uint8Array): Promise<number> {
    this.written.push(p.slice());
    return Promise.resolve(p.length);
  }
  closeWrite(): Promise<void> {
    return Promise.resolve();
  }
  close(): void {
    this.closed = true;
  }
}

Deno.test("caps: an endless sender is refused after the cap, having been read no further", async () => {
  const cases: [string, Uint8Array, Uint8Array, number][] = [
    // A request line, then header lines forever: 431 at the 16 KiB head cap.
    ["endless headers", text("GET http://a/ HTTP/1.1\r\n"), text("X-Pad: yyyyyyyyyyyyyyyyyyyyy\r\n"), 431],
    // One endless request line: 414 once past the 8 KiB line cap.
    ["endless request line", new Uint8Array(), text("GETXXXXXXXXXXXXXXXXXXXX"), 414],
  ];
  for (const [name, prefix, pattern, status] of cases) {
    const conn = new Firehose(pattern, prefix);
    const error = await readHandshake(conn, { protocols: ["http"] }).then(
      () => assert.fail(`${name}: handshake succeeded`),
      (e) => e,
    );
    assert.ok(error instanceof HandshakeError, String(error));
    assert.equal(error.reason, "too-large", name);
    assert.ok(show(conn.written[0]).startsWith(`HTTP/1.1 ${status} `), name);
    assert.ok(
      conn.readBeforeReply <= 16 * 1024,
      `${name}: read ${conn.readBeforeReply} bytes before replying`,
    );
    assert.ok(conn.largestRead <= 16 * 1024, `${name}: a read of ${conn.largestRead} bytes`);
    assert.ok(conn.closed, name);
  }
  // SOCKS5 messages are read exactly, at most one domain request's worth at a time.
  const socks = new Firehose(Uint8Array.of(5, 0xff));
  const error = await readHandshake(socks, { protocols: ["socks5"] }).catch((e) => e);
  assert.equal(error.reason, "unauthorized"); // 255 methods, none of them 0x00
  assert.equal(socks.readBeforeReply, 2 + 255);
  assert.deepEqual(socks.written[0], Uint8Array.of(5, 0xff));
});

Deno.test("bad options are programming errors, thrown before any I/O", async () => {
  const conn = new Firehose(text("x"));
  await assert.rejects(readHandshake(conn, { protocols: [] }), RangeError);
  await assert.rejects(readHandshake(conn, { protocols: ["http"], timeoutMs: 0 }), RangeError);
  await assert.rejects(readHandshake(conn, { protocols: ["http"], maxHeadBytes: 10 }), RangeError);
  assert.equal(conn.largestRead, 0);
});
