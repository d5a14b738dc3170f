/**
 * The SOCKS5 parsers and reply builders (`lib/egress/socks5.ts`): every refusal with the exact reply
 * bytes, exact `need` at every step, the three address types, and every REP code.
 */

import assert from "node:assert/strict";
import {
  parseSocks5Auth,
  parseSocks5Greeting,
  parseSocks5Request,
  renderSocks5AuthStatus,
  renderSocks5Method,
  renderSocks5Reply,
  selectSocks5Method,
  SOCKS5_REPLY,
  type Socks5Problem,
  type Socks5Result,
} from "../../lib/egress/socks5.ts";

const bytes = (...parts: (number | string | number[])[]) =>
  Uint8Array.from(
    parts.flatMap((p) =>
      typeof p === "number" ? [p] : typeof p === "string" ? [...p].map((c) => c.charCodeAt(0)) : p
    ),
  );

function refused<T>(result: Socks5Result<T>): Socks5Problem {
  if (!("error" in result)) assert.fail(`expected a refusal, got ${JSON.stringify(result)}`);
  assert.ok(result.error.message.length > 0);
  return result.error;
}

/** The needs reported while feeding `message` exactly as asked, and the final result. */
function feed<T>(parse: (b: Uint8Array) => Socks5Result<T>, message: Uint8Array) {
  const needs: number[] = [];
  let length = 0;
  while (true) {
    const result = parse(message.subarray(0, length));
    if (!("need" in result)) return { needs, result, length };
    needs.push(result.need);
    length += result.need;
    assert.ok(length <= message.length, `asked for ${length} bytes of a ${message.length}-byte message`);
  }
}

const FAILURE_REPLY = [5, 1, 0, 1, 0, 0, 0, 0, 0, 0];

Deno.test("greeting: methods, read exactly", () => {
  const { needs, result, length } = feed(parseSocks5Greeting, bytes(5, 3, 0, 2, 0x80, 0xaa));
  assert.deepEqual(needs, [2, 3]);
  assert.deepEqual(result, { methods: [0, 2, 0x80], consumed: 5 });
  assert.equal(length, 5);
  assert.deepEqual(parseSocks5Greeting(bytes(5)), { need: 1 });
});

Deno.test("greeting refusals: not SOCKS5 gets no reply, no methods gets 0xFF", () => {
  for (const first of [4, 0, 0x47, 0x16]) {
    const problem = refused(parseSocks5Greeting(bytes(first, 1, 0)));
    assert.equal(problem.reply, undefined);
    assert.equal(problem.refusal, "malformed");
  }
  const none = refused(parseSocks5Greeting(bytes(5, 0)));
  assert.deepEqual(none.reply, bytes(5, 0xff));
  assert.equal(none.refusal, "malformed");
});

Deno.test("method selection and its reply", () => {
  assert.equal(selectSocks5Method([0, 2], { authRequired: false }), 0x00);
  assert.equal(selectSocks5Method([0, 2], { authRequired: true }), 0x02);
  assert.equal(selectSocks5Method([2], { authRequired: false }), 0xff);
  assert.equal(selectSocks5Method([0, 1], { authRequired: true }), 0xff);
  assert.deepEqual(renderSocks5Method(0x02), bytes(5, 2));
  assert.deepEqual(renderSocks5Method(0xff), bytes(5, 0xff));
});

Deno.test("auth: RFC 1929 credentials, read exactly", () => {
  const { needs, result } = feed(parseSocks5Auth, bytes(1, 5, "alice", 6, "s3:cr3", 0xee));
  assert.deepEqual(needs, [2, 6, 6]);
  assert.deepEqual(result, { credentials: { user: "alice", password: "s3:cr3" }, consumed: 14 });
  const utf8 = new TextEncoder().encode("zoë");
  assert.deepEqual(parseSocks5Auth(bytes(1, utf8.length, [...utf8], 0)), {
    credentials: { user: "zoë", password: "" },
    consumed: 2 + utf8.length + 1,
  });
  assert.deepEqual(renderSocks5AuthStatus(true), bytes(1, 0));
});

Deno.test("auth refusals all answer status 0x01", () => {
  const cases: [string, Uint8Array][] = [
    ["version 5", bytes(5, 1, "a", 1, "b")],
    ["version 0", bytes(0, 1, "a", 1, "b")],
    ["empty user", bytes(1, 0, 1, "b")],
    ["user not UTF-8", bytes(1, 1, 0xff, 1, "b")],
    ["password not UTF-8", bytes(1, 1, "a", 2, 0xc3, 0x28)],
    ["control character", bytes(1, 2, "a", 0, 1, "b")],
  ];
  for (const [name, message] of cases) {
    const problem = refused(parseSocks5Auth(message));
    assert.deepEqual(problem.reply, bytes(1, 1), name);
    assert.equal(problem.refusal, "unauthorized", name);
  }
});

