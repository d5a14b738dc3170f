/**
 * Identity and policy end to end against the tailnet in a box (real headscale + tailscaled):
 * `tailvoy check --as` and `tailvoy test` as a user runs them, a policy change seen within the cache
 * TTL, and fail-closed behaviour when tailscaled is missing, stopped or does not know the caller.
 */

import assert from "node:assert/strict";
import { join } from "node:path";
import { checkL4, checkL7 } from "../../lib/access/mod.ts";
import { IdentityResolver } from "../../lib/identity/mod.ts";
import { LocalApiClient } from "../../lib/localapi/mod.ts";
import { setupLogging } from "../../lib/log.ts";
import { sourceRunArgs } from "../../scripts/harness/cache.ts";
import { PROJECT_ROOT } from "../../scripts/harness/peers.ts";
import { tailnetFixture } from "../../scripts/harness/fixture.ts";
import { CAP, defaultPolicy, waitFor } from "../../scripts/harness/tailnet.ts";

async function tailvoy(...args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  // The same permissions the compiled binary gets.
  const out = await new Deno.Command(Deno.execPath(), {
    args: [...sourceRunArgs(join(PROJECT_ROOT, "main.ts")), ...args],
    stdin: "null",
  }).output();
  const dec = new TextDecoder();
  return { code: out.code, stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr) };
}

function revokedPolicy() {
  const p = defaultPolicy();
  p.grants = (p.grants as { app?: unknown }[]).filter((g) => !g.app);
  return p;
}

Deno.test.sanitizer({ ops: false, resources: false });

const tailnetOnce = tailnetFixture();
const config = join(PROJECT_ROOT, "examples", "config.yaml");

/** The tailnet with the default policy (which examples/config.yaml is written for). */
async function defaultTailnet() {
  const tailnet = await tailnetOnce();
  await tailnet.usePolicy(defaultPolicy());
  return { tailnet, gw: tailnet.node("gw") };
}

Deno.test("identity: tailvoy check --as gives each identity's decision", async () => {
  const { tailnet, gw } = await defaultTailnet();
  const cases: [string, string[], number, RegExp][] = [
    ["alice", ["--listener", "web", "--path", "/api/users"], 0, /^ALLOW alice on alice\.box\.test/],
    [
      "alice",
      ["--listener", "web", "--path", "/admin"],
      1,
      /path "\/admin" matches none of \["\/api\/\*"\]/,
    ],
    ["alice", ["--listener", "web", "--path", "/api/../admin"], 1, /^DENY/],
    ["alice", ["--listener", "db"], 0, /^ALLOW/],
    ["bob", ["--listener", "web", "--path", "/api/users"], 1, /no valid tailvoy rules/],
    ["ci", ["--listener", "db"], 0, /^ALLOW tag:ci on ci\.box\.test/],
    ["ci", ["--listener", "web", "--path", "/api/users"], 1, /listener "web" not in \["db"\]/],
  ];
  for (const [who, args, code, expect] of cases) {
    const r = await tailvoy(
      "check",
      "--socket",
      gw.socket,
      "--config",
      config,
      "--as",
      tailnet.node(who).ipv4,
      ...args,
    );
    assert.equal(r.code, code, `${who} ${args.join(" ")}: ${r.stdout}${r.stderr}`);
    assert.match(r.stdout, expect, `${who} ${args.join(" ")}`);
  }
});

Deno.test("identity: tailvoy check: an unknown listener and an unknown peer are errors (exit 2)", async () => {
  const { tailnet, gw } = await defaultTailnet();
  const unknownListener = await tailvoy(
    "check",
    "--socket",
    gw.socket,
    "--config",
    config,
    "--as",
    tailnet.node("alice").ipv4,
    "--listener",
    "nope",
  );
  assert.equal(unknownListener.code, 2);
  assert.match(unknownListener.stderr, /Unknown listener "nope"/);
  const unknownPeer = await tailvoy(
    "check",
    "--socket",
    gw.socket,
    "--as",
    "100.100.1.1",
    "--listener",
    "db",
  );
  assert.equal(unknownPeer.code, 2);
  assert.match(unknownPeer.stderr, /knows no peer/);
});

