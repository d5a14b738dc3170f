/** Tests of own-property lookups: names from outside never reach Object.prototype. */

import assert from "node:assert/strict";
import { own, setOwn } from "../../lib/util/own.ts";

Deno.test("own: a record's own properties only", () => {
  const record: Record<string, number> = { web: 1, zero: 0 };
  assert.equal(own(record, "web"), 1);
  assert.equal(own(record, "zero"), 0);
  assert.equal(own(record, "db"), undefined);
  for (const key of ["constructor", "toString", "valueOf", "__proto__", "hasOwnProperty"]) {
    assert.equal(own(record, key), undefined, key);
  }
  assert.equal(own(null, "web"), undefined);
  assert.equal(own(undefined, "web"), undefined);
  const bare = Object.assign(Object.create(null), { web: 2 }) as Record<string, number>;
  assert.equal(own(bare, "web"), 2);
});

Deno.test("own: a key named like a prototype member is found when it is the record's own", () => {
  const parsed = JSON.parse('{"constructor": "c", "__proto__": "p"}') as Record<string, string>;
  assert.equal(own(parsed, "constructor"), "c");
  assert.equal(own(parsed, "__proto__"), "p");
});

Deno.test("setOwn: __proto__ becomes a plain enumerable property, the prototype stays", () => {
  const record: Record<string, unknown> = {};
  setOwn(record, "__proto__", { polluted: true });
  setOwn(record, "web", 1);
  assert.equal(Object.getPrototypeOf(record), Object.prototype);
  assert.equal((record as { polluted?: boolean }).polluted, undefined);
  assert.deepEqual(Object.keys(record), ["__proto__", "web"]);
  assert.deepEqual(own(record, "__proto__"), { polluted: true });
  assert.equal(JSON.stringify(record), '{"__proto__":{"polluted":true},"web":1}');
  // Still writable: a second set replaces the value.
  setOwn(record, "web", 2);
  assert.equal(record.web, 2);
});
