/**
 * Egress end to end: the real proxy process beside the gateway's real userspace tailscaled, clients on the
 * gateway side's loopback, backends behind alice's node (alice's userspace tailscaled forwards her
 * tailnet address's port P to 127.0.0.1:P). Each listener kind (HTTP CONNECT, absolute-form forwarding,
 * SOCKS5, port-mapped), by name, alias and IP; refusals (rules, off the tailnet, loopback, the node's own
 * address, credentials, sources) with the protocol's own replies; the decision log and metrics; a policy
 * reload; drain on SIGTERM.
 */

import assert from "node:assert/strict";
import { join } from "node:path";
import { closeQuietly, delay } from "../../lib/util/async.ts";
import { readSome } from "../../scripts/harness/clients.ts";
import { Proxy, tcpEcho } from "../../scripts/harness/proxy.ts";
import { socks5Connect } from "../../scripts/harness/socks5.ts";
import { fixture, tempDir } from "../../scripts/harness/fixture.ts";
import { acquireTailnet, type Tailnet, waitFor } from "../../scripts/harness/tailnet.ts";

const enc = new TextEncoder();
const dec = new TextDecoder();

interface Fixture {
  tailnet: Tailnet;
  proxy: Proxy;
  dir: string;
  config: string;
  echo: { port: number; close: () => void };
  web: { port: number; close: () => void };
  /** Bound addresses of the egress listeners, by name. */
  ports: Record<string, number>;
  aliceIp: string;
  gwIp: string;
  admin: string;
}

function configText(f: { echo: number; web: number; aliceIp: string; users: string }, rules: string): string {
  return [
    "egress:",
    "  aliases:",
    "    db.corp: alice",
    `    "api.corp:443": "${f.aliceIp}:${f.echo}"`,
    "  rules:",
    rules,
    "  listeners:",
    '    proxy: {address: "127.0.0.1:0", protocols: [http, socks5]}',
    `    authed: {address: "127.0.0.1:0", protocols: [http, socks5], credentials: {file: "${f.users}"}}`,
    `    pg: {address: "127.0.0.1:0", target: "alice:${f.echo}"}`,
    '    fenced: {address: "127.0.0.1:0", protocols: [http], sources: ["10.99.0.0/24"]}',
    "  timeouts: {handshake: 2s, dial: 3s}",
    'tailvoy: {adminAddress: "127.0.0.1:0", timeouts: {drain: 3s}}',
    "",
  ].join("\n");
}

const RULES = (echo: number, web: number) =>
  [
    `    - {name: alice-echo, hosts: [alice], ports: [${echo}]}`,
    `    - {name: alice-web, hosts: [alice.box.test], ports: [${web}], listeners: [proxy]}`,
  ].join("\n");

Deno.test.sanitizer({ ops: false, resources: false });

const setUp = fixture<Fixture>(async (cleanup) => {
  const tailnet = await acquireTailnet();
  cleanup.defer(() => tailnet.release());
  const aliceIp = tailnet.node("alice").ipv4;
  const gwIp = tailnet.node("gw").ipv4;
  const dir = await tempDir(cleanup, "tailvoy-egress-");
  const echo = tcpEcho();
  cleanup.defer(() => echo.close());
  const web = httpBackend();
  cleanup.defer(() => web.close());
  const users = join(dir, "users");
  await Deno.writeTextFile(users, "# proxy users\nci:s3cret\n");
  const config = join(dir, "config.yaml");
  await Deno.writeTextFile(
    config,
    configText({ echo: echo.port, web: web.port, aliceIp, users }, RULES(echo.port, web.port)),
  );
  const proxy = new Proxy(config, tailnet.node("gw").socket);
  cleanup.defer(async () => void await proxy.stop());
  const ports: Record<string, number> = {};
  await waitFor(() => {
    for (const r of proxy.records()) {
      if (r.logger === "tailvoy.egress" && r.name && r.addr) {
        ports[r.name] = Number(r.addr.split(":").pop());
      }
    }
    return Object.keys(ports).length === 4 ? true : undefined;
  }, { what: "the egress listeners to start", timeoutMs: 30_000 });
  const admin = proxy.records().find((r) => r.logger === "tailvoy.admin" && r.addr)?.addr;
  return { tailnet, proxy, dir, config, echo, web, ports, aliceIp, gwIp, admin };
});

