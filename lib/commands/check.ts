/**
 * `tailvoy check`: explain one decision with the same engine and identity lookup the proxy uses; also
 * the case model `tailvoy test` (`test.ts`) runs. For CI pipelines that change grants.
 *
 * @module
 */

import { own } from "../util/own.ts";
import { parse as parseYaml } from "yaml";
import { z } from "zod";
import { type CliArgs, EXIT, UsageError } from "../cli.ts";
import { type Config, L7_PROTOCOLS } from "../config/mod.ts";
import type { CommandContext } from "./context.ts";
import { type Identity, identityFromWhoIs } from "../identity/mod.ts";
import { LocalApiClient, type WhoIsResponse } from "../localapi/mod.ts";
import { decideL4, decideL7, type Decision, formatExplanation } from "../policy/mod.ts";
import { errorMessage } from "../util/error.ts";

/** One request to decide: L7 when it has a path (or the listener is http/https/grpc), else L4. */
export const PolicyQuerySchema = z.strictObject({
  listener: z.string().min(1),
  host: z.string().optional(),
  sni: z.string().optional(),
  path: z.string().optional(),
  method: z.string().optional(),
});

/** A request to decide. */
export type PolicyQuery = z.infer<typeof PolicyQuerySchema>;

/** A capability map as WhoIs returns it: capability name → list of rules. */
export const CapMapFileSchema = z.record(z.string(), z.array(z.unknown()));

/** One case of a `tailvoy test` fixtures file. */
export const TestCaseSchema = PolicyQuerySchema.extend({
  name: z.string().optional(),
  /** The caller's caps, as WhoIs returns them. */
  caps: CapMapFileSchema.optional(),
  /** Or the caller's tailnet IP, resolved through the LocalAPI. */
  as: z.string().optional(),
  expect: z.enum(["allow", "deny"]),
}).refine((c) => (c.caps === undefined) !== (c.as === undefined), {
  message: "give exactly one of caps (a capability map) or as (a tailnet IP)",
});

/** A `tailvoy test` fixtures file. */
export const TestFileSchema = z.strictObject({
  cases: z.array(TestCaseSchema).min(1),
});

/** Options shared by check and test. */
export interface CheckOptions {
  /** Capability names carrying tailvoy rules. */
  capNames?: readonly string[];
  /** Parsed config, to check listener names and pick L4 or L7 from the listener's protocol. */
  config?: Config;
}

/** An input error (bad fixture, unknown listener): exit 2, not a deny. */
export class CheckInputError extends Error {
  override name = "CheckInputError";
}

/** Decides `request` for `identity`. Throws {@link CheckInputError} for a listener the config lacks. */
export function decide(
  identity: Pick<Identity, "rules">,
  request: PolicyQuery,
  options: CheckOptions = {},
): Decision {
  const listener = own(options.config?.listeners, request.listener);
  // In discovery mode the listeners come from Envoy at run time: any name may be asked about.
  if (options.config && !listener && !options.config.discovery) {
    const names = Object.keys(options.config.listeners);
    throw new CheckInputError(
      `Unknown listener "${request.listener}": the config has ${
        names.length ? names.join(", ") : "no listeners"
      }`,
    );
  }
  const l7 = listener ? L7_PROTOCOLS.includes(listener.protocol) : request.path !== undefined;
  if (!l7) return decideL4(identity.rules, { listener: request.listener, sni: request.sni ?? request.host });
  return decideL7(identity.rules, {
    listener: request.listener,
    host: request.host ?? request.sni,
    path: request.path ?? "/",
    method: request.method ?? "GET",
  });
}

/** Who a check is for, and where that came from: a capability map (a file or a case) or WhoIs. */
export type CheckIdentity = Identity & { source: "caps" | "whois" };

/** Identity from a capability map (no WhoIs), for `--caps` and fixture cases. */
export function identityFromCaps(caps: Record<string, unknown[]>, options: CheckOptions = {}): CheckIdentity {
  const res: WhoIsResponse = {
    Node: { StableID: "caps-file", Name: "caps-file", Addresses: [], Tags: [] },
    UserProfile: null,
    CapMap: caps,
  };
  return { ...identityFromWhoIs(res, { capNames: options.capNames }), source: "caps" };
}

/** Identity of a tailnet IP through the LocalAPI at `socket`. */
export async function identityFromTailnet(
  ip: string,
  socket: string,
  options: CheckOptions & { timeoutMs?: number } = {},
): Promise<CheckIdentity> {
  using api = new LocalApiClient(socket, { timeoutMs: options.timeoutMs });
  return { ...identityFromWhoIs(await api.whois(ip), { capNames: options.capNames }), source: "whois" };
}

/** Human description of who an identity is. */
export function describeIdentity(identity: CheckIdentity): string {
  if (identity.source === "caps") return "capability map from file";
  const who = identity.login ?? (identity.tags.length ? identity.tags.join(",") : "unknown");
  return `${who} on ${identity.node} (${identity.ips.join(", ")})`;
}

