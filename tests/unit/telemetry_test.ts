/**
 * Tests of telemetry: the metric names and labels dashboards rely on, and the decision log records
 * (the contract collectors parse: every field asserted), with and without logging of allows.
 */

import assert from "node:assert/strict";
import type { Identity } from "../../lib/identity/mod.ts";
import { setupLogging } from "../../lib/log.ts";
import { DEFAULT_CAPABILITY } from "../../lib/config/mod.ts";
import { decideL4, decideL7, parseCapRules } from "../../lib/policy/mod.ts";
import { ruleOf, Telemetry } from "../../lib/telemetry/mod.ts";

const CAP = DEFAULT_CAPABILITY;
const RULE = { listeners: ["web"], routes: ["/api/*"] };
const { rules } = parseCapRules({ [CAP]: [RULE] });

const ALICE: Identity = {
  login: "alice@example.com",
  displayName: "Alice",
  userId: "7",
  node: "laptop.example.ts.net",
  nodeId: "nStable1",
  tags: [],
  ips: ["100.64.0.1"],
  capMap: { [CAP]: [RULE] },
  rules,
  malformed: [],
};

const CI: Identity = {
  ...ALICE,
  login: undefined,
  displayName: undefined,
  userId: undefined,
  tags: ["tag:ci"],
};

// Fields LogTape's JSON lines add around a record's properties.
const ENVELOPE = ["@timestamp", "level", "logger", "message"];

/** Captures the JSON log lines written while `fn` runs, parsed. */
function captureLog(fn: () => void): Record<string, unknown>[] {
  const lines: string[] = [];
  setupLogging("debug", { format: "json", write: (line) => lines.push(line) });
  try {
    fn();
  } finally {
    setupLogging("info", { format: "json", write: () => {} });
  }
  return lines.map((line) => JSON.parse(line));
}

/** The record's own fields, without the logger's envelope. */
function fields(line: Record<string, unknown>): Record<string, unknown> {
  return Object.fromEntries(Object.entries(line).filter(([key]) => !ENVELOPE.includes(key)));
}

/** The value of one sample of `name` whose labels include `labels`, from the registry. */
async function sample(
  telemetry: Telemetry,
  name: string,
  labels: Record<string, string> = {},
): Promise<number | undefined> {
  const metric = (await telemetry.registry.getMetricsAsJSON()).find((m) => m.name === name);
  assert.ok(metric, `no metric ${name}`);
  const found = (metric.values as { value: number; labels: Record<string, unknown>; metricName?: string }[])
    .find((v) =>
      (v.metricName === undefined || v.metricName === name) &&
      Object.entries(labels).every(([k, want]) => v.labels[k] === want)
    );
  return found?.value;
}

Deno.test("metrics: the exposed names, types and label names", async () => {
  const telemetry = new Telemetry();
  const metrics = await telemetry.registry.getMetricsAsJSON();
  const shape = Object.fromEntries(metrics.map((m) => [m.name, m.type]));
  assert.deepEqual(shape, {
    tailvoy_decisions_total: "counter",
    tailvoy_whois_calls_total: "counter",
    tailvoy_whois_errors_total: "counter",
    tailvoy_whois_duration_seconds: "histogram",
    tailvoy_whois_cache_hits_total: "counter",
    tailvoy_open_flows: "gauge",
    tailvoy_flow_bytes_total: "counter",
    tailvoy_egress_flows_total: "counter",
    tailvoy_egress_open_flows: "gauge",
    tailvoy_flows_revoked_total: "counter",
    tailvoy_envoy_restarts_total: "counter",
    tailvoy_envoy_ready: "gauge",
    tailvoy_config_reloads_total: "counter",
    tailvoy_discovered_listeners: "gauge",
    tailvoy_discovery_polls_total: "counter",
    tailvoy_services_withheld: "gauge",
    tailvoy_serve_config_writes_total: "counter",
  });
  // Two instances keep separate registries (a reload or a test never double-registers).
  const other = new Telemetry();
  other.envoyRestarts.inc();
  assert.equal(await sample(telemetry, "tailvoy_envoy_restarts_total"), 0);
  assert.equal(await sample(other, "tailvoy_envoy_restarts_total"), 1);
});

