/**
 * The `egress:` block: a policy-controlled proxy from cluster workloads into the tailnet (issue #17).
 * Listeners on the cluster side speak HTTP proxy and/or SOCKS5, or map a port to one destination;
 * `rules` decide which destinations each may reach; `aliases` rename destinations centrally.
 *
 * Decisions made here (the runtime relies on them):
 * - `rules` is required: no rule allows nothing (as with grants), `- {}` allows every tailnet destination.
 * - A rule with `external` matches only destinations that are not on the tailnet, and the tailnet keys
 *   (`hosts`, `tags`, `addresses`, `routes`) only tailnet ones, so one rule cannot hold both.
 * - An alias key without a port (`db.corp.internal`) maps every port and keeps the asked one, so its
 *   target has no port; a key with a port (`api.corp.internal:443`) wins over the bare name for that port,
 *   and a target without a port keeps the asked one. Keys are lowercased and lose a trailing dot; targets
 *   are not looked up in `aliases` again.
 * - A port-mapped listener (`target`) takes no credentials: there is no handshake to carry them.
 *
 * @module
 */

import { z } from "zod";
import { DEFAULT_ADMIN_ADDRESS, DEFAULT_EGRESS_SOURCES, EGRESS_PROTOCOLS } from "./constants.ts";
import { joinMessage } from "./errors.ts";
import { checked, duration, nonEmpty, optionalDuration } from "./fields.ts";
import {
  checkCidr,
  checkDnsName,
  checkEnvName,
  checkHost,
  checkHostPort,
  checkListenerName,
  checkTag,
  jsonQuote,
  type Problem,
} from "./formats.ts";
import type { CrossFieldIssue } from "./cross_field.ts";
import { closest } from "./suggest.ts";

// One trailing dot marks a fully qualified name; it changes nothing here.
const withoutRootDot = (value: string) => value.replace(/\.(?=(?::\d*)?$)/, "");

function checkAliasName(value: string): Problem | undefined {
  const name = withoutRootDot(value);
  const colon = name.lastIndexOf(":");
  const ipHint = "aliases rename names; an IP address is dialed as it is";
  if (colon < 0) return checkDnsName(name, { ipHint });
  return checkDnsName(name.slice(0, colon), { ipHint }) ?? checkHostPort(name);
}

function checkAliasTarget(value: string): Problem | undefined {
  const target = withoutRootDot(value);
  // A bare name or IP (IPv6 with or without brackets) keeps the asked port.
  if (!checkHost(target)) return undefined;
  return target.includes(":") ? checkHostPort(target) : checkHost(target);
}

/** A destination as written in an alias or a port-mapped listener; IPv6 without brackets. */
interface Destination {
  /** Name or IP address. */
  host: string;
  /** Absent: the port the client asked for. */
  port?: number;
}

// Only for values that passed checkAliasTarget or checkHostPort.
function splitDestination(value: string): Destination {
  const target = withoutRootDot(value);
  const bracketed = /^\[([^\]]*)\](?::(\d+))?$/.exec(target);
  if (bracketed) {
    return bracketed[2] ? { host: bracketed[1], port: Number(bracketed[2]) } : { host: bracketed[1] };
  }
  const bareHost = checkHost(target) === undefined;
  const colon = target.lastIndexOf(":");
  if (bareHost || colon < 0) return { host: target };
  return { host: target.slice(0, colon), port: Number(target.slice(colon + 1)) };
}

const aliasKey = (key: string) => withoutRootDot(key).toLowerCase();

/** A port or an inclusive range `"a-b"` of `rules[].ports`, parsed to `{from, to}`. */
const PortRangeSchema = z.unknown().transform((value, ctx): { from: number; to: number } => {
  const text = typeof value === "number" ? String(value) : value;
  const match = typeof text === "string" ? /^(\d{1,5})(?:-(\d{1,5}))?$/.exec(text) : null;
  const from = Number(match?.[1]);
  const to = Number(match?.[2] ?? match?.[1]);
  const inRange = (port: number) => port >= 1 && port <= 65535;
  if (match && inRange(from) && inRange(to) && from <= to) return { from, to };
  ctx.addIssue({
    code: "custom",
    input: value,
    message: match && from > to && inRange(from) && inRange(to)
      ? joinMessage(`port range ${jsonQuote(text)} ends before it starts`, `write "${to}-${from}"`)
      : joinMessage(
        `invalid port or port range ${jsonQuote(value)}`,
        'use ports from 1 to 65535: a port (5432) or a range ("8000-8100")',
      ),
  });
  return z.NEVER;
});

