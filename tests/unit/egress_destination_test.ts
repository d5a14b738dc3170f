/**
 * Egress destinations (`lib/egress/destination.ts`): aliases, resolution against tailscaled's view, and
 * the rules, judged on the resolved address.
 */

import assert from "node:assert/strict";
import {
  applyAliases,
  compileRules,
  type DestinationRule,
  judge,
  resolveHost,
  tailnetView,
} from "../../lib/egress/destination.ts";
import { StatusSchema } from "../../lib/localapi/mod.ts";
import { parseIp } from "../../lib/net/ip.ts";

const status = StatusSchema.parse({
  BackendState: "Running",
  TailscaleIPs: ["100.64.0.1", "fd7a:115c:a1e0::1"],
  Peer: {
    k1: {
      TailscaleIPs: ["100.64.0.2", "fd7a:115c:a1e0::2"],
      Online: true,
      HostName: "pg",
      DNSName: "pg-primary.box.test.",
      Tags: ["tag:db"],
    },
    k2: { TailscaleIPs: ["100.64.0.3"], Online: true, DNSName: "web.box.test.", Tags: ["tag:web"] },
    k3: {
      TailscaleIPs: ["100.64.0.4"],
      Online: true,
      DNSName: "router.box.test.",
      PrimaryRoutes: ["10.20.0.0/16", "0.0.0.0/0"],
    },
  },
});
const view = tailnetView(status, { localAddresses: ["10.0.0.5"] });

const RULES: DestinationRule[] = [
  { name: "db", hosts: ["pg-primary"], ports: [{ from: 5432, to: 5432 }] },
  {
    name: "web",
    tags: ["tag:web"],
    ports: [{ from: 80, to: 80 }, { from: 8000, to: 8100 }],
    listeners: ["proxy"],
  },
  { name: "subnet", routes: ["10.20.1.0/24"] },
  { name: "ext", external: ["198.51.100.0/24"], ports: [{ from: 443, to: 443 }] },
  { name: "tailnet-v6", addresses: ["fd7a:115c:a1e0::2/128"] },
];
const rules = compileRules(RULES);

function verdict(host: string, port: number, listener = "proxy") {
  const r = resolveHost(view, host);
  if (r.kind !== "address") return { allow: false, reason: `unknown name ${r.name}` };
  return judge(view, rules, { ip: r.ip, port, listener, peer: r.peer });
}

Deno.test("egress destination: rules judged on the resolved address", () => {
  const cases: [string, number, string, boolean, string?][] = [
    ["pg-primary", 5432, "proxy", true, "db"],
    ["PG-PRIMARY.box.test.", 5432, "proxy", true, "db"],
    ["100.64.0.2", 5432, "proxy", true, "db"],
    ["pg-primary", 5433, "proxy", false],
    ["web", 8050, "proxy", true, "web"],
    ["web", 8050, "other", false],
    ["web.box.test", 80, "proxy", true, "web"],
    ["10.20.1.7", 22, "proxy", true, "subnet"],
    ["10.20.2.7", 22, "proxy", false],
    ["198.51.100.9", 443, "proxy", true, "ext"],
    ["198.51.100.9", 80, "proxy", false],
    ["203.0.113.1", 443, "proxy", false],
    ["fd7a:115c:a1e0::2", 9999, "proxy", true, "tailnet-v6"],
    ["[fd7a:115c:a1e0::2]", 1, "proxy", true, "tailnet-v6"],
    ["unknown-host", 80, "proxy", false],
  ];
  for (const [host, port, listener, allow, rule] of cases) {
    const v = verdict(host, port, listener);
    assert.equal(v.allow, allow, `${host}:${port} on ${listener}: ${v.reason}`);
    if (rule) assert.equal((v as { rule?: string }).rule, rule, `${host}:${port}`);
  }
});

Deno.test("egress destination: loopback, link-local, unspecified, multicast and own addresses are never dialed", () => {
  const all = compileRules([{ name: "everything", external: ["0.0.0.0/0", "::/0"] }]);
  for (
    const ip of [
      "127.0.0.1",
      "127.9.9.9",
      "::1",
      "::ffff:127.0.0.1",
      "169.254.169.254",
      "fe80::1",
      "0.0.0.0",
      "::",
      "224.0.0.1",
      "ff02::1",
      "100.64.0.1",
      "10.0.0.5",
    ]
  ) {
    const v = judge(view, all, { ip: parseIp(ip)!, port: 80, listener: "proxy" });
    assert.equal(v.allow, false, `${ip} must never be dialed`);
    assert.match(v.reason, /never dialed/);
  }
  const ok = judge(view, all, { ip: parseIp("203.0.113.1")!, port: 80, listener: "proxy" });
  assert.equal(ok.allow, true, "an explicit external rule reaches the internet");
});

Deno.test("egress destination: an exit node's default route does not put the internet on the tailnet", () => {
  const v = judge(view, compileRules([{ name: "any-tailnet" }]), {
    ip: parseIp("203.0.113.1")!,
    port: 80,
    listener: "proxy",
  });
  assert.equal(v.allow, false);
  assert.equal(v.via, "external");
  const inRoute = judge(view, compileRules([{ name: "any-tailnet" }]), {
    ip: parseIp("10.20.9.9")!,
    port: 80,
    listener: "proxy",
  });
  assert.deepEqual([inRoute.allow, inRoute.via, inRoute.peer], [true, "route", "router.box.test"]);
});

Deno.test("egress destination: aliases by name:port first, then name; a port-less alias keeps the asked port", () => {
  const aliases = {
    "db.corp": { host: "pg-primary" },
    "api.corp:443": { host: "100.64.0.3", port: 8443 },
    "v6.corp": { host: "fd7a::2", port: 99 },
  };
  assert.deepEqual(applyAliases(aliases, { host: "DB.corp.", port: 5432 }), {
    host: "pg-primary",
    port: 5432,
    alias: "db.corp",
  });
  assert.deepEqual(applyAliases(aliases, { host: "api.corp", port: 443 }), {
    host: "100.64.0.3",
    port: 8443,
    alias: "api.corp:443",
  });
  assert.deepEqual(applyAliases(aliases, { host: "api.corp", port: 80 }), { host: "api.corp", port: 80 });
  assert.deepEqual(applyAliases(aliases, { host: "v6.corp", port: 1 }), {
    host: "fd7a::2",
    port: 99,
    alias: "v6.corp",
  });
  assert.deepEqual(applyAliases(aliases, { host: "toString", port: 1 }), { host: "tostring", port: 1 });
});

Deno.test("egress destination: a bad prefix is refused naming the rule and the value; unnamed rules are numbered", () => {
  assert.throws(
    () => compileRules([{ name: "r1", addresses: ["100.64.0.0/33"] }]),
    /rule r1: "100.64.0.0\/33"/,
  );
  assert.deepEqual(compileRules([{}, { name: "x" }]).map((r) => r.name), ["rules[0]", "x"]);
});
