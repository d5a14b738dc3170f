/**
 * `tailvoy check` / `tailvoy test` decisions without a tailnet: capabilities given directly, listener
 * names checked against a static config, and any name accepted in discovery mode (Envoy names them).
 */

import assert from "node:assert/strict";
import { CheckInputError, decide, identityFromCaps } from "../../lib/commands/check.ts";
import { parseConfig } from "../../lib/config/mod.ts";

const CAP = "rajsingh.info/cap/tailvoy";
const alice = identityFromCaps({
  [CAP]: [{ listeners: ["web"], routes: ["/api/*"] }, { listeners: ["default/eg/tcp"] }],
});

Deno.test("decide: static config — listener names checked, L4 or L7 from the listener's protocol", () => {
  const config = parseConfig(
    [
      "tailscale: {serviceMappings: {gw: [web, db]}}",
      "listeners:",
      "  web: {port: 80, protocol: http, backend: '127.0.0.1:8080'}",
      "  db: {port: 5432, protocol: tcp, backend: '127.0.0.1:5432'}",
    ].join("\n"),
    { env: {} },
  );
  assert.equal(decide(alice, { listener: "web", path: "/api/x" }, { config }).allow, true);
  assert.equal(decide(alice, { listener: "web", path: "/admin" }, { config }).allow, false);
  assert.equal(decide(alice, { listener: "db" }, { config }).allow, false);
  assert.throws(
    () => decide(alice, { listener: "nope" }, { config }),
    (err) =>
      err instanceof CheckInputError && /Unknown listener "nope": the config has web, db/.test(err.message),
  );
  // Not a listener, though a plain object has a member of that name.
  for (const name of ["toString", "constructor", "__proto__", "hasOwnProperty"]) {
    assert.throws(() => decide(alice, { listener: name }, { config }), CheckInputError, name);
  }
});

Deno.test("decide: discovery config — any listener name (Envoy's), L7 when a path is given", () => {
  const config = parseConfig(
    [
      "tailscale: {serviceMappings: {eg: ['^default/eg/']}}",
      "discovery: {envoyAdmin: 'http://127.0.0.1:19000', envoyAddress: 127.0.0.1}",
    ].join("\n"),
    { env: {} },
  );
  assert.equal(decide(alice, { listener: "default/eg/tcp" }, { config }).allow, true);
  assert.equal(decide(alice, { listener: "web", path: "/api/users" }, { config }).allow, true);
  assert.equal(decide(alice, { listener: "default/eg/http", path: "/api/users" }, { config }).allow, false);
});