const cidrs = z.array(checked(checkCidr)).min(1);

/**
 * One entry of `egress.rules`: AND inside a rule, OR across rules; an omitted key is unrestricted.
 * Destinations are judged after resolution, against tailscaled's own view of its peers.
 */
const EgressRuleSchema = z.strictObject({
  /** Shown in logs as the rule that allowed a connection (default `rules[i]`). */
  name: nonEmpty("the rule a name").optional(),
  /** Egress listener names the rule applies to (omitted: all). */
  listeners: z.array(checked(checkListenerName)).min(1).optional(),
  /** Tailnet node names: short MagicDNS name or FQDN (a trailing dot is optional). */
  hosts: z.array(checked((value) => checkDnsName(value, { ipHint: "list tailnet IPs under addresses" })))
    .min(1).optional(),
  /** Tags of the destination node. */
  tags: z.array(checked(checkTag)).min(1).optional(),
  /** Tailnet IPs or CIDRs of destination nodes. */
  addresses: cidrs.optional(),
  /** The destination is inside a subnet route some peer advertises, and inside one of these. */
  routes: cidrs.optional(),
  /** Destinations off the tailnet this rule allows (the only way to reach them). */
  external: cidrs.optional(),
  /** Destination ports and inclusive ranges, parsed to `{from, to}`. */
  ports: z.array(PortRangeSchema).min(1).optional(),
});

/** `credentials:` of an egress proxy listener: exactly one place to read `user:password` lines from. */
const EgressCredentialsSchema = z.strictObject({
  /** A file of `user:password` lines; `#` starts a comment. */
  file: nonEmpty("the users file path").optional(),
  /** An environment variable holding the same, newline- or comma-separated. */
  env: checked(checkEnvName).optional(),
});

const uniqueProtocols = (protocols: readonly string[]) => new Set(protocols).size === protocols.length;

/** One entry of `egress.listeners`: exactly one of `protocols` (a proxy) or `target` (port-mapped). */
const EgressListenerSchema = z.strictObject({
  /** `host:port` to bind on the cluster side (not the tailnet); port 0 picks a free port. */
  address: checked((value) => checkHostPort(value, { allowEmptyHost: true, allowPortZero: true })),
  /** What the port speaks: `http` (CONNECT and absolute-form), `socks5`, or both (sniffed). */
  protocols: z.array(z.enum(EGRESS_PROTOCOLS)).min(1)
    .refine(uniqueProtocols, {
      error: joinMessage("lists a protocol more than once", "name http and socks5 at most once each"),
    })
    .optional(),
  /**
   * Port-mapped: every connection goes to this `host:port` (resolved like a proxy request, aliases
   * first; rules still apply); `{host, port}` after normalizing.
   */
  target: checked(checkHostPort).optional(),
  /** Client CIDRs allowed to connect (default loopback only). */
  sources: cidrs.default([...DEFAULT_EGRESS_SOURCES]),
  /** Users who may use the proxy (HTTP Basic, SOCKS5 RFC 1929); omitted: no credentials asked. */
  credentials: EgressCredentialsSchema.optional(),
});

/** `egress.timeouts:` durations, each written like `"10s"` and parsed to milliseconds. */
const EgressTimeoutsSchema = z.strictObject({
  /** Connecting to a destination (default `tailvoy.timeouts.dial`, filled in after parsing). */
  dial: optionalDuration("10s"),
  /** Reading the request head or the SOCKS negotiation (default 10s). */
  handshake: duration("10s"),
  /** A relayed connection with no bytes either way for this long is closed (default 1h). */
  idle: duration("1h"),
  /** A relayed connection is closed after this long (default 0: no limit). */
  lifetime: duration("0", { allowZero: true }),
}).prefault({});

