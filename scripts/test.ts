/**
 * `deno task test`: installs the test peers, caches dependencies, then runs the suite (or the part the
 * arguments name) inside a new network namespace whose only interface is `lo` (so nothing can leave the
 * machine, by construction) and a new PID namespace (so no peer outlives the run), with one tailnet in a
 * box shared by every test file.
 *
 * Without the privileges for namespaces (not root, or no `unshare`) it runs on the host's loopback and
 * fails the run if any socket with a non-loopback remote end appears.
 *
 * Extra arguments go to `deno test`, and run only what they ask for: test files or folders named run
 * alone (`deno task test tests/e2e/l4_test.ts`), `--filter` picks test names (`deno task test --filter
 * whois` looks through all of `tests/`, `deno task test tests/unit --filter config` through that folder).
 * Without a file or folder, the whole of `tests/` runs.
 *
 * @module
 */

import { join, resolve } from "node:path";
import { CACHED_ONLY, cacheDependencies, sourceRunArgs } from "./harness/cache.ts";
import { ensurePeers, PROJECT_ROOT } from "./harness/peers.ts";
import { nonLoopbackSockets, Tailnet, TAILNET_ENV } from "./harness/tailnet.ts";
import { errorMessage } from "../lib/util/error.ts";

const IN_NETNS = "--in-netns";

// deno test flags whose value is the next argument (not a file to test).
const VALUE_FLAGS = new Set([
  "--filter",
  "--reporter",
  "--junit-path",
  "--seed",
  "--config",
  "-c",
  "--import-map",
  "--lock",
  "--location",
  "--cert",
  "--env-file",
]);

/** `deno test` arguments for `args`: as given, plus `tests/` when they name no file or folder to run. */
function testArgs(args: string[]): string[] {
  const namesPath = args.some((arg, i) =>
    !arg.startsWith("-") && !VALUE_FLAGS.has(args[i - 1]) && pathExists(resolve(PROJECT_ROOT, arg))
  );
  return namesPath ? args : [...args, "tests/"];
}

function pathExists(path: string): boolean {
  try {
    Deno.statSync(path);
    return true;
  } catch {
    return false;
  }
}

function log(msg: string): void {
  console.error(`test: ${msg}`);
}

async function commandWorks(cmd: string, args: string[]): Promise<boolean> {
  try {
    return (await new Deno.Command(cmd, { args, stdout: "null", stderr: "null" }).output()).success;
  } catch {
    return false;
  }
}

async function prepare(): Promise<void> {
  const t0 = performance.now();
  await ensurePeers({ log: (m) => log(`peers: ${m}`) });
  log(`peers ready in ${((performance.now() - t0) / 1000).toFixed(1)} s`);
  // The namespace has no route to the npm registry: cache every module now; inside, nothing fetches.
  await cacheDependencies();
}

// One plain "N passed, N failed" line, from deno test's JUnit report, for CI logs. The report lists tests
// a filter left out too, each with <skipped/>: they are not counted as passed.
async function summarize(junitPath: string): Promise<string | undefined> {
  try {
    const xml = await Deno.readTextFile(junitPath);
    const head = /<testsuites\b[^>]*>/.exec(xml)?.[0] ?? "";
    const num = (name: string) => Number(new RegExp(`\\b${name}="(\\d+)"`).exec(head)?.[1] ?? 0);
    const failed = num("failures") + num("errors");
    const skipped = xml.match(/<skipped\b/g)?.length ?? 0;
    const summary = `${num("tests") - failed - skipped} passed, ${failed} failed`;
    return skipped ? `${summary}, ${skipped} not run (filtered out or ignored)` : summary;
  } catch {
    return undefined;
  }
}

async function runSuite(args: string[], isolated: boolean): Promise<number> {
  if (isolated) {
    const lo = await new Deno.Command("ip", { args: ["link", "set", "lo", "up"] }).output();
    if (!lo.success) {
      throw new Error("Could not bring up lo in the test network namespace (ip link set lo up)");
    }
  }
  log("starting the tailnet in a box");
  const tailnet = await Tailnet.start({ log: (m) => log(`tailnet: ${m}`) });
  const stop = () => tailnet.release().finally(() => Deno.exit(130));
  Deno.addSignalListener("SIGINT", stop);
  Deno.addSignalListener("SIGTERM", stop);
  try {
    const descFile = join(tailnet.description.dir, "tailnet.json");
    await Deno.writeTextFile(descFile, JSON.stringify(tailnet.description));
    log(`tailnet up in ${tailnet.description.startupMs} ms; running deno test`);
    const junit = join(tailnet.description.dir, "junit.xml");
    const status = await new Deno.Command(Deno.execPath(), {
      args: ["test", CACHED_ONLY, "--allow-all", `--junit-path=${junit}`, ...testArgs(args)],
      cwd: PROJECT_ROOT,
      env: { [TAILNET_ENV]: descFile },
      stdin: "null",
      stdout: "inherit",
      stderr: "inherit",
    }).output();
    const summary = await summarize(junit);
    if (summary) console.log(summary);
    const leaks = await nonLoopbackSockets();
    if (leaks.length) {
      log(
        `sockets with a non-loopback remote end were found; nothing may leave loopback:\n${leaks.join("\n")}`,
      );
      return 1;
    }
    return status.code;
  } finally {
    Deno.removeSignalListener("SIGINT", stop);
    Deno.removeSignalListener("SIGTERM", stop);
    await tailnet.release();
  }
}

if (import.meta.main) {
  const args = [...Deno.args];
  let code: number;
  try {
    if (args[0] === IN_NETNS) {
      code = await runSuite(args.slice(1), true);
    } else {
      await prepare();
      const canIsolate = Deno.uid() === 0 &&
        await commandWorks("unshare", ["--net", "--pid", "--fork", "true"]);
      if (canIsolate) {
        log("running in a new network + PID namespace (only lo)");
        const child = await new Deno.Command("unshare", {
          args: [
            "--net",
            "--pid",
            "--fork",
            "--mount-proc",
            "--kill-child",
            Deno.execPath(),
            ...sourceRunArgs(join(PROJECT_ROOT, "scripts", "test.ts"), { permissions: ["--allow-all"] }),
            IN_NETNS,
            ...args,
          ],
          stdin: "null",
          stdout: "inherit",
          stderr: "inherit",
        }).output();
        code = child.code;
      } else {
        log(
          "no network namespace (needs root and unshare); running on the host's loopback with a leak check",
        );
        code = await runSuite(args, false);
      }
    }
  } catch (err) {
    log(errorMessage(err));
    code = 1;
  }
  Deno.exit(code);
}
