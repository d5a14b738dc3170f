/**
 * PROXY protocol codec and reader: round trips, strictness (every truncation, bit flips, v1 garbage),
 * the reader over real loopback TCP, and a cross-check against a real Envoy in both directions.
 */

import { withPair } from "../../scripts/harness/clients.ts";
import assert from "node:assert/strict";
import {
  decodeProxyHeader,
  encodeProxyV1,
  encodeProxyV2,
  type ProxyDecodeResult,
  type ProxyHeader,
  type ProxyHeaderInit,
  ProxyProtocolError,
  type ProxyProtocolErrorReason,
  readProxyHeader,
} from "../../lib/proxy_protocol/mod.ts";
import { crc32c } from "../../lib/proxy_protocol/crc32c.ts";
import { PEER_BINS } from "../../scripts/harness/peers.ts";
import { delay } from "../../lib/util/async.ts";

const text = (s: string) => new TextEncoder().encode(s);
const hex = (s: string) => Uint8Array.from(s.replace(/\s+/g, "").match(/../g)!.map((b) => parseInt(b, 16)));
const concat = (...parts: Uint8Array[]) => {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  parts.reduce((at, p) => (out.set(p, at), at + p.length), 0);
  return out;
};
const SIG = "0d0a0d0a000d0a515549540a";

const TCP4: ProxyHeaderInit = {
  command: "PROXY",
  transport: "tcp",
  source: { address: "100.64.1.2", port: 51234 },
  destination: { address: "100.64.0.1", port: 8443 },
};
const TCP6: ProxyHeaderInit = {
  command: "PROXY",
  transport: "tcp",
  source: { address: "fd7a:115c:a1e0::1", port: 40000 },
  destination: { address: "fd7a:115c:a1e0:ab12:4843:cd96:6258:b240", port: 443 },
};

function decoded(bytes: Uint8Array, options?: Parameters<typeof decodeProxyHeader>[1]) {
  const result = decodeProxyHeader(bytes, options);
  if ("needMore" in result) assert.fail(`expected a complete header, got needMore ${result.needMore}`);
  return result;
}

function assertThrowsReason(
  fn: () => unknown,
  reason: ProxyProtocolErrorReason,
  what: string,
): ProxyProtocolError {
  try {
    fn();
  } catch (error) {
    assert.ok(error instanceof ProxyProtocolError, `${what}: expected a ProxyProtocolError, got ${error}`);
    assert.equal(error.reason, reason, `${what}: ${error.message}`);
    return error;
  }
  assert.fail(`${what}: expected a ProxyProtocolError (${reason}), nothing was thrown`);
}

function expectHeader(init: ProxyHeaderInit, version: 1 | 2): ProxyHeader {
  return { version, tlvs: [], ...structuredClone(init) } as ProxyHeader;
}

Deno.test("v2 TCP4 encodes to the exact spec bytes and decodes back", () => {
  const bytes = encodeProxyV2(TCP4);
  // Built by hand from the spec: PROXY (0x21), TCP over IPv4 (0x11), 12 address bytes.
  assert.deepEqual(bytes, hex(`${SIG} 21 11 000c 64400102 64400001 c822 20fb`));
  assert.deepEqual(decoded(bytes), { header: expectHeader(TCP4, 2), consumed: 28 });
});

Deno.test("v2 round trips TCP4, TCP6, UDP4 and UDP6; payload after the header is not consumed", () => {
  const cases: ProxyHeaderInit[] = [
    TCP4,
    TCP6,
    { ...TCP4, transport: "udp" },
    { ...TCP6, transport: "udp" },
    {
      ...TCP4,
      source: { address: "0.0.0.0", port: 0 },
      destination: { address: "255.255.255.255", port: 65535 },
    },
  ];
  for (const init of cases) {
    const bytes = encodeProxyV2(init);
    assert.equal(bytes.length, init.source!.address.includes(":") ? 52 : 28);
    const { header, consumed } = decoded(concat(bytes, text("GET / HTTP/1.1\r\n")));
    assert.equal(consumed, bytes.length);
    assert.deepEqual(header, expectHeader(init, 2));
  }
});

