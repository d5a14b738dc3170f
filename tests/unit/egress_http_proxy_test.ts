/**
 * The HTTP proxy request parser (`lib/egress/http_proxy.ts`): every refusal with the exact reply bytes,
 * CONNECT and absolute-form requests, the forwarded head, Basic credentials, caps and incremental input.
 */

import assert from "node:assert/strict";
import {
  basicCredentials,
  CONNECT_ESTABLISHED,
  forwardHead,
  type HttpErrorStatus,
  type HttpParseOptions,
  type HttpProxyRequest,
  parseHttpProxyRequest,
  renderHttpProblem,
  renderHttpResponse,
} from "../../lib/egress/http_proxy.ts";

const latin1 = (s: string) => Uint8Array.from(s, (c) => c.charCodeAt(0));
const show = (b: Uint8Array) => String.fromCharCode(...b);

function parsed(head: string, options?: HttpParseOptions): { request: HttpProxyRequest; consumed: number } {
  const result = parseHttpProxyRequest(latin1(head), options);
  if (!("request" in result)) assert.fail(`expected a request, got ${JSON.stringify(result)}`);
  return result;
}

/** The reply the proxy must send: status line, extra headers, the fixed ones, the body. */
function reply(statusLine: string, reason: string, extra: string[] = []): string {
  const body = `tailvoy egress: ${reason}\n`;
  return [
    `HTTP/1.1 ${statusLine}`,
    ...extra,
    "Content-Type: text/plain; charset=utf-8",
    `Content-Length: ${body.length}`,
    "Connection: close",
    "",
    body,
  ].join("\r\n");
}

Deno.test("reply bytes are exactly the status line, fixed headers and a one-line body", () => {
  assert.equal(
    show(renderHttpResponse(400, { reason: "invalid request line" })),
    "HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 37\r\n" +
      "Connection: close\r\n\r\ntailvoy egress: invalid request line\n",
  );
  assert.equal(
    show(renderHttpResponse(407)),
    'HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic realm="tailvoy"\r\n' +
      "Content-Type: text/plain; charset=utf-8\r\nContent-Length: 46\r\nConnection: close\r\n\r\n" +
      "tailvoy egress: proxy authentication required\n",
  );
  assert.equal(
    show(renderHttpResponse(403, { reason: "destination not allowed", host: "db.corp.internal:5432" })),
    reply("403 Forbidden", "destination not allowed: db.corp.internal:5432"),
  );
  assert.equal(show(renderHttpResponse(408)), reply("408 Request Timeout", "request timeout"));
  assert.equal(show(renderHttpResponse(502)), reply("502 Bad Gateway", "bad gateway"));
  assert.equal(show(renderHttpResponse(504)), reply("504 Gateway Timeout", "gateway timeout"));
  assert.equal(show(CONNECT_ESTABLISHED), "HTTP/1.1 200 Connection established\r\n\r\n");
});

Deno.test("reply bodies never carry raw client bytes: host and reason are sanitised", () => {
  const evil = "a.example\r\nSet-Cookie: x=<script>\u00e9";
  const text = show(renderHttpResponse(403, { reason: "not allowed\r\nX: \u2028", host: evil }));
  assert.equal(
    text,
    reply("403 Forbidden", "not allowed??X: ?: a.example??Set-Cookie:?x??script??"),
  );
  assert.match(text, /^[\x20-\x7e\r\n]*$/);
  assert.equal(renderHttpResponse(403, { host: "h".repeat(5000) }).length < 600, true);
});

const OVERSIZE_LINE = `GET http://a/${"x".repeat(9000)} HTTP/1.1\r\n\r\n`;
const OVERSIZE_HEAD = `GET http://a/ HTTP/1.1\r\n${
  "X-Pad: ".concat("y".repeat(1000), "\r\n").repeat(17)
}\r\n`;
const MANY_HEADERS = `GET http://a/ HTTP/1.1\r\n${"X: 1\r\n".repeat(101)}\r\n`;

