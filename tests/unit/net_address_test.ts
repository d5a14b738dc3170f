/**
 * Unit tests of the shared address helpers (lib/net/address.ts): `host:port` split and joined, and
 * loopback detection. classifyAddress is tested with ext_authz, its user (tests/unit/extauthz_test.ts).
 */

import assert from "node:assert/strict";
import { formatAddr, isLoopbackIp, joinHostPort, splitAddr, splitHostPort } from "../../lib/net/address.ts";

Deno.test("splitAddr handles IPv4, IPv6 and bare IPs", () => {
  assert.deepEqual(splitAddr("100.64.0.1:443"), { ip: "100.64.0.1", port: 443 });
  assert.deepEqual(splitAddr("[fd7a::1]:80"), { ip: "fd7a::1", port: 80 });
  assert.deepEqual(splitAddr("fd7a::1"), { ip: "fd7a::1" });
  // An empty host (the admin address's "all interfaces") keeps its port.
  assert.deepEqual(splitAddr(":9002"), { ip: "", port: 9002 });
  assert.deepEqual(splitAddr("100.64.0.1"), { ip: "100.64.0.1" });
});

Deno.test("splitHostPort: host:port, [v6]:port and :port; anything else is undefined", () => {
  assert.deepEqual(splitHostPort("127.0.0.1:9001"), { host: "127.0.0.1", port: 9001 });
  assert.deepEqual(splitHostPort("db.internal:5432"), { host: "db.internal", port: 5432 });
  assert.deepEqual(splitHostPort("[::1]:80"), { host: "::1", port: 80 });
  assert.deepEqual(splitHostPort(":0"), { host: "", port: 0 });
  for (const bad of ["127.0.0.1", "::1:80", "host:65536", "host:", "host:http", "[::1]", "a]:1"]) {
    assert.equal(splitHostPort(bad), undefined, bad);
  }
});

Deno.test("joinHostPort and formatAddr bracket IPv6 hosts only", () => {
  assert.equal(joinHostPort("100.64.0.1", 443), "100.64.0.1:443");
  assert.equal(joinHostPort("fd7a:115c:a1e0::1", 80), "[fd7a:115c:a1e0::1]:80");
  assert.equal(formatAddr({ hostname: "::1", port: 9002 }), "[::1]:9002");
  assert.equal(formatAddr({ hostname: "0.0.0.0", port: 9002 }), "0.0.0.0:9002");
  for (const addr of ["10.0.0.1:1", "[fe80::1]:65535"]) {
    const split = splitHostPort(addr)!;
    assert.equal(joinHostPort(split.host, split.port), addr, "round trip");
  }
});

Deno.test("isLoopbackIp: 127/8, ::1 and IPv4-mapped 127/8", () => {
  for (const ip of ["127.0.0.1", "127.1.2.3", "::1", "::ffff:127.0.0.1"]) assert.ok(isLoopbackIp(ip), ip);
  for (const ip of ["100.64.0.1", "fd7a:115c:a1e0::1", "::ffff:10.0.0.1", "::2", "128.0.0.1"]) {
    assert.ok(!isLoopbackIp(ip), ip);
  }
});