/** A plain HTTP backend answering `web:<path>` and the Host header it got. */
function httpBackend(): { port: number; close: () => void } {
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen: () => {} }, (req) => {
    const url = new URL(req.url);
    return new Response(`web:${url.pathname}${url.search} host=${req.headers.get("host")}`, {
      headers: { "x-proxy-authorization-seen": String(req.headers.has("proxy-authorization")) },
    });
  });
  return { port: server.addr.port, close: () => void server.shutdown() };
}

/** Sends `head` to the proxy and reads until it closes or `until` matches. */
async function exchange(
  port: number,
  head: string,
  until?: RegExp,
): Promise<{ conn: Deno.TcpConn; text: string }> {
  const conn = await Deno.connect({ hostname: "127.0.0.1", port });
  await conn.write(enc.encode(head));
  let text = "";
  const buf = new Uint8Array(16 * 1024);
  while (!until?.test(text)) {
    const n = await conn.read(buf).catch(() => null);
    if (n === null) break;
    text += dec.decode(buf.subarray(0, n));
  }
  return { conn, text };
}

async function connectVia(
  port: number,
  target: string,
  extra = "",
): Promise<{ conn: Deno.TcpConn; text: string }> {
  return await exchange(port, `CONNECT ${target} HTTP/1.1\r\nHost: ${target}\r\n${extra}\r\n`, /\r\n\r\n/);
}

async function echoes(conn: Deno.Conn, word: string): Promise<string | null> {
  await conn.write(enc.encode(word));
  return await readSome(conn);
}

/** The decision-log records of egress flows. */
// deno-lint-ignore no-explicit-any
function egressRecords(proxy: Proxy): any[] {
  return proxy.records().filter((r) => r.logger === "tailvoy.decision" && r.event === "egress");
}

Deno.test({
  name: "egress HTTP CONNECT by tailnet name, MagicDNS FQDN, IP and alias reaches alice's backend",
  fn: async () => {
    const f = await setUp();
    for (const target of ["alice", `alice.box.test`, f.aliceIp, "db.corp", "api.corp:443"]) {
      const authority = target.includes(":") ? target : `${target}:${f.echo.port}`;
      const { conn, text } = await connectVia(f.ports.proxy, authority);
      try {
        assert.match(text, /^HTTP\/1\.1 200 /, `CONNECT ${authority}: ${text}`);
        assert.equal(await echoes(conn, "hi"), "echo:hi", authority);
      } finally {
        closeQuietly(conn);
      }
    }
    const record = await waitFor(
      () => egressRecords(f.proxy).find((r) => r.asked === "api.corp:443" && r.bytesUp !== undefined),
      { what: "the flow's decision-log record" },
    );
    assert.equal(record.decision, "allow");
    assert.equal(record.alias, "api.corp:443");
    assert.equal(record.resolved, `${f.aliceIp}:${f.echo.port}`);
    assert.equal(record.rule, "alice-echo");
    assert.equal(record.via, "peer");
    assert.match(record.peer, /^alice\./);
    assert.equal(record.protocol, "http");
    assert.equal(record.bytesUp, 2);
    assert.equal(record.bytesDown, 7);
    assert.equal(typeof record.durationMs, "number");
  },
});

Deno.test({
  name: "egress SOCKS5 by name, IP and alias; port-mapped listener; both on one port",
  fn: async () => {
    const f = await setUp();
    const proxy = { hostname: "127.0.0.1", port: f.ports.proxy };
    for (const host of ["alice", f.aliceIp, "db.corp"]) {
      const conn = await socks5Connect(proxy, { host, port: f.echo.port });
      try {
        assert.equal(await echoes(conn, "s5"), "echo:s5", host);
      } finally {
        closeQuietly(conn);
      }
    }
    const pg = await Deno.connect({ hostname: "127.0.0.1", port: f.ports.pg });
    try {
      assert.equal(await echoes(pg, "pg"), "echo:pg", "the port-mapped listener goes to alice");
    } finally {
      closeQuietly(pg);
    }
  },
});

Deno.test({
  name: "egress absolute-form GET is forwarded in origin form, without the proxy's headers",
  fn: async () => {
    const f = await setUp();
    const { text, conn } = await exchange(
      f.ports.proxy,
      `GET http://alice:${f.web.port}/path?q=1 HTTP/1.1\r\nHost: alice:${f.web.port}\r\nProxy-Authorization: Basic eDp5\r\n\r\n`,
    );
    closeQuietly(conn);
    assert.match(text, /^HTTP\/1\.1 200 /);
    assert.match(text, new RegExp(`web:/path\\?q=1 host=alice:${f.web.port}`));
    assert.match(text, /x-proxy-authorization-seen: false/i, "Proxy-Authorization is hop-by-hop");
  },
});