const REFUSALS: { name: string; head: string; status: HttpErrorStatus; reason: string; extra?: string[] }[] =
  [
    { name: "TLS instead of HTTP", head: "\x16\x03\x01\x02\x00", status: 400, reason: "not an HTTP request" },
    { name: "SOCKS5 on an HTTP port", head: "\x05\x01\x00", status: 400, reason: "not an HTTP request" },
    {
      name: "leading empty line",
      head: "\r\nGET http://a/ HTTP/1.1\r\n\r\n",
      status: 400,
      reason: "not an HTTP request",
    },
    {
      name: "bare LF after request line",
      head: "GET http://a/ HTTP/1.1\n\n",
      status: 400,
      reason: "line ends must be CRLF",
    },
    {
      name: "bare LF after a header",
      head: "GET http://a/ HTTP/1.1\r\nX: 1\n\r\n",
      status: 400,
      reason: "line ends must be CRLF",
    },
    {
      name: "bare LF as empty line",
      head: "GET http://a/ HTTP/1.1\r\n\n",
      status: 400,
      reason: "line ends must be CRLF",
    },
    {
      name: "NUL in request line",
      head: "GET http://a/\0 HTTP/1.1\r\n\r\n",
      status: 400,
      reason: "invalid request line",
    },
    {
      name: "non-ASCII target",
      head: "GET http://a/\xe9 HTTP/1.1\r\n\r\n",
      status: 400,
      reason: "invalid request line",
    },
    {
      name: "double space",
      head: "GET  http://a/ HTTP/1.1\r\n\r\n",
      status: 400,
      reason: "invalid request line",
    },
    { name: "two fields", head: "GET http://a/\r\n\r\n", status: 400, reason: "invalid request line" },
    {
      name: "method not a token",
      head: "GE(T http://a/ HTTP/1.1\r\n\r\n",
      status: 400,
      reason: "invalid method",
    },
    {
      name: "version not HTTP",
      head: "GET http://a/ HTTX/1.1\r\n\r\n",
      status: 400,
      reason: "invalid HTTP version",
    },
    {
      name: "version 2.0",
      head: "GET http://a/ HTTP/2.0\r\n\r\n",
      status: 505,
      reason: "only HTTP/1.0 and HTTP/1.1 are supported",
    },
    {
      name: "version 1.2",
      head: "GET http://a/ HTTP/1.2\r\n\r\n",
      status: 505,
      reason: "only HTTP/1.0 and HTTP/1.1 are supported",
    },
    {
      name: "CONNECT without port",
      head: "CONNECT a HTTP/1.1\r\n\r\n",
      status: 400,
      reason: "CONNECT needs host:port",
    },
    {
      name: "CONNECT empty port",
      head: "CONNECT a: HTTP/1.1\r\n\r\n",
      status: 400,
      reason: "CONNECT needs host:port",
    },
    {
      name: "CONNECT port 0",
      head: "CONNECT a:0 HTTP/1.1\r\n\r\n",
      status: 400,
      reason: "CONNECT needs host:port",
    },
    {
      name: "CONNECT port 65536",
      head: "CONNECT a:65536 HTTP/1.1\r\n\r\n",
      status: 400,
      reason: "CONNECT needs host:port",
    },
    {
      name: "CONNECT port +1",
      head: "CONNECT a:+1 HTTP/1.1\r\n\r\n",
      status: 400,
      reason: "CONNECT needs host:port",
    },
    {
      name: "CONNECT user info",
      head: "CONNECT u@a:443 HTTP/1.1\r\n\r\n",
      status: 400,
      reason: "CONNECT needs host:port",
    },
    {
      name: "CONNECT bare IPv6",
      head: "CONNECT ::1:443 HTTP/1.1\r\n\r\n",
      status: 400,
      reason: "CONNECT needs host:port",
    },
    {
      name: "CONNECT unclosed [",
      head: "CONNECT [::1:443 HTTP/1.1\r\n\r\n",
      status: 400,
      reason: "CONNECT needs host:port",
    },
    {
      name: "CONNECT text after ]",
      head: "CONNECT [::1]x:443 HTTP/1.1\r\n\r\n",
      status: 400,
      reason: "CONNECT needs host:port",
    },
    {
      name: "CONNECT IPv4 in brackets",
      head: "CONNECT [1.2.3.4]:443 HTTP/1.1\r\n\r\n",
      status: 400,
      reason: "CONNECT needs host:port",
    },
    {
      name: "CONNECT zone id",
      head: "CONNECT [fe80::1%25eth0]:443 HTTP/1.1\r\n\r\n",
      status: 400,
      reason: "CONNECT needs host:port",
    },
    {
      name: "CONNECT underscore",
      head: "CONNECT a_b:443 HTTP/1.1\r\n\r\n",
      status: 400,
      reason: "CONNECT needs host:port",
    },
    {
      name: "CONNECT legacy IPv4",
      head: "CONNECT 127.1:443 HTTP/1.1\r\n\r\n",
      status: 400,
      reason: "CONNECT needs host:port",
    },
    {
      name: "CONNECT octal IPv4",
      head: "CONNECT 0177.0.0.1:443 HTTP/1.1\r\n\r\n",
      status: 400,
      reason: "CONNECT needs host:port",
    },
    {
      name: "CONNECT percent",
      head: "CONNECT a%2eb:443 HTTP/1.1\r\n\r\n",
      status: 400,
      reason: "CONNECT needs host:port",
    },
    {
      name: "CONNECT long label",
      head: `CONNECT ${"a".repeat(64)}:443 HTTP/1.1\r\n\r\n`,
      status: 400,
      reason: "CONNECT needs host:port",
    },
    {
      name: "TRACE",
      head: "TRACE http://a/ HTTP/1.1\r\n\r\n",
      status: 405,
      reason: "method not allowed",
      extra: ["Allow: CONNECT, GET, HEAD, POST, PUT, DELETE, OPTIONS, PATCH"],
    },
    {
      name: "unknown method",
      head: "PROPFIND http://a/ HTTP/1.1\r\n\r\n",
      status: 501,
      reason: "method not implemented",
    },
    {
      name: "lower-case method",
      head: "get http://a/ HTTP/1.1\r\n\r\n",
      status: 501,
      reason: "method not implemented",
    },
    {
      name: "origin-form",
      head: "GET /index.html HTTP/1.1\r\nHost: a\r\n\r\n",
      status: 400,
      reason: "this is a proxy: send an absolute http:// URL, or CONNECT",
    },
    {
      name: "asterisk-form",
      head: "OPTIONS * HTTP/1.1\r\n\r\n",
      status: 400,
      reason: "request target must be an absolute http:// URL",
    },
    {
      name: "authority-form GET",
      head: "GET a:80 HTTP/1.1\r\n\r\n",
      status: 400,
      reason: "request target must be an absolute http:// URL",
    },
    {
      name: "https URL",
      head: "GET https://a/ HTTP/1.1\r\n\r\n",
      status: 400,
      reason: "https:// URLs are not forwarded: use CONNECT",
    },
    {
      name: "HTTPS URL upper case",
      head: "GET HTTPS://a/ HTTP/1.1\r\n\r\n",
      status: 400,
      reason: "https:// URLs are not forwarded: use CONNECT",
    },
    {
      name: "ftp URL",
      head: "GET ftp://a/ HTTP/1.1\r\n\r\n",
      status: 400,
      reason: "only http:// URLs are forwarded",
    },
    {
      name: "fragment",
      head: "GET http://a/p#frag HTTP/1.1\r\n\r\n",
      status: 400,
      reason: "URL fragments are not sent to servers",
    },
    {
      name: "URL user info",
      head: "GET http://ok.example@evil/ HTTP/1.1\r\n\r\n",
      status: 400,
      reason: "invalid host in URL",
    },
    {
      name: "URL empty host",
      head: "GET http:///p HTTP/1.1\r\n\r\n",
      status: 400,
      reason: "invalid host in URL",
    },
    {
      name: "URL port 0",
      head: "GET http://a:0/ HTTP/1.1\r\n\r\n",
      status: 400,
      reason: "invalid host in URL",
    },
    {
      name: "URL empty port",
      head: "GET http://a:/ HTTP/1.1\r\n\r\n",
      status: 400,
      reason: "invalid host in URL",
    },
    {
      name: "space before colon",
      head: "GET http://a/ HTTP/1.1\r\nHost : a\r\n\r\n",
      status: 400,
      reason: "invalid header field",
    },
    {
      name: "obsolete line folding",
      head: "GET http://a/ HTTP/1.1\r\nX: 1\r\n 2\r\n\r\n",
      status: 400,
      reason: "invalid header field",
    },
    {
      name: "no colon",
      head: "GET http://a/ HTTP/1.1\r\nX\r\n\r\n",
      status: 400,
      reason: "invalid header field",
    },
    {
      name: "empty name",
      head: "GET http://a/ HTTP/1.1\r\n: 1\r\n\r\n",
      status: 400,
      reason: "invalid header field",
    },
    {
      name: "control byte in value",
      head: "GET http://a/ HTTP/1.1\r\nX: a\x01b\r\n\r\n",
      status: 400,
      reason: "invalid header field",
    },
    {
      name: "bare CR in value",
      head: "GET http://a/ HTTP/1.1\r\nX: a\rb\r\n\r\n",
      status: 400,
      reason: "invalid header field",
    },
    {
      name: "two Host fields",
      head: "GET http://a/ HTTP/1.1\r\nHost: a\r\nhost: b\r\n\r\n",
      status: 400,
      reason: "duplicate header field",
    },
    {
      name: "two Proxy-Authorization fields",
      head:
        "CONNECT a:1 HTTP/1.1\r\nProxy-Authorization: Basic dTpw\r\nProxy-Authorization: Basic dTpw\r\n\r\n",
      status: 400,
      reason: "duplicate header field",
    },
    {
      name: "Content-Length not a number",
      head: "POST http://a/ HTTP/1.1\r\nContent-Length: 1e3\r\n\r\n",
      status: 400,
      reason: "invalid Content-Length",
    },
    {
      name: "Content-Length values differ",
      head: "POST http://a/ HTTP/1.1\r\nContent-Length: 1, 2\r\n\r\n",
      status: 400,
      reason: "invalid Content-Length",
    },
    {
      name: "two Content-Length fields differ",
      head: "POST http://a/ HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
      status: 400,
      reason: "invalid Content-Length",
    },
    {
      name: "Content-Length and Transfer-Encoding",
      head: "POST http://a/ HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
      status: 400,
      reason: "both Content-Length and Transfer-Encoding",
    },
    {
      name: "Transfer-Encoding in HTTP/1.0",
      head: "POST http://a/ HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
      status: 400,
      reason: "Transfer-Encoding needs HTTP/1.1",
    },
    {
      name: "Transfer-Encoding not ending in chunked",
      head: "POST http://a/ HTTP/1.1\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
      status: 400,
      reason: "Transfer-Encoding must end with chunked",
    },
    { name: "request line over 8 KiB", head: OVERSIZE_LINE, status: 414, reason: "request line too long" },
    { name: "head over 16 KiB", head: OVERSIZE_HEAD, status: 431, reason: "request head too large" },
    { name: "101 header fields", head: MANY_HEADERS, status: 431, reason: "too many header fields" },
  ];