Deno.test("v1 round trips TCP4, TCP6 and UNKNOWN with the exact spec text", () => {
  assert.equal(
    new TextDecoder().decode(encodeProxyV1(TCP4)),
    "PROXY TCP4 100.64.1.2 100.64.0.1 51234 8443\r\n",
  );
  assert.equal(
    new TextDecoder().decode(encodeProxyV1(TCP6)),
    "PROXY TCP6 fd7a:115c:a1e0::1 fd7a:115c:a1e0:ab12:4843:cd96:6258:b240 40000 443\r\n",
  );
  for (const init of [TCP4, TCP6]) {
    const bytes = encodeProxyV1(init);
    assert.deepEqual(decoded(concat(bytes, text("payload"))), {
      header: expectHeader(init, 1),
      consumed: bytes.length,
    });
  }
  const unknown = { version: 1, command: "PROXY", transport: "unspec", tlvs: [] };
  assert.deepEqual(decoded(text("PROXY UNKNOWN\r\nx")), { header: unknown, consumed: 15 });
  // The spec: anything after UNKNOWN up to the CRLF is ignored.
  const long =
    "PROXY UNKNOWN ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n";
  assert.equal(long.length, 107);
  assert.deepEqual(decoded(text(long)), { header: unknown, consumed: 107 });
  // v1 has no LOCAL: it is sent as UNKNOWN, as haproxy does for health checks.
  assert.equal(
    new TextDecoder().decode(encodeProxyV1({ command: "LOCAL", transport: "tcp" })),
    "PROXY UNKNOWN\r\n",
  );
});

Deno.test("v2 LOCAL: no addresses, or an address block that is ignored", () => {
  const bare = encodeProxyV2({ command: "LOCAL", transport: "unspec" });
  assert.deepEqual(bare, hex(`${SIG} 20 00 0000`));
  assert.deepEqual(decoded(bare), {
    header: { version: 2, command: "LOCAL", transport: "unspec", tlvs: [] },
    consumed: 16,
  });
  const withAddresses = encodeProxyV2({ ...TCP6, command: "LOCAL" });
  assert.equal(withAddresses.length, 52);
  assert.deepEqual(decoded(withAddresses).header, {
    version: 2,
    command: "LOCAL",
    transport: "tcp",
    tlvs: [],
  });
  // A LOCAL header's family is ignored, so even AF_UNIX is skipped over rather than refused.
  const unix = concat(hex(`${SIG} 20 31 00d8`), new Uint8Array(216));
  assert.deepEqual(decoded(unix), {
    header: { version: 2, command: "LOCAL", transport: "tcp", tlvs: [] },
    consumed: 232,
  });
  const withTlv = encodeProxyV2({
    command: "LOCAL",
    transport: "unspec",
    tlvs: [{ type: 0xe0, value: text("hc") }],
  });
  assert.deepEqual(decoded(withTlv).header.tlvs, [{ type: 0xe0, value: text("hc") }]);
});

Deno.test("v2 PROXY with AF_UNSPEC decodes without addresses; AF_UNIX is refused", () => {
  assert.deepEqual(decoded(encodeProxyV2({ command: "PROXY", transport: "unspec" })).header, {
    version: 2,
    command: "PROXY",
    transport: "unspec",
    tlvs: [],
  });
  const unix = concat(hex(`${SIG} 21 31 00d8`), new Uint8Array(216));
  const error = assertThrowsReason(() => decodeProxyHeader(unix), "unsupported", "AF_UNIX");
  assert.match(error.message, /AF_UNIX/);
  // Refused on the family byte alone, before the address block arrives.
  assertThrowsReason(() => decodeProxyHeader(unix.subarray(0, 14)), "unsupported", "AF_UNIX prefix");
});

Deno.test("v2 TLVs: custom 0xE0, several, empty, and in wire order", () => {
  const tlvs = [
    { type: 0x02, value: text("app.example.com") },
    { type: 0xe0, value: text("tailvoy") },
    { type: 0x04, value: new Uint8Array() },
    { type: 0xef, value: new Uint8Array(300).fill(7) },
  ];
  const bytes = encodeProxyV2({ ...TCP4, tlvs });
  assert.equal(bytes.length, 28 + 3 * 4 + 15 + 7 + 0 + 300);
  assert.deepEqual(bytes.subarray(28, 28 + 3 + 15), concat(hex("02 000f"), text("app.example.com")));
  assert.deepEqual(decoded(bytes).header, { ...expectHeader(TCP4, 2), tlvs });
});

Deno.test("v2 CRC32C TLV is verified", () => {
  const bytes = encodeProxyV2({ ...TCP4, tlvs: [{ type: 0xe0, value: text("x") }] }, { checksum: true });
  const { header } = decoded(bytes);
  assert.deepEqual(header.tlvs.map((t) => t.type), [0xe0, 0x03]);
  // The standard CRC32c check value, and a LOCAL header's 7-byte TLV.
  assert.equal(crc32c(text("123456789")), 0xe3069283);
  assert.equal(encodeProxyV2({ command: "LOCAL", transport: "unspec" }, { checksum: true }).length, 23);
  for (let i = 16; i < bytes.length; i++) {
    if (i === bytes.length - 7) continue; // the CRC TLV's type byte: flipped, it is just another TLV
    const corrupt = bytes.slice();
    corrupt[i] ^= 0x40;
    assert.throws(
      () => decodeProxyHeader(corrupt),
      ProxyProtocolError,
      `flip at ${i} must break the checksum`,
    );
  }
  assert.throws(
    () => encodeProxyV2({ ...TCP4, tlvs: [{ type: 3, value: new Uint8Array(4) }] }, { checksum: true }),
    TypeError,
  );
});

