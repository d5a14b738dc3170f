/**
 * The LocalAPI dial client against a scripted unix-socket server, only for answers the real tailscaled
 * of the tailnet in a box cannot be made to give on demand: the tailnet bytes in the same write as the
 * 101 head (real tailscaled does it only when the node's first bytes race the head), no answer at all
 * (real: an offline node), an endless or malformed head, a wrong upgrade, a closed socket. The real
 * answers (101, refused, not on the tailnet) are checked in tests/e2e/localapi_dial_test.ts.
 */

import assert from "node:assert/strict";
import { join } from "node:path";
import { LocalApiClient, LocalApiError, MAX_DIAL_HEAD_BYTES } from "../../lib/localapi/mod.ts";
import { parseDialAnswer } from "../../lib/localapi/dial.ts";

const enc = new TextEncoder();
const dec = new TextDecoder();

const UPGRADED = "HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: ts-dial\r\n\r\n";

/**
 * A unix-socket server that reads one request head and runs `answer` on the connection; `hang` settles
 * when the server is disposed (for answers that never come).
 */
async function scripted(answer: (conn: Deno.UnixConn, hang: Promise<void>) => Promise<void>) {
  const released = Promise.withResolvers<void>();
  const dir = await Deno.makeTempDir({ prefix: "tailvoy-dial-test-" });
  const socket = join(dir, "tailscaled.sock");
  const listener = Deno.listen({ transport: "unix", path: socket });
  const requests: string[] = [];
  const served = (async () => {
    for await (const conn of listener) {
      let request = "";
      const buf = new Uint8Array(4096);
      while (!request.includes("\r\n\r\n")) {
        const n = await conn.read(buf);
        if (n === null) break;
        request += dec.decode(buf.subarray(0, n));
      }
      requests.push(request);
      await answer(conn, released.promise).catch(() => {});
    }
  })();
  return {
    socket,
    requests,
    async [Symbol.asyncDispose]() {
      released.resolve();
      listener.close();
      await served.catch(() => {});
      await Deno.remove(dir, { recursive: true });
    },
  };
}

async function readAll(conn: Deno.Conn, chunk = 4096): Promise<string> {
  let out = "";
  const buf = new Uint8Array(chunk);
  while (true) {
    const n = await conn.read(buf);
    if (n === null) return out;
    out += dec.decode(buf.subarray(0, n));
  }
}

function rejectsWith(kind: string, pattern?: RegExp) {
  return (err: unknown) => {
    assert.ok(err instanceof LocalApiError, `expected a LocalApiError, got ${err}`);
    assert.equal(err.kind, kind, err.message);
    if (pattern) assert.match(err.message, pattern);
    return true;
  };
}

Deno.test("dial: the request carries the ts-dial upgrade and the canonical IP; bytes sent with the 101 are kept", async () => {
  await using server = await scripted(async (conn) => {
    // The head and the node's first bytes in one write, as when the backend talks first.
    await conn.write(enc.encode(UPGRADED + "BANNER"));
    await conn.write(enc.encode("+later"));
    conn.close();
  });
  using api = new LocalApiClient(server.socket);
  const conn = await api.dial("FD7A:115C:A1E0:0:0:0:0:2", 8080);
  // A 1-byte buffer: the kept bytes come out across several reads, in order.
  assert.equal(await readAll(conn, 1), "BANNER+later");
  conn.close();
  assert.equal(conn.target, "[fd7a:115c:a1e0::2]:8080");
  const request = server.requests[0];
  assert.match(request, /^POST \/localapi\/v0\/dial HTTP\/1\.1\r\n/);
  for (
    const header of [
      "Host: local-tailscaled.sock",
      "Connection: upgrade",
      "Upgrade: ts-dial",
      "Dial-Host: fd7a:115c:a1e0::2",
      "Dial-Port: 8080",
      "Dial-Network: tcp",
    ]
  ) assert.ok(request.includes(`\r\n${header}\r\n`), `missing ${header} in ${request}`);
  assert.ok(!/origin|referer/i.test(request));
});