Deno.test("every refusal: its status, fixed reason and exact reply bytes", async (t) => {
  for (const c of REFUSALS) {
    await t.step(c.name, () => {
      const result = parseHttpProxyRequest(latin1(c.head));
      if (!("error" in result)) assert.fail(`expected a refusal, got ${JSON.stringify(result)}`);
      assert.equal(result.error.status, c.status, result.error.message);
      assert.equal(result.error.reason, c.reason, result.error.message);
      assert.ok(result.error.message.length > 0);
      const statusLine = `${c.status} ${
        {
          400: "Bad Request",
          405: "Method Not Allowed",
          414: "URI Too Long",
          431: "Request Header Fields Too Large",
          501: "Not Implemented",
          505: "HTTP Version Not Supported",
        }[c.status as number]
      }`;
      assert.equal(show(renderHttpProblem(result.error)), reply(statusLine, c.reason, c.extra));
    });
  }
});

Deno.test("refusal classes: malformed, unsupported, too-large", () => {
  const refusal = (head: string) => {
    const result = parseHttpProxyRequest(latin1(head));
    return "error" in result ? result.error.refusal : "none";
  };
  assert.equal(refusal("GET / HTTP/1.1\r\n\r\n"), "malformed");
  assert.equal(refusal("PROPFIND http://a/ HTTP/1.1\r\n\r\n"), "unsupported");
  assert.equal(refusal("GET http://a/ HTTP/2.0\r\n\r\n"), "unsupported");
  assert.equal(refusal(OVERSIZE_LINE), "too-large");
  assert.equal(refusal(MANY_HEADERS), "too-large");
});