Deno.test("v2 TLV lengths must fit the header exactly", () => {
  const base = encodeProxyV2(TCP4);
  const withTail = (tail: string) => {
    const out = concat(base, hex(tail));
    new DataView(out.buffer).setUint16(14, out.length - 16);
    return out;
  };
  assertThrowsReason(() => decodeProxyHeader(withTail("e0")), "malformed", "1 stray byte");
  assertThrowsReason(() => decodeProxyHeader(withTail("e000")), "malformed", "2 stray bytes");
  assertThrowsReason(
    () => decodeProxyHeader(withTail("e00005 6162")),
    "malformed",
    "TLV overruns the header",
  );
  assertThrowsReason(() => decodeProxyHeader(withTail("030002 0000")), "malformed", "short CRC32C TLV");
  assert.deepEqual(decoded(withTail("e00002 6162")).header.tlvs, [{ type: 0xe0, value: text("ab") }]);
  // An address block shorter than the family needs.
  assertThrowsReason(
    () => decodeProxyHeader(hex(`${SIG} 21 11 000b 6440010264400001c82220`)),
    "malformed",
    "short IPv4 block",
  );
  assertThrowsReason(
    () => decodeProxyHeader(concat(hex(`${SIG} 21 21 000c`), new Uint8Array(12))),
    "malformed",
    "short IPv6 block",
  );
  // Known from the length field alone, before the block arrives.
  assertThrowsReason(
    () => decodeProxyHeader(hex(`${SIG} 21 21 000c`)),
    "malformed",
    "short IPv6 block, early",
  );
});

Deno.test("addresses come out canonical: IPv6 compressed lower case, IPv4-mapped dotted", () => {
  const cases: [string, string][] = [
    ["FD7A:115C:A1E0:0000:0000:0000:0000:0001", "fd7a:115c:a1e0::1"],
    ["2001:db8:0:0:1:0:0:1", "2001:db8::1:0:0:1"], // first of two equal runs
    ["2001:0db8:0000:0001:0000:0000:0000:0001", "2001:db8:0:1::1"], // longest run wins
    ["2001:db8:0:1:1:1:1:1", "2001:db8:0:1:1:1:1:1"], // one zero group is not compressed
    ["0:0:0:0:0:0:0:0", "::"],
    ["0:0:0:0:0:0:0:1", "::1"],
    ["1:0:0:0:0:0:0:0", "1::"],
    ["::ffff:100.64.0.1", "::ffff:100.64.0.1"],
    ["0:0:0:0:0:ffff:6440:0001", "::ffff:100.64.0.1"],
  ];
  for (const [input, canonical] of cases) {
    const line = text(`PROXY TCP6 ${input} ::1 1 2\r\n`);
    assert.equal(decoded(line).header.source?.address, canonical, input);
    const v2 = encodeProxyV2({ ...TCP6, source: { address: input, port: 1 } });
    assert.equal(decoded(v2).header.source?.address, canonical, input);
    assert.equal(
      new TextDecoder().decode(encodeProxyV1({ ...TCP6, source: { address: input, port: 1 } })).split(" ")[2],
      canonical,
    );
  }
});

Deno.test("every truncation of a valid header asks for more, never throws or mis-parses", () => {
  const headers = [
    encodeProxyV2(TCP4),
    encodeProxyV2(TCP6),
    encodeProxyV2({
      ...TCP4,
      transport: "udp",
      tlvs: [{ type: 0xe0, value: text("abc") }, { type: 1, value: text("h2") }],
    }, {
      checksum: true,
    }),
    encodeProxyV2({ command: "LOCAL", transport: "unspec" }),
    encodeProxyV1(TCP4),
    encodeProxyV1(TCP6),
    text("PROXY UNKNOWN\r\n"),
  ];
  for (const full of headers) {
    for (let cut = 0; cut < full.length; cut++) {
      let result: ProxyDecodeResult;
      try {
        result = decodeProxyHeader(full.subarray(0, cut));
      } catch (error) {
        assert.fail(
          `prefix ${cut}/${full.length} of ${JSON.stringify([...full.subarray(0, 16)])} threw: ${error}`,
        );
      }
      assert.ok("needMore" in result, `prefix ${cut}/${full.length} must not parse`);
      // Never more than is really missing, or a reader waiting for it could hang.
      assert.ok(
        result.needMore >= 1 && result.needMore <= full.length - cut,
        `needMore ${result.needMore} at ${cut}`,
      );
    }
    assert.equal(decoded(concat(full, text("\r\n\r\nmore"))).consumed, full.length);
  }
});