/** The `egress:` block (see the module documentation for the decisions it makes). */
export const EgressSchema = z.strictObject({
  /** Name or `name:port` → tailnet target (name or IP, optional port); `{host, port?}` after normalizing. */
  aliases: z.record(checked(checkAliasName), checked(checkAliasTarget)).default({}),
  /** Destination policy: OR across rules. Required: no rule allows nothing. */
  rules: z.array(EgressRuleSchema, {
    error: (issue) =>
      issue.input === undefined
        ? joinMessage(
          "required",
          "add rules: `- {}` allows every tailnet destination, an empty list allows nothing",
        )
        : undefined,
  }),
  /** Cluster-side listeners by name; names are unique across `listeners` and `egress.listeners`. */
  listeners: z.record(checked(checkListenerName), EgressListenerSchema)
    .refine((listeners) => Object.keys(listeners).length > 0, {
      error: joinMessage(
        "must not be empty",
        'add a listener, e.g. proxy: {address: "0.0.0.0:1055", protocols: [http, socks5]}',
      ),
    }),
  /** Dial, handshake, idle and lifetime limits. */
  timeouts: EgressTimeoutsSchema,
});

/**
 * The parsed block with what the runtime should not recompute: alias keys canonical (lowercase, no
 * trailing dot) and alias and `target` destinations split into `{host, port}`, and `timeouts.dial`
 * defaulted to `dial` (`tailvoy.timeouts.dial`). Run after {@linkcode checkEgress} passed.
 */
export function normalizeEgress(egress: z.output<typeof EgressSchema>, defaults: { dial: number }) {
  const aliases = Object.fromEntries(
    Object.entries(egress.aliases).map(([key, value]) => [aliasKey(key), splitDestination(value)]),
  );
  const listeners = Object.fromEntries(
    Object.entries(egress.listeners).map(([name, { target, ...listener }]) => [
      name,
      target === undefined
        ? listener
        : { ...listener, target: splitDestination(target) as Required<Destination> },
    ]),
  );
  const timeouts = { ...egress.timeouts, dial: egress.timeouts.dial ?? defaults.dial };
  return { ...egress, aliases, listeners, timeouts };
}

type Data = Record<string, unknown>;
type Path = (string | number)[];

const isObject = (value: unknown): value is Data =>
  typeof value === "object" && value !== null && !Array.isArray(value);
const has = (object: Data, key: string) => object[key] !== undefined && object[key] !== null;

// "a", "a and b", "a, b and c".
const listing = (items: string[]) =>
  items.length > 1 ? `${items.slice(0, -1).join(", ")} and ${items[items.length - 1]}` : items.join("");

// Rule keys that match tailnet destinations, which `external` by definition is not.
const TAILNET_KEYS = ["hosts", "tags", "addresses", "routes"];

/**
 * Reports the `egress:` problems that span fields (or the rest of the config) through `report`. Reads
 * the data defensively, so it also runs on input that failed the schema.
 */
export function checkEgress(config: Data, report: (issue: CrossFieldIssue) => void): void {
  const egress = config.egress;
  if (!isObject(egress)) return;
  const listeners = isObject(egress.listeners) ? egress.listeners : {};
  const names = Object.keys(listeners);
  const tailnetNames = isObject(config.listeners) ? Object.keys(config.listeners) : [];
  const tailvoy = isObject(config.tailvoy) ? config.tailvoy : {};
  const adminAddress = typeof tailvoy.adminAddress === "string"
    ? tailvoy.adminAddress
    : DEFAULT_ADMIN_ADDRESS;
  const bound = new Map<string, string>([[adminAddress, "tailvoy.adminAddress"]]);

  for (const name of names) {
    const listener = listeners[name];
    if (!isObject(listener)) continue;
    const path: Path = ["egress", "listeners", name];
    if (tailnetNames.includes(name)) {
      report({
        path,
        message: `name ${jsonQuote(name)} is also used by listeners.${name}`,
        hint: "egress and tailnet listeners share one namespace (logs and metrics name them); rename one",
      });
    }
    checkListenerKind(path, listener, report);
    const address = listener.address;
    if (typeof address === "string" && !/:0$/.test(address)) {
      const owner = bound.get(address);
      if (owner) {
        report({
          path: [...path, "address"],
          message: `address ${jsonQuote(address)} is already used by ${owner}`,
          hint: "give each listener its own address",
        });
      } else bound.set(address, `egress.listeners.${name}`);
    }
  }
  if (Array.isArray(egress.rules)) checkEgressRules(egress.rules, { names, tailnetNames }, report);
  if (isObject(egress.aliases)) checkAliases(egress.aliases, report);
}

