/**
 * `deno task dev` as a newcomer uses it: it starts (tailnet in a box, backends, Envoy, the proxy),
 * prints commands with the decision each should get, the commands give exactly that, and Ctrl-C tears
 * it all down.
 */

import assert from "node:assert/strict";
import { PROJECT_ROOT } from "../scripts/peers.ts";
import { waitFor } from "./harness/tailnet.ts";

Deno.test({
  name: "deno task dev prints commands whose results match the printed decisions",
  sanitizeResources: false,
  sanitizeOps: false,
  fn: async () => {
    const child = new Deno.Command(Deno.execPath(), {
      args: ["task", "dev"],
      cwd: PROJECT_ROOT,
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    const lines: string[] = [];
    const collect = async (stream: ReadableStream<Uint8Array>) => {
      let buf = "";
      for await (const chunk of stream.pipeThrough(new TextDecoderStream())) {
        buf += chunk;
        const parts = buf.split("\n");
        buf = parts.pop()!;
        lines.push(...parts);
      }
    };
    const done = Promise.all([collect(child.stdout), collect(child.stderr)]);
    try {
      await waitFor(() => lines.some((l) => / ready: \d+ TCP/.test(l)) ? true : undefined, {
        what: `dev to be ready; output so far:\n${lines.slice(-10).join("\n")}`,
        timeoutMs: 90_000,
        intervalMs: 250,
      });
      const tries: { who: string; expect: string; command: string }[] = [];
      for (const [i, line] of lines.entries()) {
        const m = /^\s+# (\w+): expect (\S+)$/.exec(line);
        if (m) tries.push({ who: m[1], expect: m[2], command: lines[i + 1].trim() });
      }
      assert.ok(tries.some((t) => t.command.startsWith("curl")), "curl commands are printed");
      assert.ok(tries.some((t) => t.command.includes(" check ")), "check commands are printed");
      assert.deepEqual(
        tries.filter((t) => t.command.includes("grpc.health.v1.Health/Check")).map((t) => [t.who, t.expect]),
        [["alice", "0"], ["bob", "7"]],
        "gRPC health calls are printed, allowed for alice and denied for bob",
      );
      for (const t of tries) {
        const out = await new Deno.Command("sh", {
          args: ["-c", t.command],
          cwd: PROJECT_ROOT,
          stdin: "null",
        })
          .output();
        const got = new TextDecoder().decode(out.stdout).trim().split(/\s/)[0];
        assert.equal(got, t.expect, `${t.who}: ${t.command}\n${new TextDecoder().decode(out.stderr)}`);
      }
    } finally {
      try {
        child.kill("SIGINT");
      } catch { /* exited */ }
      const timer = setTimeout(() => {
        try {
          child.kill("SIGKILL");
        } catch { /* exited */ }
      }, 30_000);
      const status = await child.status;
      clearTimeout(timer);
      await done;
      assert.ok(
        lines.some((l) => l.includes("tearing down the tailnet in a box")),
        lines.slice(-5).join("\n"),
      );
      assert.equal(status.code, 0);
    }
  },
});