Deno.test("v2: bit flips in signature, version, command and family are rejected", () => {
  const full = encodeProxyV2(TCP4);
  // The one single-bit flip that still spells a valid header: PROXY -> LOCAL.
  const valid = new Set(["12:0x20"]);
  for (let i = 0; i < 14; i++) {
    for (let bit = 0; bit < 8; bit++) {
      const flipped = full.slice();
      flipped[i] ^= 1 << bit;
      const id = `${i}:0x${flipped[i].toString(16)}`;
      if (valid.has(id)) {
        assert.ok("header" in decodeProxyHeader(flipped), id);
        continue;
      }
      assert.throws(() => decodeProxyHeader(flipped), ProxyProtocolError, `flip ${id} must throw`);
      // Rejected as soon as the flipped byte is present, without waiting for the rest.
      assert.throws(() => decodeProxyHeader(flipped.subarray(0, i + 1)), ProxyProtocolError, `early ${id}`);
    }
  }
  assertThrowsReason(() => decodeProxyHeader(hex(`${SIG} 11`)), "malformed", "version 1 in binary");
  assertThrowsReason(() => decodeProxyHeader(hex(`${SIG} 22`)), "malformed", "command 2");
  assertThrowsReason(() => decodeProxyHeader(hex(`${SIG} 21 41`)), "malformed", "family 4");
  assertThrowsReason(() => decodeProxyHeader(hex(`${SIG} 21 13`)), "malformed", "transport 3");
  assertThrowsReason(() => decodeProxyHeader(hex(`${SIG} 21 01`)), "malformed", "UNSPEC family with STREAM");
  assertThrowsReason(
    () => decodeProxyHeader(hex(`${SIG} 21 10`)),
    "malformed",
    "INET family with UNSPEC transport",
  );
});

Deno.test("v2 header size is capped, early, and the cap is configurable", () => {
  const huge = hex(`${SIG} 21 11 ffff`);
  const error = assertThrowsReason(() => decodeProxyHeader(huge), "too-large", "65551-byte header");
  assert.match(error.message, /65551 bytes exceeds the limit of 4096/);
  const withTlv = encodeProxyV2({ ...TCP4, tlvs: [{ type: 0xe0, value: new Uint8Array(100) }] });
  assert.equal(withTlv.length, 131);
  assertThrowsReason(
    () => decodeProxyHeader(withTlv.subarray(0, 16), { maxBytes: 130 }),
    "too-large",
    "over cap",
  );
  assert.equal(decoded(withTlv, { maxBytes: 131 }).consumed, 131);
  assert.equal(decoded(concat(huge, new Uint8Array(0xffff)), { maxBytes: 65551 }).consumed, 65551);
  assert.throws(() => decodeProxyHeader(huge, { maxBytes: 70000 }), RangeError);
});