Deno.test("log messages quote the offending value, truncated", () => {
  const result = parseHttpProxyRequest(latin1(`GET /${"p".repeat(200)} HTTP/1.1\r\n\r\n`));
  assert.ok("error" in result);
  assert.match(result.error.message, /^Request target "\/p{63}…" is origin-form/);
});

Deno.test("refusals come as soon as the bytes show them, before the head ends", () => {
  for (
    const [head, status] of [["\x16", 400], ["GET /x HTTP/1.1\r\n", 400], [
      "BREW http://a/ HTTP/1.1\r\n",
      501,
    ]] as const
  ) {
    const result = parseHttpProxyRequest(latin1(head));
    assert.ok(
      "error" in result && result.error.status === status,
      `${JSON.stringify(head)}: ${JSON.stringify(result)}`,
    );
  }
  // Without a line end, the request line is refused once it reaches its cap, not before.
  const line = latin1(`GET http://a/${"x".repeat(8179)}`);
  assert.equal(line.length, 8192);
  assert.deepEqual(parseHttpProxyRequest(line.subarray(0, 8191)), { need: 4 });
  assert.equal((parseHttpProxyRequest(line) as { error: { status: number } }).error.status, 414);
});

Deno.test("caps are options", () => {
  const head = "GET http://a/ HTTP/1.1\r\nA: 1\r\nB: 2\r\n\r\n";
  assert.equal(parsed(head, { maxHeaders: 2 }).consumed, head.length);
  const few = parseHttpProxyRequest(latin1(head), { maxHeaders: 1 });
  assert.ok("error" in few && few.error.status === 431);
  assert.equal(parsed(head, { maxHeadBytes: head.length }).consumed, head.length);
  const small = parseHttpProxyRequest(latin1(head), { maxHeadBytes: head.length - 1 });
  assert.ok("error" in small && small.error.status === 431, JSON.stringify(small));
  const line = parseHttpProxyRequest(latin1(head), { maxRequestLineBytes: 10 });
  assert.ok("error" in line && line.error.status === 414);
});

