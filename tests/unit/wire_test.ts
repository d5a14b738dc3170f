/**
 * Tests of the relay/Envoy/ext_authz contract: relay secrets (fresh ones are usable, weak ones are
 * refused without echoing them), the Service index both ends share, and the header names.
 */

import assert from "node:assert/strict";
import {
  AUTHZ_HEADERS,
  generateSecret,
  SECRET_TLV_TYPE,
  secretProblem,
  ServiceIndex,
  TAILVOY_HEADER_PREFIX,
} from "../../lib/wire.ts";

Deno.test("generateSecret: 43 base64url characters, usable, different each time", () => {
  const secrets = new Set<string>();
  for (let i = 0; i < 50; i++) {
    const secret = generateSecret();
    assert.match(secret, /^[A-Za-z0-9_-]{43}$/);
    assert.equal(secretProblem(secret), undefined);
    secrets.add(secret);
  }
  assert.equal(secrets.size, 50);
});

Deno.test("secretProblem: too short or not printable ASCII, named by length, never by value", () => {
  assert.equal(secretProblem("x".repeat(16)), undefined);
  assert.equal(secretProblem("!~".repeat(8)), undefined);
  const short = "abcdefghijklmno";
  assert.equal(secretProblem(short), "Secret of 15 characters is too short: use at least 16");
  assert.equal(secretProblem(""), "Secret of 0 characters is too short: use at least 16");
  for (
    const secret of [
      "has a space inside!",
      "tab\tseparated-secret",
      "accentué-secret-long",
      "nul\0secret-long-x",
    ]
  ) {
    const problem = secretProblem(secret);
    assert.equal(
      problem,
      `Secret of ${secret.length} characters is not printable ASCII: Envoy would alter it in metadata`,
    );
    assert.ok(!problem!.includes(secret));
  }
});

Deno.test("ServiceIndex: port 0 is the node, each Service gets a stable port, unknown ports are undefined", () => {
  const index = new ServiceIndex();
  assert.equal(index.portOf(undefined), 0);
  assert.equal(index.portOf(""), 0);
  assert.equal(index.serviceAt(0), "");
  assert.equal(index.portOf("svc:web"), 1);
  assert.equal(index.portOf("svc:db"), 2);
  assert.equal(index.portOf("svc:web"), 1);
  assert.equal(index.serviceAt(1), "svc:web");
  assert.equal(index.serviceAt(2), "svc:db");
  // A port no Service was given did not come from our relay: the check must deny it.
  for (const port of [3, 65535, -1, 1.5, NaN, Infinity]) assert.equal(index.serviceAt(port), undefined);
  // Names that are members of Object.prototype are Services like any other.
  assert.equal(index.portOf("constructor"), 3);
  assert.equal(index.portOf("__proto__"), 4);
  assert.equal(index.serviceAt(4), "__proto__");
});

Deno.test("ServiceIndex: more than 65,535 Services is an error naming the one refused", () => {
  const index = new ServiceIndex();
  for (let i = 1; i <= 65535; i++) assert.equal(index.portOf(`svc:s${i}`), i);
  assert.throws(
    () => index.portOf("svc:one-too-many"),
    /More than 65,535 Tailscale Services: cannot index svc:one-too-many/,
  );
  assert.equal(index.portOf("svc:s65535"), 65535, "known Services keep their ports");
});

Deno.test("wire constants: the TLV is in the custom range, every authz header is tailvoy's and frozen", () => {
  assert.ok(SECRET_TLV_TYPE >= 0xe0 && SECRET_TLV_TYPE <= 0xef);
  const names = Object.values(AUTHZ_HEADERS);
  assert.equal(new Set(names).size, names.length);
  for (const name of names) {
    assert.ok(name.startsWith(TAILVOY_HEADER_PREFIX), name);
    assert.equal(name, name.toLowerCase());
  }
  assert.ok(Object.isFrozen(AUTHZ_HEADERS));
});