Deno.test("v1 garbage is rejected", () => {
  const bad: [string, ProxyProtocolErrorReason][] = [
    ["PROXY TCP4 999.1.1.1 1.1.1.1 1 2\r\n", "malformed"],
    ["PROXY TCP4 01.1.1.1 1.1.1.1 1 2\r\n", "malformed"],
    ["PROXY TCP4 1.1.1 1.1.1.1 1 2\r\n", "malformed"],
    ["PROXY TCP4 1.1.1.1 1.1.1.1 01 2\r\n", "malformed"],
    ["PROXY TCP4 1.1.1.1 1.1.1.1 +1 2\r\n", "malformed"],
    ["PROXY TCP4 1.1.1.1 1.1.1.1 1 65536\r\n", "malformed"],
    ["PROXY TCP4 1.1.1.1 1.1.1.1 1 -2\r\n", "malformed"],
    ["PROXY TCP4 1.1.1.1  1.1.1.1 1 2\r\n", "malformed"],
    ["PROXY TCP4 1.1.1.1 1.1.1.1 1 2 \r\n", "malformed"],
    ["PROXY TCP4 1.1.1.1 1.1.1.1 1\r\n", "malformed"],
    ["PROXY TCP4 ::1 ::1 1 2\r\n", "malformed"],
    ["PROXY TCP6 1.1.1.1 1.1.1.1 1 2\r\n", "malformed"],
    ["PROXY TCP6 fe80::1%eth0 ::1 1 2\r\n", "malformed"],
    ["PROXY TCP6 [::1] ::1 1 2\r\n", "malformed"],
    ["PROXY TCP6 1::2::3 ::1 1 2\r\n", "malformed"],
    ["PROXY UDP4 1.1.1.1 1.1.1.1 1 2\r\n", "malformed"],
    ["PROXY tcp4 1.1.1.1 1.1.1.1 1 2\r\n", "malformed"],
    ["PROXY UNKNOWNX\r\n", "malformed"],
    ["PROXY \r\n", "malformed"],
    ["PROXY TCP4 1.1.1.1 1.1.1.1 1 2\n", "malformed"], // LF without CR
    ["PROXY TCP4 1.1.1.1 1.1.1.1 1 2\rX", "malformed"], // CR without LF
    ["PROXY TCP4\t1.1.1.1 1.1.1.1 1 2\r\n", "malformed"],
    ["PROXY TCP4 1.1.1.1 1.1.1.1 1 2\0\r\n", "malformed"],
    [`PROXY UNKNOWN ${"x".repeat(92)}\r\n`, "too-large"], // 108 bytes: the CRLF ends past byte 107
    [`PROXY UNKNOWN ${"x".repeat(92)}`, "too-large"], // known too long before the CRLF arrives
    [`PROXY UNKNOWN ${"x".repeat(200)}`, "too-large"],
    ["PROXYTCP4 1.1.1.1 1.1.1.1 1 2\r\n", "not-proxy"],
    ["proxy TCP4 1.1.1.1 1.1.1.1 1 2\r\n", "not-proxy"],
  ];
  for (const [line, reason] of bad) {
    assertThrowsReason(() => decodeProxyHeader(text(line)), reason, JSON.stringify(line));
  }
  assert.equal(decoded(text(`PROXY UNKNOWN ${"x".repeat(91)}\r\n`)).consumed, 107);
});

Deno.test("bytes that cannot start a PROXY header fail at once with not-proxy", () => {
  const cases: [string, Uint8Array][] = [
    ["TLS ClientHello", hex("16 03 01 02 00 01")],
    ["TLS first byte alone", hex("16")],
    ["HTTP GET", text("GET / HTTP/1.1\r\n")],
    ["HTTP POST", text("POST /")],
    ["HTTP PUT", text("PU")],
    ["SSH", text("SSH-2.0-OpenSSH_9.6\r\n")],
    ["HTTP/2 preface", text("PRI * HTTP/2.0")],
    ["CR then LF then garbage", hex("0d 0a 0d 0a 01")],
  ];
  for (const [what, bytes] of cases) {
    const error = assertThrowsReason(() => decodeProxyHeader(bytes), "not-proxy", what);
    assert.match(error.message, /0x|PROXY/);
  }
  assert.match(assertThrowsReason(() => decodeProxyHeader(hex("16")), "not-proxy", "TLS").message, /TLS/);
  assert.deepEqual(decodeProxyHeader(new Uint8Array()), { needMore: 15 });
  // Restricting versions: a v1 line is then not a PROXY header for this listener.
  assertThrowsReason(
    () => decodeProxyHeader(encodeProxyV1(TCP4), { versions: [2] }),
    "not-proxy",
    "v1 when only v2",
  );
  assert.deepEqual(decodeProxyHeader(new Uint8Array(), { versions: [2] }), { needMore: 16 });
  assert.equal(decoded(encodeProxyV2(TCP4), { versions: [2] }).consumed, 28);
});

Deno.test("encoders refuse headers they cannot express", () => {
  const bad: [string, () => unknown][] = [
    ["mixed families", () => encodeProxyV2({ ...TCP4, destination: { address: "::1", port: 1 } })],
    ["port 65536", () => encodeProxyV2({ ...TCP4, source: { address: "1.1.1.1", port: 65536 } })],
    ["port 1.5", () => encodeProxyV2({ ...TCP4, source: { address: "1.1.1.1", port: 1.5 } })],
    ["leading zero", () => encodeProxyV2({ ...TCP4, source: { address: "1.1.1.01", port: 1 } })],
    ["brackets", () => encodeProxyV2({ ...TCP6, source: { address: "[::1]", port: 1 } })],
    ["hostname", () => encodeProxyV2({ ...TCP4, source: { address: "localhost", port: 1 } })],
    ["no addresses", () => encodeProxyV2({ command: "PROXY", transport: "tcp" })],
    ["one address", () => encodeProxyV2({ ...TCP4, destination: undefined })],
    ["unspec with addresses", () => encodeProxyV2({ ...TCP4, transport: "unspec" })],
    ["TLV type 256", () => encodeProxyV2({ ...TCP4, tlvs: [{ type: 256, value: new Uint8Array() }] })],
    [
      "TLVs over 64 KiB",
      () =>
        encodeProxyV2({ ...TCP4, tlvs: [0, 1].map(() => ({ type: 0xe0, value: new Uint8Array(40000) })) }),
    ],
    ["v1 UDP", () => encodeProxyV1({ ...TCP4, transport: "udp" })],
    ["v1 TLVs", () => encodeProxyV1({ ...TCP4, tlvs: [{ type: 0xe0, value: new Uint8Array() }] })],
    ["bad command", () => encodeProxyV2({ ...TCP4, command: "PING" as "PROXY" })],
  ];
  for (const [what, fn] of bad) assert.throws(fn, TypeError, what);
});