Deno.test({
  name: "egress refuses what no rule allows, off-tailnet, loopback, the node's own address and its own port",
  fn: async () => {
    const f = await setUp();
    const cases = [
      `alice:${f.echo.port + 1}`, // a port no rule names
      "203.0.113.7:443", // off the tailnet
      `127.0.0.1:${f.echo.port}`, // loopback
      `[::1]:${f.echo.port}`,
      `${f.gwIp}:${f.echo.port}`, // our own tailnet address lands on our loopback
      `127.0.0.1:${f.ports.proxy}`, // the proxy's own port
      "gw:22", // our own name is not a peer
      "nowhere.example:80", // not a tailnet name
    ];
    for (const target of cases) {
      const { text, conn } = await connectVia(f.ports.proxy, target);
      closeQuietly(conn);
      assert.match(text, /^HTTP\/1\.1 403 Forbidden/, `${target}: ${text}`);
      // The body names the asked destination and nothing that was resolved.
      assert.doesNotMatch(text, new RegExp(f.aliceIp.replaceAll(".", "\\.")), target);
    }
    // SOCKS5 gets its own refusal code.
    await assert.rejects(
      socks5Connect({ hostname: "127.0.0.1", port: f.ports.proxy }, { host: "127.0.0.1", port: f.echo.port }),
      /connection not allowed by ruleset/,
    );
    const denied = egressRecords(f.proxy).filter((r) => r.result === "destination");
    assert.ok(denied.some((r) => /never dialed/.test(r.rule) && r.asked === `${f.gwIp}:${f.echo.port}`));
    assert.ok(denied.some((r) => /not a tailnet name/.test(r.rule)));
  },
});

Deno.test({
  name: "egress credentials: 407 and RFC 1929 failure without the right password, through with it",
  fn: async () => {
    const f = await setUp();
    const target = `alice:${f.echo.port}`;
    const none = await connectVia(f.ports.authed, target);
    closeQuietly(none.conn);
    assert.match(none.text, /^HTTP\/1\.1 407 /);
    assert.match(none.text, /Proxy-Authenticate: Basic realm="tailvoy"/);
    const wrong = await connectVia(
      f.ports.authed,
      target,
      `Proxy-Authorization: Basic ${btoa("ci:nope")}\r\n`,
    );
    closeQuietly(wrong.conn);
    assert.match(wrong.text, /^HTTP\/1\.1 407 /);
    const right = await connectVia(
      f.ports.authed,
      target,
      `Proxy-Authorization: Basic ${btoa("ci:s3cret")}\r\n`,
    );
    try {
      assert.match(right.text, /^HTTP\/1\.1 200 /);
      assert.equal(await echoes(right.conn, "ok"), "echo:ok");
    } finally {
      closeQuietly(right.conn);
    }
    const proxy = { hostname: "127.0.0.1", port: f.ports.authed };
    await assert.rejects(
      socks5Connect(proxy, { host: "alice", port: f.echo.port }, { user: "ci", password: "nope" }),
      /authentication failed/,
    );
    await assert.rejects(socks5Connect(proxy, { host: "alice", port: f.echo.port }), /refused no-auth/);
    const conn = await socks5Connect(proxy, { host: "alice", port: f.echo.port }, {
      user: "ci",
      password: "s3cret",
    });
    try {
      assert.equal(await echoes(conn, "s"), "echo:s");
    } finally {
      closeQuietly(conn);
    }
    const records = egressRecords(f.proxy).filter((r) => r.listener === "authed");
    assert.ok(records.some((r) => r.result === "unauthorized"), "refusals are logged");
    assert.ok(records.some((r) => r.result === "allow" && r.user === "ci"), "the user is logged");
    assert.ok(!JSON.stringify(records).includes("s3cret"), "never the password");
  },
});

Deno.test({
  name: "egress sources: a client outside the listener's sources is closed without a reply",
  fn: async () => {
    const f = await setUp();
    const { text, conn } = await connectVia(f.ports.fenced, `alice:${f.echo.port}`);
    closeQuietly(conn);
    assert.equal(text, "");
    await waitFor(
      () => egressRecords(f.proxy).find((r) => r.listener === "fenced" && r.result === "source"),
      {
        what: "the refusal's record",
      },
    );
  },
});

