/**
 * `deno task bench`: speed figures, each printed with a ratio against a baseline measured in the same
 * run on the same machine (absolute numbers vary between machines; ratios much less).
 *
 * Sections (all by default, or name some: `deno task bench policy whois`):
 * - policy: decisions/s of the engine (L4, L7 allow, L7 deny with explanation) vs parsing the same
 *   request target with `new URL()`.
 * - whois: identity lookups through the resolver, cache hit and miss over the real tailscaled socket
 *   of a tailnet in a box, vs a bare LocalAPI `status` round trip on the same socket.
 * - l4: throughput, new connections/s, added latency and RSS of the relay vs direct loopback, Envoy's
 *   tcp_proxy and socat (see scripts/bench/l4.ts).
 * - l7: requests/s and latency through the full path vs the same Envoy without ext_authz, with a zero-work
 *   ext_authz (the floor of the HTTP ext_authz hop) and straight to the backend; our ext_authz server's
 *   checks/s and CPU per check; the proxy's idle RSS (see scripts/bench/l7.ts).
 * - soak: the proxy's open fds and RSS after passes of many short and many held connections against its
 *   warm baseline, and after an idle wait; PASS/MISS for fds back to baseline and RSS flat across
 *   passes (see scripts/bench/soak.ts).
 * - token: what `identityToken` adds to an allowed check, cached and amortised (see scripts/bench/token.ts).
 * - egress: throughput, new connections/s and latency of the egress proxy vs tailscaled's own SOCKS5 and
 *   HTTP proxies on the same node (see scripts/bench/egress.ts).
 * - peer: the serve-ingress peer check (kernel socket diagnostics by 4-tuple) with 10k connections open, vs
 *   one read of `/proc/net/tcp` (see scripts/bench/peer.ts).
 *
 * `--quick` shortens the long sections.
 *
 * @module
 */

import { IdentityResolver } from "../../lib/identity/mod.ts";
import { LocalApiClient } from "../../lib/localapi/mod.ts";
import { decideL4, decideL7, parseCapRules } from "../../lib/policy/mod.ts";
import { Tailnet } from "../harness/tailnet.ts";
import { benchEgress } from "./egress.ts";
import { benchL4 } from "./l4.ts";
import { benchL7 } from "./l7.ts";
import { benchPeer } from "./peer.ts";
import { benchSoak } from "./soak.ts";
import { benchToken } from "./token.ts";
import { cacheDependencies } from "../harness/cache.ts";
import { own } from "../../lib/util/own.ts";
import { ensurePeers } from "../harness/peers.ts";

interface Figure {
  name: string;
  perSec: number;
  baseline?: string;
}

const figures: Figure[] = [];

function record(name: string, perSec: number, baseline?: string): void {
  figures.push({ name, perSec, baseline });
  const base = baseline ? figures.find((f) => f.name === baseline) : undefined;
  const ratio = base ? `  ${(perSec / base.perSec).toFixed(2)}x ${baseline}` : "";
  console.log(
    `${name.padEnd(48)} ${fmt(perSec).padStart(12)}/s ${
      (1e6 / perSec).toFixed(2).padStart(10)
    } µs/op${ratio}`,
  );
}

function fmt(n: number): string {
  return n >= 1e6 ? `${(n / 1e6).toFixed(2)}M` : n >= 1e3 ? `${(n / 1e3).toFixed(1)}k` : n.toFixed(0);
}

/** Median ops/s over `rounds` timed rounds of `n` synchronous calls (after a warm-up round). */
function measureSync(n: number, fn: (i: number) => unknown, rounds = 5): number {
  let sink = 0;
  const rates: number[] = [];
  for (let r = -1; r < rounds; r++) {
    const t0 = performance.now();
    for (let i = 0; i < n; i++) if (fn(i)) sink++;
    const ms = performance.now() - t0;
    if (r >= 0) rates.push(n / (ms / 1000));
  }
  if (sink < 0) console.log(sink);
  return rates.sort((a, b) => a - b)[Math.floor(rates.length / 2)];
}