Deno.test("request: IPv4, IPv6 and domain CONNECT, read exactly", () => {
  const v4 = feed(parseSocks5Request, bytes(5, 1, 0, 1, 100, 64, 0, 7, 0x21, 0x03, 0xff));
  assert.deepEqual(v4.needs, [4, 6]);
  assert.deepEqual(v4.result, {
    request: { command: "connect", destination: { host: "100.64.0.7", kind: "ipv4", port: 8451 } },
    consumed: 10,
  });
  const v6 = feed(
    parseSocks5Request,
    bytes(5, 1, 0, 4, [0xfd, 0x7a, 0x11, 0x5c, 0xa1, 0xe0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1], 0x01, 0xbb),
  );
  assert.deepEqual(v6.needs, [4, 18]);
  assert.deepEqual(v6.result, {
    request: { command: "connect", destination: { host: "fd7a:115c:a1e0::1", kind: "ipv6", port: 443 } },
    consumed: 22,
  });
  const name = feed(parseSocks5Request, bytes(5, 1, 0, 3, 11, "PG-Primary.", 0x15, 0x38));
  assert.deepEqual(name.needs, [4, 1, 13]);
  assert.deepEqual(name.result, {
    request: { command: "connect", destination: { host: "pg-primary", kind: "name", port: 5432 } },
    consumed: 18,
  });
  // IP text in a domain is the IP; canonical form.
  assert.deepEqual(parseSocks5Request(bytes(5, 1, 0, 3, 14, "::FFFF:1.2.3.4", 0, 80)), {
    request: { command: "connect", destination: { host: "::ffff:1.2.3.4", kind: "ipv6", port: 80 } },
    consumed: 21,
  });
});

Deno.test("request refusals: the exact reply, after the whole request when its length is known", () => {
  const cases: [string, Uint8Array, number[], string][] = [
    ["BIND", bytes(5, 2, 0, 1, 1, 2, 3, 4, 0, 80), [5, 7, 0, 1, 0, 0, 0, 0, 0, 0], "unsupported"],
    ["UDP ASSOCIATE", bytes(5, 3, 0, 3, 1, "a", 0, 80), [5, 7, 0, 1, 0, 0, 0, 0, 0, 0], "unsupported"],
    ["unknown command", bytes(5, 9, 0, 1, 1, 2, 3, 4, 0, 80), [5, 7, 0, 1, 0, 0, 0, 0, 0, 0], "unsupported"],
    ["address type 2", bytes(5, 1, 0, 2), [5, 8, 0, 1, 0, 0, 0, 0, 0, 0], "unsupported"],
    ["address type 0xff", bytes(5, 1, 0, 0xff), [5, 8, 0, 1, 0, 0, 0, 0, 0, 0], "unsupported"],
    ["version 4", bytes(4, 1, 0, 1), FAILURE_REPLY, "malformed"],
    ["reserved byte set", bytes(5, 1, 1, 1), FAILURE_REPLY, "malformed"],
    ["port 0", bytes(5, 1, 0, 1, 1, 2, 3, 4, 0, 0), FAILURE_REPLY, "malformed"],
    ["empty domain", bytes(5, 1, 0, 3, 0), FAILURE_REPLY, "malformed"],
    ["domain with underscore", bytes(5, 1, 0, 3, 3, "a_b", 0, 80), FAILURE_REPLY, "malformed"],
    ["domain with NUL", bytes(5, 1, 0, 3, 3, "a", 0, "b", 0, 80), FAILURE_REPLY, "malformed"],
    ["domain legacy IPv4", bytes(5, 1, 0, 3, 5, "127.1", 0, 80), FAILURE_REPLY, "malformed"],
    ["domain bracketed IPv6", bytes(5, 1, 0, 3, 5, "[::1]", 0, 80), FAILURE_REPLY, "malformed"],
    ["domain with port", bytes(5, 1, 0, 3, 4, "a:80", 0, 80), FAILURE_REPLY, "malformed"],
  ];
  for (const [name, message, reply, refusal] of cases) {
    const problem = refused(parseSocks5Request(message));
    assert.deepEqual(problem.reply, Uint8Array.from(reply), name);
    assert.equal(problem.refusal, refusal, name);
    // Every prefix of a refused request that could still be completed asks for more, or is refused early
    // only where the length is unknown (the address type) or the header is already wrong.
    for (let cut = 0; cut < message.length; cut++) {
      const early = parseSocks5Request(message.subarray(0, cut));
      if ("error" in early) assert.ok(cut >= 4, `${name}: refused at ${cut} bytes`);
    }
  }
  // An unsupported command is answered only once the whole request is in, so nothing is left unread.
  assert.deepEqual(parseSocks5Request(bytes(5, 2, 0, 3, 4, "ab")), { need: 4 });
});

Deno.test("replies: every REP code, bound IPv4/IPv6, default 0.0.0.0:0", () => {
  const codes = Object.values(SOCKS5_REPLY);
  assert.deepEqual(codes, [0, 1, 2, 3, 4, 5, 6, 7, 8]);
  for (const code of codes) {
    assert.deepEqual(renderSocks5Reply(code), bytes(5, code, 0, 1, 0, 0, 0, 0, 0, 0));
  }
  assert.deepEqual(
    renderSocks5Reply(SOCKS5_REPLY.succeeded, { address: "100.64.0.1", port: 40000 }),
    bytes(5, 0, 0, 1, 100, 64, 0, 1, 0x9c, 0x40),
  );
  assert.deepEqual(
    renderSocks5Reply(SOCKS5_REPLY.succeeded, { address: "fd7a:115c:a1e0::1", port: 443 }),
    bytes(5, 0, 0, 4, [0xfd, 0x7a, 0x11, 0x5c, 0xa1, 0xe0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1], 1, 0xbb),
  );
  assert.throws(() => renderSocks5Reply(0, { address: "pg-primary", port: 1 }), TypeError);
  assert.throws(() => renderSocks5Reply(0, { address: "1.2.3.4", port: 70000 }), TypeError);
});