Deno.test("CONNECT: names, IPv4, bracketed IPv6; bytes after the head are not consumed", () => {
  const head = "CONNECT PG-Primary.tail1234.TS.NET.:5432 HTTP/1.1\r\nHost: pg-primary:5432\r\n" +
    "Proxy-Authorization: basic dXNlcjpwYTpzcw==\r\nUser-Agent: curl/8\r\n\r\n";
  const { request, consumed } = parsed(`${head}\x16\x03\x01`);
  assert.equal(consumed, head.length);
  assert.deepEqual(request, {
    kind: "connect",
    method: "CONNECT",
    version: "HTTP/1.1",
    target: "PG-Primary.tail1234.TS.NET.:5432",
    destination: { host: "pg-primary.tail1234.ts.net", kind: "name", port: 5432 },
    headers: [
      { name: "Host", value: "pg-primary:5432", hopByHop: false },
      { name: "Proxy-Authorization", value: "basic dXNlcjpwYTpzcw==", hopByHop: true },
      { name: "User-Agent", value: "curl/8", hopByHop: false },
    ],
    credentials: { user: "user", password: "pa:ss" },
  });
  assert.deepEqual(
    parsed("CONNECT 100.64.0.7:08443 HTTP/1.0\r\n\r\n").request.destination,
    { host: "100.64.0.7", kind: "ipv4", port: 8443 },
  );
  assert.deepEqual(
    parsed("CONNECT [FD7A:115C:A1E0:0:0:0:0:1]:443 HTTP/1.1\r\n\r\n").request.destination,
    { host: "fd7a:115c:a1e0::1", kind: "ipv6", port: 443 },
  );
});

Deno.test("absolute-form: destination, default port, path and query", () => {
  const cases: [string, string, number, string][] = [
    ["http://Example.COM:8080/a/b?c=d", "example.com", 8080, "/a/b?c=d"],
    ["http://a", "a", 80, "/"],
    ["HTTP://a?x=1", "a", 80, "/?x=1"],
    ["http://[::1]/", "::1", 80, "/"],
    ["http://10.0.0.1:81/%2e%2e/", "10.0.0.1", 81, "/%2e%2e/"],
  ];
  for (const [target, host, port, path] of cases) {
    const { request } = parsed(`GET ${target} HTTP/1.1\r\n\r\n`);
    assert.equal(request.kind, "forward");
    assert.equal(request.destination.host, host, target);
    assert.equal(request.destination.port, port, target);
    assert.equal(request.kind === "forward" && request.path, path, target);
  }
});