Deno.test("identity: tailvoy test runs a fixtures file against real identities", async () => {
  const { tailnet, gw } = await defaultTailnet();
  const dir = await Deno.makeTempDir();
  try {
    const file = join(dir, "cases.yaml");
    const alice = tailnet.node("alice").ipv4;
    const bob = tailnet.node("bob").ipv4;
    await Deno.writeTextFile(
      file,
      [
        "cases:",
        `  - {name: alice reads the api, as: "${alice}", listener: web, path: /api/users, expect: allow}`,
        `  - {name: bob is refused, as: "${bob}", listener: web, path: /api/users, expect: deny}`,
        `  - {name: caps from a file, caps: {"${CAP}": [{listeners: [db]}]}, listener: db, expect: allow}`,
      ].join("\n"),
    );
    const ok = await tailvoy("test", "--socket", gw.socket, file);
    assert.equal(ok.code, 0, ok.stdout + ok.stderr);
    assert.match(ok.stdout, /3 passed, 0 failed/);
    await Deno.writeTextFile(
      file,
      `cases:\n  - {name: wrong expectation, as: "${bob}", listener: web, path: /, expect: allow}\n`,
    );
    const bad = await tailvoy("test", "--socket", gw.socket, file);
    assert.equal(bad.code, 1);
    assert.match(
      bad.stdout,
      /FAIL wrong expectation: expected allow, got deny\n\s+DENY [^\n]*\n\s+no valid tailvoy rules/,
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("identity: a revoked grant is seen within the cache TTL once tailscaled has it", async () => {
  const { tailnet, gw } = await defaultTailnet();
  const ttlMs = 1000;
  using api = new LocalApiClient(gw.socket);
  const resolver = new IdentityResolver(api, { ttlMs });
  const caller = { addr: `${tailnet.node("alice").ipv4}:40000` };
  const request = { listener: "web", host: "app", path: "/api/users", method: "GET" };
  assert.equal((await checkL7(resolver, caller, request)).decision.allow, true);
  await tailnet.usePolicy(revokedPolicy());
  try {
    // Wait for tailscaled itself (uncached WhoIs) to have the new filter...
    await waitFor(
      async () => (await api.whois(tailnet.node("alice").ipv4)).CapMap[CAP] ? undefined : true,
      {
        what: "tailscaled to drop alice's grant",
        timeoutMs: 15_000,
      },
    );
    // ...then the resolver may serve the old answer for at most one TTL.
    const seenAt = performance.now();
    const denied = await waitFor(async () => {
      const r = await checkL7(resolver, caller, request);
      return r.decision.allow ? undefined : r;
    }, { what: "the cached decision to become a deny", timeoutMs: ttlMs + 500, intervalMs: 50 });
    assert.equal(denied.decision.code, "no_rules");
    assert.ok(performance.now() - seenAt <= ttlMs + 500);
  } finally {
    await tailnet.usePolicy(defaultPolicy());
  }
  await waitFor(
    async () => (await api.whois(tailnet.node("alice").ipv4)).CapMap[CAP] ? true : undefined,
    {
      what: "alice's grant to come back",
      timeoutMs: 15_000,
    },
  );
});

Deno.test("identity: fail closed: socket missing, unknown peer, tailscaled stopped; recovery", async () => {
  const { tailnet } = await defaultTailnet();
  const logs: string[] = [];
  setupLogging("info", { format: "json", write: (line) => logs.push(line) });
  const alice = tailnet.node("alice");
  const request = { listener: "db" };

  using missing = new LocalApiClient("/nonexistent/tailscaled.sock");
  const r1 = await checkL4(new IdentityResolver(missing), { addr: `${alice.ipv4}:1` }, request);
  assert.equal(r1.decision.allow, false);
  assert.equal(r1.decision.code, "unknown_caller");
  assert.match(
    logs.at(-1)!,
    /no tailscaled socket at \/nonexistent\/tailscaled.sock; is tailscaled running\?/,
  );

  // A gateway of our own, so stopping it does not disturb other tests.
  const gw2 = await tailnet.addNode({ name: "gw2", tags: ["tag:gw"] });
  using api = new LocalApiClient(gw2.socket);
  const resolver = new IdentityResolver(api, { ttlMs: 0 });
  assert.equal((await checkL4(resolver, { addr: `${alice.ipv4}:1` }, request)).decision.allow, true);

  const r2 = await checkL4(resolver, { addr: "100.100.1.1:1" }, request);
  assert.equal(r2.decision.code, "unknown_caller");
  assert.match(logs.at(-1)!, /knows no peer at that address/);

  // A hung tailscaled (stopped with SIGSTOP): the call times out and the caller is denied.
  Deno.kill(gw2.pid, "SIGSTOP");
  try {
    // The signal is queued at once but takes effect asynchronously: wait until it is stopped.
    await waitFor(
      async () => / T /.test(await Deno.readTextFile(`/proc/${gw2.pid}/stat`)) ? true : undefined,
      {
        what: "tailscaled to be stopped",
        timeoutMs: 5000,
        intervalMs: 10,
      },
    );
    const hung = await checkL4(resolver, { addr: `${alice.ipv4}:1` }, request);
    assert.equal(hung.decision.code, "unknown_caller");
    assert.equal(JSON.parse(logs.at(-1)!).kind, "timeout");
  } finally {
    Deno.kill(gw2.pid, "SIGCONT");
  }

  await tailnet.stopNode("gw2");
  const r3 = await checkL4(resolver, { addr: `${alice.ipv4}:1` }, request);
  assert.equal(r3.decision.allow, false);
  assert.equal(r3.decision.code, "unknown_caller");
  const line = JSON.parse(logs.at(-1)!);
  assert.equal(line.listener, "db");
  assert.ok(["socket-missing", "connection-refused"].includes(line.kind), line.kind);
  assert.match(line.reason, /is tailscaled running\?/);

  await tailnet.restartNode("gw2");
  const back = await waitFor(async () => {
    const r = await checkL4(resolver, { addr: `${alice.ipv4}:1` }, request);
    return r.decision.allow ? r : undefined;
  }, { what: "decisions to recover after tailscaled restarts", timeoutMs: 20_000 });
  assert.equal(back.identity?.login, "alice");
});