// --- readProxyHeader over real loopback TCP ---

async function rejectsWith(
  promise: Promise<unknown>,
  reason: ProxyProtocolErrorReason,
): Promise<ProxyProtocolError> {
  try {
    await promise;
  } catch (error) {
    assert.ok(error instanceof ProxyProtocolError, `expected a ProxyProtocolError, got ${error}`);
    assert.equal(error.reason, reason, error.message);
    return error;
  }
  assert.fail(`expected a rejection with reason ${reason}`);
}

Deno.test("readProxyHeader: a header split across many tiny writes", async () => {
  for (const bytes of [encodeProxyV2(TCP6), encodeProxyV1(TCP4)]) {
    await withPair(async (client, server) => {
      client.setNoDelay(true);
      const reading = readProxyHeader(server, { timeoutMs: 2000 });
      for (const b of bytes) {
        await client.write(Uint8Array.of(b));
        await delay(1);
      }
      const { header, rest } = await reading;
      assert.deepEqual(header, expectHeader(bytes[0] === 0x0d ? TCP6 : TCP4, bytes[0] === 0x0d ? 2 : 1));
      assert.equal(rest.length, 0);
    });
  }
});

Deno.test("readProxyHeader: payload in the same write comes back as rest", async () => {
  await withPair(async (client, server) => {
    const payload = text("\x16\x03\x01 not really TLS, but payload");
    await client.write(
      concat(encodeProxyV2({ ...TCP4, tlvs: [{ type: 0xe0, value: text("id") }] }), payload),
    );
    const { header, rest } = await readProxyHeader(server);
    assert.deepEqual(header.source, TCP4.source);
    assert.deepEqual(rest, payload);
  });
});

Deno.test("readProxyHeader: a slow sender times out, then closing the conn settles the pending read", async () => {
  await withPair(async (client, server) => {
    await client.write(encodeProxyV2(TCP4).subarray(0, 20));
    const start = performance.now();
    const error = await rejectsWith(readProxyHeader(server, { timeoutMs: 150 }), "timeout");
    const elapsed = performance.now() - start;
    assert.ok(elapsed >= 140 && elapsed < 1000, `timed out after ${elapsed} ms`);
    assert.match(error.message, /150 ms with 20 bytes read/);
  });
});

Deno.test("readProxyHeader: the deadline covers the whole header, not each read", async () => {
  await withPair(async (client, server) => {
    const bytes = encodeProxyV2(TCP4);
    const reading = readProxyHeader(server, { timeoutMs: 200 });
    // A byte every 20 ms would reset a per-read timeout forever; 28 bytes take ~560 ms.
    const trickle = (async () => {
      for (const b of bytes) {
        try {
          await client.write(Uint8Array.of(b));
        } catch {
          return;
        }
        await delay(20);
      }
    })();
    await rejectsWith(reading, "timeout");
    server.close();
    client.close();
    await trickle;
  });
});

Deno.test("readProxyHeader: TLS or HTTP first fails immediately with not-proxy", async () => {
  const cases: [Uint8Array, ProxyProtocolErrorReason][] = [
    [hex("16"), "not-proxy"],
    [hex("16 03 01 00 c8 01"), "not-proxy"],
    [text("GET / HTTP/1.1\r\nHost: x\r\n\r\n"), "not-proxy"],
    [text("PO"), "not-proxy"],
    [text("PROXY TCP4 1.1.1.1 1.1.1.1 1 2\n"), "malformed"],
  ];
  for (const [first, reason] of cases) {
    await withPair(async (client, server) => {
      await client.write(first);
      const start = performance.now();
      await rejectsWith(readProxyHeader(server, { timeoutMs: 5000 }), reason);
      assert.ok(performance.now() - start < 500, "rejected without waiting for the deadline");
    });
  }
  // A lone "P" could still become "PROXY": that one has to wait.
  await withPair(async (client, server) => {
    await client.write(text("P"));
    await rejectsWith(readProxyHeader(server, { timeoutMs: 100 }), "timeout");
  });
});

