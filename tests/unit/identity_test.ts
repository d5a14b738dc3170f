/**
 * Unit tests of the identity resolver's cache rules. The WhoIs source here is a counting stub (the cache
 * logic is what is under test); the real tailscaled path is covered in tests/e2e/identity_test.ts.
 */

import assert from "node:assert/strict";
import { IdentityResolver, splitAddr } from "../../lib/identity/mod.ts";
import { LocalApiError, type WhoIsOptions, type WhoIsResponse } from "../../lib/localapi/mod.ts";

const CAP = "rajsingh.info/cap/tailvoy";

function whoisAnswer(name: string, caps: unknown[] | undefined, tags: string[] = []): WhoIsResponse {
  return {
    Node: { StableID: `n-${name}`, Name: `${name}.box.test.`, Addresses: ["100.64.0.9/32"], Tags: tags },
    UserProfile: { LoginName: `${name}@`, DisplayName: name },
    CapMap: caps ? { [CAP]: caps } : {},
  };
}

class StubSource {
  calls: { addr: string; options?: WhoIsOptions }[] = [];
  answer: (addr: string, options?: WhoIsOptions) => Promise<WhoIsResponse> = () =>
    Promise.resolve(whoisAnswer("alice", [{}]));
  whois(addr: string, options?: WhoIsOptions): Promise<WhoIsResponse> {
    this.calls.push({ addr, options });
    return this.answer(addr, options);
  }
}

Deno.test("splitAddr handles IPv4, IPv6 and bare IPs", () => {
  assert.deepEqual(splitAddr("100.64.0.1:443"), { ip: "100.64.0.1", port: 443 });
  assert.deepEqual(splitAddr("[fd7a::1]:80"), { ip: "fd7a::1", port: 80 });
  assert.deepEqual(splitAddr("fd7a::1"), { ip: "fd7a::1" });
  assert.deepEqual(splitAddr("100.64.0.1"), { ip: "100.64.0.1" });
  // An empty host (the admin address's "all interfaces") keeps its port.
  assert.deepEqual(splitAddr(":9002"), { ip: "", port: 9002 });
});

Deno.test("identity fields: user node vs tagged node", async () => {
  const src = new StubSource();
  const r = new IdentityResolver(src, { ttlMs: 0 });
  const alice = await r.resolve("100.64.0.9:1234");
  assert.equal(alice.login, "alice@");
  assert.equal(alice.node, "alice.box.test");
  assert.deepEqual(alice.ips, ["100.64.0.9"]);
  assert.equal(alice.rules.length, 1);
  src.answer = () => Promise.resolve(whoisAnswer("ci", [{ listeners: ["db"] }], ["tag:ci"]));
  const ci = await r.resolve("100.64.0.10");
  assert.equal(ci.login, undefined, "a tagged node has no user identity");
  assert.deepEqual(ci.tags, ["tag:ci"]);
});

Deno.test("cache: tailnet IPs are keyed by IP, loopback by address and protocol, services apart", async () => {
  let now = 0;
  const src = new StubSource();
  const r = new IdentityResolver(src, { ttlMs: 1000, now: () => now });
  await r.resolve("100.64.0.9:1000");
  await r.resolve("100.64.0.9:2000");
  assert.equal(src.calls.length, 1, "another port of the same tailnet IP is a hit");
  assert.equal(src.calls[0].addr, "100.64.0.9");
  await r.resolve("100.64.0.9:2000", { svcName: "svc:web" });
  assert.equal(src.calls.length, 2, "a service-scoped answer is cached apart");
  assert.equal(src.calls[1].options?.svcName, "svc:web");
  await r.resolve("127.0.0.1:40000", { proto: "tcp" });
  await r.resolve("127.0.0.1:40001", { proto: "tcp" });
  await r.resolve("127.0.0.1:40001", { proto: "udp" });
  assert.equal(src.calls.length, 5, "each loopback address and protocol is its own caller");
  now = 1001;
  await r.resolve("100.64.0.9:1000");
  assert.equal(src.calls.length, 6, "an expired answer is fetched again");
});