/** Median ops/s over rounds of `n` sequential awaited calls. */
async function measureAsync(n: number, fn: (i: number) => Promise<unknown>, rounds = 5): Promise<number> {
  const rates: number[] = [];
  for (let r = -1; r < rounds; r++) {
    const t0 = performance.now();
    for (let i = 0; i < n; i++) await fn(i);
    const ms = performance.now() - t0;
    if (r >= 0) rates.push(n / (ms / 1000));
  }
  return rates.sort((a, b) => a - b)[Math.floor(rates.length / 2)];
}

function benchPolicy(): void {
  console.log("\n# policy engine (pure, single thread)");
  const { rules } = parseCapRules({
    "rajsingh.info/cap/tailvoy": [
      { listeners: ["db"] },
      { listeners: ["grpc"], routes: ["/grpc.health.v1.Health/*"] },
      {
        listeners: ["web"],
        hostnames: ["*.example.com"],
        routes: ["/public/*", "/api/*"],
        methods: ["GET", "HEAD"],
      },
    ],
  });
  const paths = ["/api/users", "/api/users/42?x=1", "/public/a/b/../c", "/api/v2/items"];
  record(
    "baseline: new URL(target)",
    measureSync(200_000, (i) => new URL(paths[i & 3], "http://h").pathname),
  );
  record(
    "decideL7 allow",
    measureSync(
      200_000,
      (i) =>
        decideL7(rules, { listener: "web", host: "app.example.com", path: paths[i & 3], method: "GET" })
          .allow,
    ),
    "baseline: new URL(target)",
  );
  record(
    "decideL7 deny (with explanation)",
    measureSync(
      100_000,
      () =>
        decideL7(rules, { listener: "web", host: "app.example.com", path: "/admin", method: "POST" }).allow,
    ),
    "baseline: new URL(target)",
  );
  record(
    "decideL4 allow",
    measureSync(500_000, () => decideL4(rules, { listener: "db" }).allow),
    "baseline: new URL(target)",
  );
}

async function benchWhois(): Promise<void> {
  console.log("\n# identity: WhoIs over the real tailscaled socket (tailnet in a box)");
  await ensurePeers();
  const tailnet = await Tailnet.start();
  try {
    const gw = tailnet.node("gw");
    const alice = tailnet.node("alice").ipv4;
    using api = new LocalApiClient(gw.socket, { timeoutMs: 5000 });
    record("baseline: LocalAPI status round trip", await measureAsync(500, () => api.status()));
    record(
      "WhoIs miss (resolver, TTL 0)",
      await measureAsync(500, () => api.whois(alice)),
      "baseline: LocalAPI status round trip",
    );
    const cached = new IdentityResolver(api, { ttlMs: 60_000 });
    await cached.resolve(alice);
    record(
      "WhoIs cache hit (resolver)",
      await measureAsync(200_000, () => cached.resolve(`${alice}:1234`)),
      "baseline: LocalAPI status round trip",
    );
    const uncached = new IdentityResolver(api, { ttlMs: 0 });
    record(
      "resolve + parse rules, miss (TTL 0)",
      await measureAsync(500, () => uncached.resolve(alice)),
      "baseline: LocalAPI status round trip",
    );
  } finally {
    await tailnet.release();
  }
}

if (import.meta.main) {
  const quick = Deno.args.includes("--quick");
  const sections: Record<string, () => void | Promise<void>> = {
    policy: benchPolicy,
    whois: benchWhois,
    l4: () => benchL4({ quick }),
    l7: () => benchL7({ quick }),
    soak: () => benchSoak({ quick }),
    token: () => benchToken({ quick }),
    peer: () => benchPeer({ quick }),
    egress: () => benchEgress({ quick }),
  };
  const named = Deno.args.filter((a) => !a.startsWith("--"));
  const wanted = named.length ? named : Object.keys(sections);
  // The proxy and the load helpers run with --cached-only (see cache.ts): cache their modules first.
  await cacheDependencies();
  for (const name of wanted) {
    const run = own(sections, name);
    if (!run) {
      console.error(`bench: unknown section "${name}": use ${Object.keys(sections).join(", ")}`);
      Deno.exit(2);
    }
    await run();
  }
}