/** Result of one fixture case. */
export interface CaseResult {
  name: string;
  pass: boolean;
  decision: Decision;
  expect: "allow" | "deny";
}

/** Parses a fixtures file; throws {@link CheckInputError} naming every problem. */
export function parseTestFile(text: string, source: string): z.infer<typeof TestFileSchema> {
  let data: unknown;
  try {
    data = parseYaml(text);
  } catch (err) {
    throw new CheckInputError(`${source}: not valid YAML: ${errorMessage(err)}`);
  }
  const result = TestFileSchema.safeParse(data);
  if (!result.success) {
    const lines = result.error.issues.map((i) => {
      const at = i.path.map((p) => typeof p === "number" ? `[${p}]` : `.${String(p)}`).join("").replace(
        /^\./,
        "",
      );
      return `${source}: ${at || "(top level)"}: ${i.message}`;
    });
    throw new CheckInputError(
      `${lines.join("\n")}\nA fixtures file is: cases: [{name, caps | as, listener, ...}]`,
    );
  }
  return result.data;
}

/** Runs every case; WhoIs lookups (`as:`) go through `socket`. */
export async function runCases(
  file: z.infer<typeof TestFileSchema>,
  socket: string,
  options: CheckOptions = {},
): Promise<CaseResult[]> {
  const results: CaseResult[] = [];
  for (const [i, testCase] of file.cases.entries()) {
    const { name, caps, as, expect, ...request } = testCase;
    const identity = caps ? identityFromCaps(caps, options) : await identityFromTailnet(as!, socket, options);
    const decision = decide(identity, request, options);
    results.push({
      name: name ?? `case ${i + 1}`,
      pass: decision.allow === (expect === "allow"),
      decision,
      expect,
    });
  }
  return results;
}

/** Text report of case results, failures with their explanation. */
export function formatResults(results: readonly CaseResult[]): string {
  const lines = results.map((r) =>
    r.pass
      ? `PASS ${r.name}`
      : `FAIL ${r.name}: expected ${r.expect}, got ${r.decision.allow ? "allow" : "deny"}\n${
        indent(formatExplanation(r.decision))
      }`
  );
  const failed = results.filter((r) => !r.pass).length;
  lines.push(`${results.length - failed} passed, ${failed} failed`);
  return lines.join("\n");
}

function indent(text: string): string {
  return text.split("\n").map((l) => `    ${l}`).join("\n");
}

/** `tailvoy check`: one request judged for one identity (from the tailnet or a capability file). */
export async function checkCommand(
  args: CliArgs,
  ctx: CommandContext,
): Promise<{ text: string; code: number }> {
  const v = args.values;
  if (!v.listener) throw new UsageError("check needs --listener NAME");
  if ((v.as === undefined) === (v.caps === undefined)) {
    throw new UsageError("check needs exactly one of --as <tailnet IP> or --caps <file.json>");
  }
  const { capNames, config } = ctx;
  const identity = v.caps
    ? identityFromCaps(await readCapsFile(v.caps), { capNames })
    : await identityFromTailnet(v.as!, ctx.socket, { capNames });
  const decision = decide(identity, {
    listener: v.listener,
    host: v.host,
    sni: v.sni,
    path: v.path,
    method: v.method,
  }, { config, capNames });
  const lines = [
    `${decision.allow ? "ALLOW" : "DENY"} ${describeIdentity(identity)}`,
    formatExplanation(decision),
  ];
  for (const issue of identity.malformed) {
    lines.push(`malformed rule ignored: ${issue.json} (${issue.reason})`);
  }
  return { text: lines.join("\n"), code: decision.allow ? EXIT.ok : EXIT.deny };
}

/** `path`'s text; a missing file is a {@link CheckInputError} naming it. */
export async function readInputFile(path: string): Promise<string> {
  try {
    return await Deno.readTextFile(path);
  } catch (err) {
    if (err instanceof Deno.errors.NotFound) throw new CheckInputError(`${path}: file not found`);
    throw err;
  }
}

async function readCapsFile(path: string): Promise<Record<string, unknown[]>> {
  const text = await readInputFile(path);
  let data: unknown;
  try {
    data = JSON.parse(text);
  } catch (err) {
    throw new CheckInputError(`${path}: not valid JSON (${errorMessage(err)})`);
  }
  // Accept a whole WhoIs answer too: its CapMap is what counts.
  if (data && typeof data === "object" && "CapMap" in data) data = (data as { CapMap: unknown }).CapMap;
  if (!data || typeof data !== "object" || Array.isArray(data)) {
    throw new CheckInputError(
      `${path}: expected a capability map like {"rajsingh.info/cap/tailvoy": [{"listeners": ["web"]}]}`,
    );
  }
  for (const [name, rules] of Object.entries(data)) {
    if (!Array.isArray(rules)) throw new CheckInputError(`${path}: "${name}" must be a list of rules`);
  }
  return data as Record<string, unknown[]>;
}