function checkListenerKind(path: Path, listener: Data, report: (issue: CrossFieldIssue) => void): void {
  const proxy = has(listener, "protocols");
  const mapped = has(listener, "target");
  if (proxy && mapped) {
    report({
      path: [...path, "target"],
      message: "cannot be used together with protocols",
      hint: "a listener is a proxy (protocols) or port-mapped (target); make two listeners",
    });
  } else if (!proxy && !mapped) {
    report({
      path,
      message: "needs protocols or target",
      hint: "add protocols: [http, socks5] for a proxy, or target: host:port to send every connection there",
    });
  }
  const credentials = listener.credentials;
  if (mapped && has(listener, "credentials")) {
    report({
      path: [...path, "credentials"],
      message: "only applies to listeners with protocols",
      hint: "a port-mapped listener has no handshake to carry credentials; limit its clients with sources",
    });
  }
  if (!isObject(credentials)) return;
  if (has(credentials, "file") && has(credentials, "env")) {
    report({
      path: [...path, "credentials"],
      message: "cannot set both file and env",
      hint: "read the users from one place: remove file or env",
    });
  } else if (!has(credentials, "file") && !has(credentials, "env")) {
    report({
      path: [...path, "credentials"],
      message: "needs file or env",
      hint: "add file: /path/to/users (user:password lines), or env: VARIABLE",
    });
  }
}

function checkEgressRules(
  rules: unknown[],
  context: { names: string[]; tailnetNames: string[] },
  report: (issue: CrossFieldIssue) => void,
): void {
  const { names, tailnetNames } = context;
  const named = new Map<string, number>();
  rules.forEach((rule, index) => {
    if (!isObject(rule)) return;
    const path: Path = ["egress", "rules", index];
    if (typeof rule.name === "string") {
      const first = named.get(rule.name);
      if (first !== undefined) {
        report({
          path: [...path, "name"],
          message: `rule name ${jsonQuote(rule.name)} is already used by egress.rules[${first}]`,
          hint: "give each rule its own name, so logs say which one decided",
        });
      } else named.set(rule.name, index);
    }
    if (Array.isArray(rule.listeners)) {
      rule.listeners.forEach((name, at) => {
        if (typeof name !== "string" || names.includes(name)) return;
        const known = names.length > 0
          ? `egress listeners are ${names.map(jsonQuote).join(", ")}`
          : "define it under egress.listeners";
        const suggestion = closest(name, names);
        report({
          path: [...path, "listeners", at],
          message: tailnetNames.includes(name)
            ? `${jsonQuote(name)} is a tailnet listener (listeners:), not an egress listener`
            : `unknown egress listener ${jsonQuote(name)}`,
          hint: suggestion ? `did you mean ${jsonQuote(suggestion)}? ${known}` : known,
        });
      });
    }
    const tailnetKeys = TAILNET_KEYS.filter((key) => has(rule, key));
    if (has(rule, "external") && tailnetKeys.length > 0) {
      report({
        path: [...path, "external"],
        message: `cannot be combined with ${listing(tailnetKeys)} in one rule`,
        hint: "external matches destinations off the tailnet, the others tailnet ones; " +
          "put external in a rule of its own",
      });
    }
  });
}

function checkAliases(aliases: Data, report: (issue: CrossFieldIssue) => void): void {
  const seen = new Map<string, string>();
  for (const [key, value] of Object.entries(aliases)) {
    if (checkAliasName(key) || typeof value !== "string" || checkAliasTarget(value)) continue;
    const path: Path = ["egress", "aliases", key];
    const canonical = aliasKey(key);
    const first = seen.get(canonical);
    if (first !== undefined) {
      report({
        path,
        at: path,
        message: `alias ${jsonQuote(key)} is the same name as ${jsonQuote(first)}`,
        hint: "names are case-insensitive and a trailing dot changes nothing; keep one",
      });
      continue;
    }
    seen.set(canonical, key);
    const target = splitDestination(value);
    if (!withoutRootDot(key).includes(":") && target.port !== undefined) {
      report({
        path,
        message: `alias ${jsonQuote(key)} maps every port, so its target ${jsonQuote(value)} cannot name one`,
        hint: `write the key as "${withoutRootDot(key)}:${target.port}", or drop the port from the target`,
      });
    }
  }
}
