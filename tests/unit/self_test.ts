/** Tests of running tailvoy itself as a child: the command under Deno, its permissions, and that it runs. */

import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { fileURLToPath } from "node:url";
import denoJson from "../../deno.json" with { type: "json" };
import { RUNTIME_PERMISSIONS, selfCommand } from "../../lib/self.ts";

const MAIN = fileURLToPath(new URL("../../main.ts", import.meta.url));

Deno.test("under Deno, the command runs main.ts from the cache with the runtime permissions", () => {
  const { command, args } = selfCommand(["authz-bridge", "--socket", "/tmp/x.sock"]);
  assert.equal(command, Deno.execPath());
  assert.deepEqual(args, [
    "run",
    "--cached-only",
    ...RUNTIME_PERMISSIONS,
    MAIN,
    "authz-bridge",
    "--socket",
    "/tmp/x.sock",
  ]);
  assert.ok(existsSync(MAIN));
  // The same permissions `deno task start` grants, no more and no fewer.
  const startFlags = denoJson.tasks.start.split("&&").at(-1)!.split(/\s+/).filter((w) =>
    w.startsWith("--allow")
  );
  assert.deepEqual(startFlags, [...RUNTIME_PERMISSIONS]);
});

Deno.test("the command really runs tailvoy: `version` prints the version", async () => {
  const { command, args } = selfCommand(["version"]);
  const out = await new Deno.Command(command, { args, stdin: "null", stdout: "piped", stderr: "piped" })
    .output();
  const stderr = new TextDecoder().decode(out.stderr);
  assert.equal(out.code, 0, stderr);
  assert.match(new TextDecoder().decode(out.stdout), new RegExp(denoJson.version.replaceAll(".", "\\.")));
});