Deno.test("metrics: text exposition carries HELP, TYPE and labelled samples", async () => {
  const telemetry = new Telemetry();
  telemetry.decision({
    layer: "l4",
    listener: "db",
    requestId: "flow-1",
    caller: "100.64.0.1:40000",
    identity: ALICE,
    decision: decideL4(rules, { listener: "db" }),
    latencyMs: 0.2,
  });
  const text = await telemetry.metrics();
  assert.match(text, /^# HELP tailvoy_decisions_total Access decisions by listener, layer and result/m);
  assert.match(text, /^# TYPE tailvoy_decisions_total counter$/m);
  assert.match(text, /^tailvoy_decisions_total\{listener="db",layer="l4",result="deny"\} 1$/m);
  assert.match(text, /^# TYPE tailvoy_whois_duration_seconds histogram$/m);
  assert.match(telemetry.registry.contentType, /^text\/plain/);
});

Deno.test("decision: an allow is counted and logged with every field of the contract", async () => {
  const telemetry = new Telemetry();
  const decision = decideL7(rules, {
    listener: "web",
    host: "App.Example.com",
    path: "/api/./v1//items",
    method: "get",
  });
  assert.equal(decision.allow, true);
  const lines = captureLog(() =>
    telemetry.decision({
      layer: "l7",
      listener: "web",
      requestId: "req-42",
      caller: "100.64.0.1:51000",
      identity: ALICE,
      host: "App.Example.com",
      method: "GET",
      path: "/api/./v1//items",
      decision,
      latencyMs: 1.23456,
    })
  );
  assert.equal(lines.length, 1);
  assert.equal(lines[0].logger, "tailvoy.decision");
  assert.equal(lines[0].level, "INFO");
  assert.deepEqual(fields(lines[0]), {
    event: "decision",
    requestId: "req-42",
    listener: "web",
    layer: "l7",
    callerIp: "100.64.0.1:51000",
    user: "alice@example.com",
    node: "laptop.example.ts.net",
    tags: [],
    host: "App.Example.com",
    method: "GET",
    // The path the rules were matched against, not the raw one.
    path: decision.canonicalPath,
    decision: "allow",
    shadow: false,
    code: "allow",
    rule: JSON.stringify(RULE),
    latencyMs: 1.235,
  });
  assert.equal(decision.canonicalPath, "/api/v1/items");
  // JSON lines render the message's values as JSON.
  assert.equal(
    lines[0].message,
    `"allow" "l7" "web" from "100.64.0.1:51000": ${JSON.stringify(JSON.stringify(RULE))}`,
  );
  assert.equal(await sample(telemetry, "tailvoy_decisions_total", { result: "allow" }), 1);
  assert.equal(
    await sample(telemetry, "tailvoy_decisions_total", { listener: "web", layer: "l7", result: "allow" }),
    1,
  );
});

Deno.test("decision: a deny without identity logs nulls, the reasons and a finer code", async () => {
  const telemetry = new Telemetry();
  const decision = decideL4(rules, { listener: "db", sni: "db.example.com" });
  const lines = captureLog(() =>
    telemetry.decision({
      layer: "l4",
      listener: "db",
      requestId: "flow-3",
      caller: "127.0.0.1:6000",
      decision,
      code: "bad_secret",
      latencyMs: 0,
    })
  );
  assert.equal(lines.length, 1);
  assert.equal(lines[0].level, "INFO");
  assert.deepEqual(fields(lines[0]), {
    event: "decision",
    requestId: "flow-3",
    listener: "db",
    layer: "l4",
    callerIp: "127.0.0.1:6000",
    user: null,
    node: null,
    tags: [],
    host: null,
    method: null,
    path: null,
    decision: "deny",
    shadow: false,
    code: "bad_secret",
    rule: decision.reasons.join("; "),
    latencyMs: 0,
  });
  assert.match(String(lines[0].rule), /listener "db" not in \["web"\]/);
  assert.equal(await sample(telemetry, "tailvoy_decisions_total", { result: "deny" }), 1);
  assert.equal(await sample(telemetry, "tailvoy_decisions_total", { result: "allow" }), undefined);
});

Deno.test("decision: a shadow deny is counted apart and logged as a warning that says SHADOW", async () => {
  const telemetry = new Telemetry({ logAllows: false });
  const decision = decideL7(rules, { listener: "web", path: "/admin", method: "POST" });
  const lines = captureLog(() =>
    telemetry.decision({
      layer: "l7",
      listener: "web",
      requestId: "req-9",
      caller: "100.64.0.9:1234",
      identity: CI,
      path: "/admin",
      method: "POST",
      decision,
      shadow: true,
      latencyMs: 0.5,
    })
  );
  assert.equal(lines.length, 1);
  assert.equal(lines[0].level, "WARN");
  assert.match(
    String(lines[0].message),
    /^SHADOW \(allowed anyway\) "deny" "l7" "web" from "100\.64\.0\.9:1234": /,
  );
  const record = fields(lines[0]);
  assert.equal(record.decision, "deny");
  assert.equal(record.shadow, true);
  assert.equal(record.code, "no_match");
  assert.equal(record.user, null);
  assert.deepEqual(record.tags, ["tag:ci"]);
  assert.equal(record.path, "/admin");
  assert.equal(await sample(telemetry, "tailvoy_decisions_total", { result: "shadow_allow" }), 1);
  assert.equal(await sample(telemetry, "tailvoy_decisions_total", { result: "deny" }), undefined);
});

Deno.test("decision: logAllows off keeps allows out of the log but counts them; denies stay logged", async () => {
  const telemetry = new Telemetry({ logAllows: false });
  const allow = {
    layer: "l4" as const,
    listener: "web",
    requestId: "flow-1",
    caller: "100.64.0.1:1",
    identity: ALICE,
    decision: decideL4(rules, { listener: "web" }),
    latencyMs: 0.1,
  };
  const deny = {
    ...allow,
    requestId: "flow-2",
    listener: "db",
    decision: decideL4(rules, { listener: "db" }),
  };
  assert.equal(allow.decision.allow, true);
  assert.equal(deny.decision.allow, false);

  const off = captureLog(() => {
    telemetry.decision(allow);
    telemetry.decision(deny);
  });
  assert.deepEqual(off.map((l) => [l.requestId, l.decision]), [["flow-2", "deny"]]);
  assert.equal(await sample(telemetry, "tailvoy_decisions_total", { result: "allow" }), 1);

  telemetry.logAllows = true;
  const on = captureLog(() => telemetry.decision(allow));
  assert.deepEqual(on.map((l) => [l.requestId, l.decision]), [["flow-1", "allow"]]);
  assert.equal(await sample(telemetry, "tailvoy_decisions_total", { result: "allow" }), 2);
});

Deno.test("flowClosed: byte counters by direction and a close record with every field", async () => {
  const telemetry = new Telemetry({ logAllows: false });
  const event = {
    listener: "db",
    requestId: "flow-7",
    caller: "100.64.0.1:40001",
    identity: ALICE,
    host: "db.example.com",
    bytesUp: 120,
    bytesDown: 4096,
    durationMs: 1500.6,
    end: "caller closed",
  };
  const lines = captureLog(() => {
    telemetry.flowClosed(event);
    telemetry.flowClosed({ ...event, requestId: "flow-8", identity: undefined, reason: "grant revoked" });
  });
  assert.equal(lines.length, 2, "closes are logged even with logAllows off");
  assert.equal(lines[0].logger, "tailvoy.decision");
  assert.equal(
    lines[0].message,
    'close l4 "db" from "100.64.0.1:40001": "caller closed", 120 B up, 4096 B down',
  );
  assert.deepEqual(fields(lines[0]), {
    event: "close",
    requestId: "flow-7",
    listener: "db",
    layer: "l4",
    callerIp: "100.64.0.1:40001",
    user: "alice@example.com",
    node: "laptop.example.ts.net",
    tags: [],
    host: "db.example.com",
    bytesUp: 120,
    bytesDown: 4096,
    durationMs: 1501,
    end: "caller closed",
  });
  assert.equal(lines[1].reason, "grant revoked");
  assert.equal(lines[1].user, null);
  assert.equal(lines[1].node, null);
  assert.equal(await sample(telemetry, "tailvoy_flow_bytes_total", { listener: "db", direction: "up" }), 240);
  assert.equal(
    await sample(telemetry, "tailvoy_flow_bytes_total", { listener: "db", direction: "down" }),
    8192,
  );
});

Deno.test("resolverObserver: cache hits, WhoIs calls by result, errors by kind, latency in seconds", async () => {
  const telemetry = new Telemetry();
  const observer = telemetry.resolverObserver();
  observer.hit();
  observer.hit();
  observer.call(3);
  observer.call(700, Object.assign(new Error("slow"), { kind: "timeout" }));
  observer.call(1, new Error("no kind"));
  assert.equal(await sample(telemetry, "tailvoy_whois_cache_hits_total"), 2);
  assert.equal(await sample(telemetry, "tailvoy_whois_calls_total", { result: "ok" }), 1);
  assert.equal(await sample(telemetry, "tailvoy_whois_calls_total", { result: "error" }), 2);
  assert.equal(await sample(telemetry, "tailvoy_whois_errors_total", { kind: "timeout" }), 1);
  assert.equal(await sample(telemetry, "tailvoy_whois_errors_total", { kind: "error" }), 1);
  const text = await telemetry.metrics();
  assert.match(text, /^tailvoy_whois_duration_seconds_count 3$/m);
  assert.match(text, /^tailvoy_whois_duration_seconds_sum 0\.704$/m);
  // 3 ms falls in the 5 ms bucket, not the 2 ms one; 700 ms only in the 1 s one.
  assert.match(text, /^tailvoy_whois_duration_seconds_bucket\{le="0\.002"\} 1$/m);
  assert.match(text, /^tailvoy_whois_duration_seconds_bucket\{le="0\.005"\} 2$/m);
  assert.match(text, /^tailvoy_whois_duration_seconds_bucket\{le="1"\} 3$/m);
});

Deno.test("ruleOf: the matching rule's JSON, or every reason when nothing matched", () => {
  assert.equal(ruleOf(decideL4(rules, { listener: "web" })), JSON.stringify(RULE));
  const two = parseCapRules({ [CAP]: [{ listeners: ["a"] }, { listeners: ["b"] }] }).rules;
  const denied = decideL4(two, { listener: "c" });
  assert.equal(ruleOf(denied), `${denied.reasons[0]}; ${denied.reasons[1]}`);
  assert.equal(denied.reasons.length, 2);
});