Deno.test("readProxyHeader: a timeout must be positive", async () => {
  const never = { read: () => new Promise<number | null>(() => {}) };
  for (const timeoutMs of [0, -1, NaN]) {
    await assert.rejects(readProxyHeader(never, { timeoutMs }), RangeError, String(timeoutMs));
  }
});

Deno.test("readProxyHeader: EOF before the header is complete", async () => {
  await withPair(async (client, server) => {
    await client.write(text("PROXY TCP4 1.1"));
    client.closeWrite();
    const error = await rejectsWith(readProxyHeader(server), "eof");
    assert.match(error.message, /after 14 bytes/);
  });
  await withPair(async (client, server) => {
    client.closeWrite();
    await rejectsWith(readProxyHeader(server), "eof");
  });
});

// --- Cross-check against a real Envoy ---

interface Seen {
  header: ProxyHeader;
  payload: string;
}

/** An upstream that reads the PROXY header Envoy sends, then answers with what it saw as JSON. */
function startUpstream(): { port: number; close: () => Promise<void> } {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const handlers: Promise<void>[] = [];
  const serve = async (conn: Deno.Conn) => {
    try {
      const { header, rest } = await readProxyHeader(conn, { timeoutMs: 3000 });
      let payload = new TextDecoder().decode(rest);
      const buf = new Uint8Array(1024);
      while (!payload.endsWith("\n")) {
        const n = await conn.read(buf);
        if (n === null) break;
        payload += new TextDecoder().decode(buf.subarray(0, n));
      }
      const tlvs = header.tlvs.map((t) => ({ type: t.type, value: [...t.value] }));
      await conn.write(text(JSON.stringify({ header: { ...header, tlvs }, payload })));
    } catch (error) {
      await conn.write(text(JSON.stringify({ error: String(error) }))).catch(() => {});
    } finally {
      conn.close();
    }
  };
  const accepting = (async () => {
    for await (const conn of listener) handlers.push(serve(conn));
  })();
  return {
    port: listener.addr.port,
    close: async () => {
      listener.close();
      await accepting.catch(() => {});
      await Promise.all(handlers);
    },
  };
}

function envoyConfig(upstreamPort: number): unknown {
  const socket = (port: number) => ({ socket_address: { address: "127.0.0.1", port_value: port } });
  const typed = (type: string, rest: Record<string, unknown> = {}) => ({
    "@type": `type.googleapis.com/${type}`,
    ...rest,
  });
  return {
    admin: { address: socket(0) },
    static_resources: {
      listeners: [{
        name: "pp",
        address: socket(0),
        listener_filters: [{
          name: "envoy.filters.listener.proxy_protocol",
          typed_config: typed("envoy.extensions.filters.listener.proxy_protocol.v3.ProxyProtocol", {
            pass_through_tlvs: { match_type: "INCLUDE_ALL" },
          }),
        }],
        filter_chains: [{
          filters: [{
            name: "envoy.filters.network.tcp_proxy",
            typed_config: typed("envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy", {
              stat_prefix: "pp",
              cluster: "up",
            }),
          }],
        }],
      }],
      clusters: [{
        name: "up",
        connect_timeout: "1s",
        type: "STATIC",
        load_assignment: {
          cluster_name: "up",
          endpoints: [{ lb_endpoints: [{ endpoint: { address: socket(upstreamPort) } }] }],
        },
        transport_socket: {
          name: "envoy.transport_sockets.upstream_proxy_protocol",
          typed_config: typed(
            "envoy.extensions.transport_sockets.proxy_protocol.v3.ProxyProtocolUpstreamTransport",
            {
              config: { version: "V2", pass_through_tlvs: { match_type: "INCLUDE_ALL" } },
              transport_socket: {
                name: "envoy.transport_sockets.raw_buffer",
                typed_config: typed("envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer"),
              },
            },
          ),
        },
      }],
    },
  };
}