Deno.test("the forwarded head: origin-form, Host from the URL, hop-by-hop fields gone, Connection: close", () => {
  const head = "POST http://api.corp:8000/v1?x HTTP/1.1\r\n" +
    "Host: spoofed.example\r\n" +
    "Connection: keep-alive, X-Hop, Content-Length, Host\r\n" +
    "Keep-Alive: timeout=5\r\n" +
    "X-Hop: 1\r\n" +
    "Proxy-Connection: keep-alive\r\n" +
    "Proxy-Authorization: Basic dTpw\r\n" +
    "TE: trailers\r\nUpgrade: websocket\r\nTrailer: X\r\n" +
    "Content-Length: 3\r\n" +
    "X-Opaque: \xe9\xff \t\r\n" +
    "\r\n";
  const { request, consumed } = parsed(`${head}abc`);
  assert.equal(request.kind, "forward");
  if (request.kind !== "forward") return;
  assert.deepEqual(
    request.headers.filter((h) => h.hopByHop).map((h) => h.name),
    [
      "Connection",
      "Keep-Alive",
      "X-Hop",
      "Proxy-Connection",
      "Proxy-Authorization",
      "TE",
      "Upgrade",
      "Trailer",
    ],
  );
  assert.equal(
    show(forwardHead(request)),
    "POST /v1?x HTTP/1.1\r\nHost: api.corp:8000\r\nContent-Length: 3\r\nX-Opaque: \xe9\xff\r\n" +
      "Connection: close\r\n\r\n",
  );
  assert.equal(consumed, head.length);
  const v6 = parsed("GET http://[fd7a::2]/ HTTP/1.0\r\n\r\n").request;
  assert.equal(
    show(forwardHead(v6 as Extract<HttpProxyRequest, { kind: "forward" }>)),
    "GET / HTTP/1.0\r\nHost: [fd7a::2]\r\nConnection: close\r\n\r\n",
  );
});

Deno.test("Basic credentials: valid ones decode, anything else is absent", () => {
  const b64 = (s: string) => btoa(String.fromCharCode(...new TextEncoder().encode(s)));
  assert.deepEqual(basicCredentials(`Basic ${b64("alice:s3cret")}`), { user: "alice", password: "s3cret" });
  assert.deepEqual(basicCredentials(`BASIC   ${b64("ünï:p:w")}`), { user: "ünï", password: "p:w" });
  assert.deepEqual(basicCredentials(`Basic ${b64(":")}`), { user: "", password: "" });
  for (
    const value of [
      "Bearer abc",
      "Basic",
      "Basic ",
      `Basic ${b64("nocolon")}`,
      "Basic dTpw=", // length not a multiple of 4
      "Basic dT!w",
      `Basic ${b64("u:p")} extra`,
      `Basic ${btoa("u:\xff")}`, // not UTF-8
      `Basic ${b64("u:p\n")}`, // control character
      `Basic${b64("u:p")}`,
    ]
  ) {
    assert.equal(basicCredentials(value), undefined, value);
  }
  // An invalid Proxy-Authorization is not a refusal of the head: the request carries no credentials.
  assert.equal(
    parsed("CONNECT a:1 HTTP/1.1\r\nProxy-Authorization: Bearer x\r\n\r\n").request.credentials,
    undefined,
  );
});

Deno.test("incremental: every strict prefix needs more, never more than is missing", () => {
  const head = "GET http://a.example/p HTTP/1.1\r\nHost: a.example\r\nAccept: */*\r\n\r\n";
  for (let cut = 0; cut < head.length; cut++) {
    const result = parseHttpProxyRequest(latin1(head.slice(0, cut)));
    assert.ok("need" in result, `prefix ${cut}: ${JSON.stringify(result)}`);
    assert.ok(result.need >= 1 && result.need <= head.length - cut, `prefix ${cut}: need ${result.need}`);
  }
  assert.deepEqual(parseHttpProxyRequest(latin1("GET http://a/ HTTP/1.1\r\n")), { need: 2 });
  assert.deepEqual(parseHttpProxyRequest(latin1("GET http://a/ HTTP/1.1\r\nX: 1\r\n\r")), { need: 1 });
  assert.deepEqual(parseHttpProxyRequest(new Uint8Array()), { need: 24 });
});