Deno.test("dial: the readable stream also starts with the bytes sent with the 101", async () => {
  await using server = await scripted(async (conn) => {
    await conn.write(enc.encode(UPGRADED + "first"));
    await conn.write(enc.encode("-second"));
    conn.close();
  });
  using api = new LocalApiClient(server.socket);
  const conn = await api.dial("100.64.0.2", 80);
  assert.equal(await new Response(conn.readable).text(), "first-second");
});

Deno.test("dial: no answer within the timeout is a timeout naming the target", async () => {
  await using server = await scripted(async (conn, hang) => {
    await hang;
    conn.close();
  });
  using api = new LocalApiClient(server.socket);
  await assert.rejects(
    api.dial("100.64.0.9", 22, { timeoutMs: 100 }),
    rejectsWith("timeout", /100\.64\.0\.9:22/),
  );
});

Deno.test("dial: an abort gives up at once with the signal's reason", async () => {
  await using server = await scripted(async (conn, hang) => {
    await hang;
    conn.close();
  });
  using api = new LocalApiClient(server.socket);
  const abort = new AbortController();
  const dialing = api.dial("100.64.0.9", 22, { signal: abort.signal });
  setTimeout(() => abort.abort(new Error("caller went away")), 50);
  await assert.rejects(dialing, /caller went away/);
});

Deno.test("dial: a head without end beyond the cap is refused", async () => {
  await using server = await scripted(async (conn, hang) => {
    await conn.write(enc.encode("HTTP/1.1 101 Switching Protocols\r\n"));
    const filler = enc.encode(`X-Filler: ${"a".repeat(1000)}\r\n`);
    for (let sent = 0; sent <= MAX_DIAL_HEAD_BYTES * 2; sent += filler.length) await conn.write(filler);
    await hang;
    conn.close();
  });
  using api = new LocalApiClient(server.socket);
  await assert.rejects(api.dial("100.64.0.2", 80), rejectsWith("bad-response", /16384 bytes/));
});

Deno.test("dial: a wrong upgrade, a bad status line or a closed socket is a bad response", async () => {
  for (
    const [answer, pattern] of [
      ["HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n", /websocket/],
      ["SSH-2.0-OpenSSH\r\n\r\n", /status line/],
      ["", /closed the connection/],
    ] as const
  ) {
    await using server = await scripted(async (conn) => {
      await conn.write(enc.encode(answer));
      conn.close();
    });
    using api = new LocalApiClient(server.socket);
    await assert.rejects(api.dial("100.64.0.2", 80), rejectsWith("bad-response", pattern));
  }
});

Deno.test("dial: a name, a bracketed address or a bad port is refused before any request", async () => {
  using api = new LocalApiClient("/nonexistent/tailscaled.sock");
  await assert.rejects(api.dial("alice", 80), TypeError);
  await assert.rejects(api.dial("[fd7a::1]", 80), TypeError);
  await assert.rejects(api.dial("100.64.0.2\r\nX: y", 80), TypeError);
  await assert.rejects(api.dial("100.64.0.2", 0), RangeError);
  await assert.rejects(api.dial("100.64.0.2", 65536), RangeError);
});

Deno.test("dial: a missing socket is socket-missing", async () => {
  using api = new LocalApiClient("/nonexistent/tailscaled.sock");
  await assert.rejects(api.dial("100.64.0.2", 80), rejectsWith("socket-missing", /\/nonexistent/));
});

Deno.test("parseDialAnswer: waits for the capped body of an error answer", () => {
  const head = "HTTP/1.1 502 Bad Gateway\r\nContent-Length: 20\r\n\r\n";
  assert.equal(parseDialAnswer(enc.encode(head + "dial failure")), undefined);
  const done = parseDialAnswer(enc.encode(head + "dial failure: x y z\n"));
  assert.equal(done?.status, 502);
  assert.equal(dec.decode(done?.rest), "dial failure: x y z\n");
});