/** Runs Envoy until `fn` returns, then stops it; resolves `fn` with the listener's port. */
async function withEnvoy(upstreamPort: number, fn: (port: number) => Promise<void>): Promise<void> {
  try {
    await Deno.stat(PEER_BINS.envoy);
  } catch {
    assert.fail(`Envoy is not installed at ${PEER_BINS.envoy}: run \`deno task peers\``);
  }
  const dir = await Deno.makeTempDir({ prefix: "tailvoy-pp-envoy-" });
  const adminPath = `${dir}/admin`;
  const child = new Deno.Command(PEER_BINS.envoy, {
    args: [
      "--config-yaml",
      JSON.stringify(envoyConfig(upstreamPort)),
      "--disable-hot-restart",
      "--concurrency",
      "1",
      "--log-level",
      "warn",
      "--admin-address-path",
      adminPath,
    ],
    stdin: "null",
    stdout: "null",
    stderr: "piped",
  }).spawn();
  let stderr = "";
  const draining = child.stderr.pipeThrough(new TextDecoderStream()).pipeTo(
    new WritableStream({ write: (chunk) => void (stderr += chunk) }),
  );
  let exited = false;
  const status = child.status.then((s) => (exited = true, s));
  try {
    const port = await envoyListenerPort(adminPath, () => exited, () => stderr);
    await fn(port);
  } finally {
    if (!exited) child.kill("SIGTERM");
    const timer = setTimeout(() => !exited && child.kill("SIGKILL"), 3000);
    await status;
    clearTimeout(timer);
    await draining;
    await Deno.remove(dir, { recursive: true });
  }
}

async function envoyListenerPort(
  adminPath: string,
  exited: () => boolean,
  stderr: () => string,
): Promise<number> {
  const deadline = Date.now() + 15000;
  while (Date.now() < deadline) {
    if (exited()) assert.fail(`Envoy exited during startup:\n${stderr()}`);
    const admin = await Deno.readTextFile(adminPath).catch(() => "");
    if (admin) {
      const res = await fetch(`http://${admin.trim()}/listeners?format=json`).catch(() => undefined);
      const body = res?.ok ? await res.json() : (await res?.body?.cancel(), undefined);
      const port = body?.listener_statuses?.[0]?.local_address?.socket_address?.port_value;
      if (port) return port;
    }
    await delay(50);
  }
  assert.fail(`Envoy did not start its listener within 15 s:\n${stderr()}`);
}

/** Connects to Envoy, sends `bytes`, and returns what the upstream saw. */
async function throughEnvoy(port: number, bytes: Uint8Array): Promise<Seen & { localPort: number }> {
  const conn = await Deno.connect({ hostname: "127.0.0.1", port });
  try {
    await conn.write(bytes);
    let answer = "";
    const buf = new Uint8Array(4096);
    for (let n; (n = await conn.read(buf)) !== null;) answer += new TextDecoder().decode(buf.subarray(0, n));
    const seen = JSON.parse(answer || '{"error":"Envoy closed the connection without an answer"}');
    if (seen.error) assert.fail(`upstream: ${seen.error}`);
    seen.header.tlvs = seen.header.tlvs.map((t: { type: number; value: number[] }) => ({
      type: t.type,
      value: Uint8Array.from(t.value),
    }));
    return { ...seen, localPort: conn.localAddr.port };
  } finally {
    conn.close();
  }
}

Deno.test("PROXY headers against real Envoy: Envoy accepts ours, and we decode Envoy's", async () => {
  const upstream = startUpstream();
  try {
    await withEnvoy(upstream.port, async (port) => {
      const tlvs = [{ type: 0x02, value: text("app.example.com") }, {
        type: 0xe0,
        value: text("tailvoy-id"),
      }];
      // Our v2 TCP4 with TLVs in; Envoy's v2 out must carry the same endpoints and pass the TLVs through.
      const v4 = await throughEnvoy(port, concat(encodeProxyV2({ ...TCP4, tlvs }), text("ping\n")));
      assert.equal(v4.payload, "ping\n");
      assert.deepEqual(v4.header, { ...expectHeader(TCP4, 2), tlvs });

      const v6 = await throughEnvoy(port, concat(encodeProxyV2(TCP6), text("six\n")));
      assert.deepEqual(v6.header, expectHeader(TCP6, 2));

      const v1 = await throughEnvoy(port, concat(encodeProxyV1(TCP4), text("one\n")));
      assert.deepEqual(v1.header, expectHeader(TCP4, 2));

      // LOCAL: Envoy keeps the real endpoints, and says so to the upstream.
      const local = await throughEnvoy(
        port,
        concat(encodeProxyV2({ command: "LOCAL", transport: "unspec" }), text("hc\n")),
      );
      assert.equal(local.header.command, "PROXY");
      assert.deepEqual(local.header.source, { address: "127.0.0.1", port: local.localPort });
      assert.deepEqual(local.header.destination, { address: "127.0.0.1", port });

      // Our checksum TLV must not upset Envoy either.
      const summed = await throughEnvoy(port, concat(encodeProxyV2(TCP4, { checksum: true }), text("crc\n")));
      assert.deepEqual(summed.header.source, TCP4.source);
    });
  } finally {
    await upstream.close();
  }
});
