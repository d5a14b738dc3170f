/**
 * `deno task dev` as a newcomer uses it: it starts (tailnet in a box, backends, Envoy, the proxy),
 * prints commands with the decision each should get, the commands give exactly that, and SIGTERM or
 * SIGHUP to the task alone (not to its process group, as Ctrl-C does) tears it all down: no process it
 * started is left.
 */

import assert from "node:assert/strict";
import { lineSplitter } from "../../lib/util/lines.ts";
import { PROJECT_ROOT } from "../../scripts/harness/peers.ts";
import { descendants, type ProcessEntry, stillRunning } from "../../scripts/harness/procs.ts";
import { waitFor } from "../../scripts/harness/tailnet.ts";
import { delay } from "../../lib/util/async.ts";

/** `deno task dev` with its output collected line by line. */
function startDev(): { child: Deno.ChildProcess; lines: string[]; done: Promise<unknown> } {
  const child = new Deno.Command(Deno.execPath(), {
    args: ["task", "dev"],
    cwd: PROJECT_ROOT,
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const lines: string[] = [];
  const collect = async (stream: ReadableStream<Uint8Array>) => {
    for await (const line of stream.pipeThrough(new TextDecoderStream()).pipeThrough(lineSplitter())) {
      lines.push(line);
    }
  };
  return { child, lines, done: Promise.all([collect(child.stdout), collect(child.stderr)]) };
}

/**
 * Sends `signal` to the task process alone and waits for it to exit (SIGKILL after 60 s, which fails
 * the test). Returns its exit code and the processes still running of `tree` and of every descendant seen
 * while it stopped.
 */
async function stopDev(
  dev: ReturnType<typeof startDev>,
  signal: Deno.Signal,
): Promise<{ code: number; seen: ProcessEntry[]; left: ProcessEntry[] }> {
  const seen = new Map<string, ProcessEntry>();
  const record = async () => {
    for (const p of await descendants(dev.child.pid)) seen.set(`${p.pid}@${p.start}`, p);
  };
  await record();
  try {
    dev.child.kill(signal);
  } catch { /* exited */ }
  const timer = setTimeout(() => {
    try {
      dev.child.kill("SIGKILL");
    } catch { /* exited */ }
  }, 60_000);
  let exited = false;
  const status = dev.child.status.finally(() => exited = true);
  // Processes may still be started while it stops (a signal during start-up): keep looking.
  while (!exited) {
    await record();
    await delay(50);
  }
  clearTimeout(timer);
  await dev.done;
  // Teardown is over when the task has exited: nothing it started may outlive it.
  const all = [...seen.values()];
  return { code: (await status).code, seen: all, left: await stillRunning(all) };
}

Deno.test({
  name: "deno task dev prints commands whose results match the printed decisions",
  sanitizeResources: false,
  sanitizeOps: false,
  fn: async () => {
    const dev = startDev();
    const { lines } = dev;
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
      const { code, seen, left } = await stopDev(dev, "SIGTERM");
      const names = seen.map((p) => p.name);
      assert.ok(
        lines.some((l) => l.includes("tearing down the tailnet in a box")),
        lines.slice(-5).join("\n"),
      );
      assert.equal(code, 0);
      for (const name of ["envoy", "headscale", "tailscaled"]) {
        assert.ok(names.includes(name), `${name} was running under the task (${names.join(", ")})`);
      }
      assert.deepEqual(left, [], "no process started by `deno task dev` outlives it after SIGTERM");
    }
  },
});

Deno.test({
  name: "deno task dev: SIGHUP during start-up tears down what was started",
  sanitizeResources: false,
  sanitizeOps: false,
  fn: async () => {
    const dev = startDev();
    await waitFor(
      () => dev.lines.some((l) => /tailnet: headscale up|starting a tailnet/.test(l)) || undefined,
      {
        what: `dev to start the tailnet; output so far:\n${dev.lines.slice(-10).join("\n")}`,
        timeoutMs: 90_000,
        intervalMs: 100,
      },
    );
    const { code, seen, left } = await stopDev(dev, "SIGHUP");
    assert.equal(code, 0, dev.lines.slice(-10).join("\n"));
    assert.ok(dev.lines.some((l) => l.includes("tearing down the tailnet in a box")), dev.lines.join("\n"));
    assert.ok(!dev.lines.some((l) => l.includes("Try, in another terminal")), "the proxy was never started");
    assert.ok(seen.some((p) => p.name === "headscale"), seen.map((p) => p.name).join(", "));
    assert.deepEqual(left, [], "nothing started before or during the stop outlives the task");
  },
});