Deno.test({
  name: "egress malformed handshakes get the protocol's own error and a closed connection",
  fn: async () => {
    const f = await setUp();
    const bad = await exchange(f.ports.proxy, "CONNECT alice HTTP/1.1\r\n\r\n");
    closeQuietly(bad.conn);
    assert.match(bad.text, /^HTTP\/1\.1 400 /);
    const socks = await exchange(f.ports.proxy, "\x05\x01\x00\x05\x02\x00\x01\x01\x02\x03\x04\x00\x50");
    closeQuietly(socks.conn);
    // Method reply (no auth), then BIND refused with "command not supported".
    assert.deepEqual([...enc.encode(socks.text)].slice(0, 4), [5, 0, 5, 7]);
    // A client that never finishes its head is closed at the handshake deadline (2 s here) with 408.
    const slow = await exchange(f.ports.proxy, "CONNECT alice:1 HTTP/1.1\r\n");
    closeQuietly(slow.conn);
    assert.match(slow.text, /^HTTP\/1\.1 408 /);
  },
});

Deno.test({
  name: "egress metrics count flows by listener and result",
  fn: async () => {
    const f = await setUp();
    const text = await (await fetch(`http://${f.admin}/metrics`)).text();
    assert.match(text, /tailvoy_egress_flows_total\{listener="proxy",result="allow"\} [1-9]/);
    assert.match(text, /tailvoy_egress_flows_total\{listener="proxy",result="destination"\} [1-9]/);
  },
});

Deno.test({
  name: "egress reload: new rules apply to new flows; open flows the new rules still allow keep going",
  fn: async () => {
    const f = await setUp();
    const kept = await socks5Connect({ hostname: "127.0.0.1", port: f.ports.proxy }, {
      host: "alice",
      port: f.echo.port,
    });
    const web = await connectVia(f.ports.proxy, `alice:${f.web.port}`);
    assert.match(web.text, /^HTTP\/1\.1 200 /);
    try {
      // The web rule goes away; the echo rule stays.
      const text = await Deno.readTextFile(f.config);
      await Deno.writeTextFile(
        f.config,
        text.replace(/\n {4}- \{name: alice-web[^\n]*/, ""),
      );
      f.proxy.child.kill("SIGHUP");
      await f.proxy.waitLog(/closing egress flow on .*proxy.* to .*alice:\d+/, "the now-denied flow closed");
      assert.equal(await readSome(web.conn), null, "the flow the new rules deny is closed");
      assert.equal(await echoes(kept, "still"), "echo:still", "an unaffected flow keeps going");
      const again = await connectVia(f.ports.proxy, `alice:${f.web.port}`);
      closeQuietly(again.conn);
      assert.match(again.text, /^HTTP\/1\.1 403 /, "a new flow is judged by the new rules");
    } finally {
      closeQuietly(kept);
      closeQuietly(web.conn);
    }
  },
});

Deno.test({
  name: "egress fails closed when tailscaled does not answer: 503 / SOCKS general failure, nothing dialed",
  fn: async () => {
    const f = await setUp();
    const pid = f.tailnet.node("gw").pid;
    Deno.kill(pid, "SIGSTOP");
    try {
      // Past the 1 s the last view of the tailnet is reused: the next connection must ask tailscaled.
      await delay(1200);
      const { text, conn } = await connectVia(f.ports.proxy, `alice:${f.echo.port}`);
      closeQuietly(conn);
      assert.match(text, /^HTTP\/1\.1 503 /, text);
      await assert.rejects(
        socks5Connect({ hostname: "127.0.0.1", port: f.ports.proxy }, { host: "alice", port: f.echo.port }),
        /general failure/,
      );
    } finally {
      Deno.kill(pid, "SIGCONT");
    }
    const refused = egressRecords(f.proxy).filter((r) => /view of the tailnet is unavailable/.test(r.rule));
    assert.ok(refused.length >= 2, "both refusals are logged with the reason");
    assert.ok(refused.every((r) => r.resolved === null), "nothing was resolved or dialed");
  },
});

Deno.test({
  name: "egress SIGTERM: no new connections, open flows drained, exit 0 (last)",
  fn: async () => {
    const f = await setUp();
    const open = await socks5Connect({ hostname: "127.0.0.1", port: f.ports.proxy }, {
      host: "alice",
      port: f.echo.port,
    });
    try {
      f.proxy.child.kill("SIGTERM");
      await f.proxy.waitLog(/stopping/, "the drain to start");
      await assert.rejects(
        Deno.connect({ hostname: "127.0.0.1", port: f.ports.proxy }),
        "listeners are closed",
      );
      assert.equal(await echoes(open, "drain"), "echo:drain", "an open flow keeps relaying while draining");
      assert.equal(await f.proxy.exited(), 0);
    } finally {
      closeQuietly(open);
    }
  },
});
