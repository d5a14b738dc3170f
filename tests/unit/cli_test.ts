/** Tests of command-line parsing: tailvoy's Go-style flags, subcommands, Envoy pass-through, errors. */

import assert from "node:assert/strict";
import { parseCli, UsageError } from "../../lib/cli.ts";

Deno.test("Go-style single-dash flags are accepted like tailvoy's", () => {
  const a = parseCli(["-config", "c.yaml", "-authz-addr=0.0.0.0:9001", "-log-level", "debug"]);
  assert.equal(a.command, "run");
  assert.equal(a.values.config, "c.yaml");
  assert.equal(a.values["authz-addr"], "0.0.0.0:9001");
  assert.equal(a.values["log-level"], "debug");
});

Deno.test("GNU-style flags and short flags", () => {
  const a = parseCli(["validate", "--config=x.yaml"]);
  assert.equal(a.command, "validate");
  assert.equal(a.values.config, "x.yaml");
  assert.equal(parseCli(["-c", "y.yaml"]).values.config, "y.yaml");
  assert.equal(parseCli(["-h"]).command, "help");
  assert.equal(parseCli(["--version"]).command, "version");
});

Deno.test("everything after -- goes to Envoy untouched, even flags we know", () => {
  const a = parseCli(["-config", "c.yaml", "--", "-c", "/etc/envoy.yaml", "--log-level", "warn", "-config"]);
  assert.equal(a.values.config, "c.yaml");
  assert.deepEqual(a.envoyArgs, ["-c", "/etc/envoy.yaml", "--log-level", "warn", "-config"]);
});

Deno.test("subcommand positionals are kept", () => {
  const a = parseCli(["test", "cases.yaml", "--socket", "/tmp/s"]);
  assert.equal(a.command, "test");
  assert.deepEqual(a.positionals, ["cases.yaml"]);
  assert.equal(a.values.socket, "/tmp/s");
});

Deno.test("unknown flags and commands are usage errors naming the input", () => {
  assert.throws(
    () => parseCli(["--frobnicate"]),
    (e: Error) => e instanceof UsageError && /frobnicate/.test(e.message),
  );
  assert.throws(
    () => parseCli(["serve"]),
    (e: Error) => e instanceof UsageError && /Unknown command "serve"/.test(e.message),
  );
  assert.throws(() => parseCli(["--config"]), UsageError);
});