Deno.test("cache: ttl 0 disables caching", async () => {
  const src = new StubSource();
  const r = new IdentityResolver(src, { ttlMs: 0 });
  await r.resolve("100.64.0.9");
  await r.resolve("100.64.0.9");
  assert.equal(src.calls.length, 2);
  assert.equal(r.size, 0);
});

Deno.test("concurrent misses for one key share one WhoIs call", async () => {
  const src = new StubSource();
  let release!: () => void;
  const gate = new Promise<void>((r) => release = r);
  src.answer = async () => {
    await gate;
    return whoisAnswer("alice", [{}]);
  };
  const r = new IdentityResolver(src);
  const all = Promise.all(Array.from({ length: 50 }, () => r.resolve("100.64.0.9")));
  release();
  const ids = await all;
  assert.equal(src.calls.length, 1);
  assert.ok(ids.every((i) => i === ids[0]));
});

Deno.test("errors are never cached, and every waiter sees the error", async () => {
  const src = new StubSource();
  src.answer = () => Promise.reject(new LocalApiError("timeout", "slow"));
  const r = new IdentityResolver(src);
  const results = await Promise.allSettled([r.resolve("100.64.0.9"), r.resolve("100.64.0.9")]);
  assert.ok(results.every((x) => x.status === "rejected"));
  assert.equal(src.calls.length, 1);
  src.answer = () => Promise.resolve(whoisAnswer("alice", [{}]));
  assert.equal((await r.resolve("100.64.0.9")).login, "alice@");
  assert.equal(src.calls.length, 2, "the failure was not cached");
});

Deno.test("a 404 for a loopback address is retried within the window, a tailnet IP is not", async () => {
  const src = new StubSource();
  let failures = 3;
  src.answer = () =>
    failures-- > 0
      ? Promise.reject(new LocalApiError("not-found", "no match"))
      : Promise.resolve(whoisAnswer("alice", [{}]));
  const r = new IdentityResolver(src, { loopbackRetryMs: 500 });
  assert.equal((await r.resolve("127.0.0.1:5555", { proto: "tcp" })).login, "alice@");
  assert.equal(src.calls.length, 4);

  src.calls = [];
  src.answer = () => Promise.reject(new LocalApiError("not-found", "no match"));
  await assert.rejects(r.resolve("100.64.0.77"), LocalApiError);
  assert.equal(src.calls.length, 1, "a tailnet IP that is unknown is unknown");

  src.calls = [];
  const r2 = new IdentityResolver(src, { loopbackRetryMs: 50 });
  await assert.rejects(r2.resolve("127.0.0.1:6666", { proto: "tcp" }), LocalApiError);
  assert.ok(src.calls.length >= 2, "retried before giving up");
});

Deno.test("the cache is bounded", async () => {
  const src = new StubSource();
  const r = new IdentityResolver(src, { maxEntries: 10 });
  for (let i = 0; i < 25; i++) await r.resolve(`100.64.1.${i}`);
  assert.ok(r.size <= 10);
});

Deno.test("malformed rules are reported once per identity and grant nothing", async () => {
  const src = new StubSource();
  src.answer = () => Promise.resolve(whoisAnswer("alice", [{ listeners: "web" }, { listeners: ["db"] }]));
  const reports: string[] = [];
  const r = new IdentityResolver(src, {
    ttlMs: 0,
    onMalformed: (id, issue) => reports.push(`${id.node} ${issue.json}`),
  });
  const id = await r.resolve("100.64.0.9");
  await r.resolve("100.64.0.9");
  assert.equal(id.rules.length, 1);
  assert.equal(id.malformed.length, 1);
  assert.deepEqual(reports, ['alice.box.test {"listeners":"web"}']);
});
