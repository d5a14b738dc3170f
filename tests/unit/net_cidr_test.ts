/** IP prefixes (`lib/net/cidr.ts`). */

import assert from "node:assert/strict";
import { cidrContains, neverDial, parseCidr } from "../../lib/net/cidr.ts";
import { parseIp } from "../../lib/net/ip.ts";

Deno.test("parseCidr: strict prefixes and bare addresses; the network with host bits cleared", () => {
  assert.deepEqual(
    [parseCidr("10.1.2.3/8")?.text, parseCidr("10.1.2.3/8")?.exact],
    ["10.0.0.0/8", false],
  );
  assert.deepEqual([parseCidr("100.64.0.7")?.text, parseCidr("100.64.0.7")?.exact], ["100.64.0.7/32", true]);
  assert.equal(parseCidr("fd7a::/16")?.bits, 16);
  assert.equal(parseCidr("::1")?.bits, 128);
  for (const bad of ["10.0.0.0/33", "10.0.0.0/08", "10.0.0.0/", "010.0.0.0/8", "fd7a::/129", "10/8", "x"]) {
    assert.equal(parseCidr(bad), undefined, bad);
  }
  assert.equal(parseCidr("10.1.255.3/12")?.text, "10.0.0.0/12");
  assert.equal(parseCidr("fd7a:ffff::1/20")?.text, "fd7a:f000::/20");
});

Deno.test("cidrContains: by family, IPv4-mapped IPv6 counted as IPv4", () => {
  const net = parseCidr("100.64.0.0/10")!;
  assert.equal(cidrContains(net, parseIp("100.127.255.255")!), true);
  assert.equal(cidrContains(net, parseIp("100.128.0.0")!), false);
  assert.equal(cidrContains(net, parseIp("::ffff:100.64.0.1")!), true);
  assert.equal(cidrContains(parseCidr("::/0")!, parseIp("10.0.0.1")!), false);
});

Deno.test("neverDial: loopback, link-local, unspecified, multicast, reserved; others pass", () => {
  const cases: [string, string | undefined][] = [
    ["127.0.0.1", "loopback"],
    ["::ffff:127.0.0.2", "loopback"],
    ["::1", "loopback"],
    ["169.254.169.254", "link-local"],
    ["fe80::1", "link-local"],
    ["0.0.0.0", "unspecified"],
    ["::", "unspecified"],
    ["239.1.1.1", "multicast"],
    ["ff02::1", "multicast"],
    ["255.255.255.255", "reserved"],
    ["100.64.0.1", undefined],
    ["10.0.0.1", undefined],
    ["fd7a:115c:a1e0::1", undefined],
  ];
  for (const [ip, why] of cases) assert.equal(neverDial(parseIp(ip)!), why, ip);
});
