/**
 * Checks for the string formats used in the configuration. Each check returns a
 * {@linkcode Problem} (what is wrong and what to do) or undefined when the value is fine,
 * so the schema, the cross-field rules and the runtime can share them.
 *
 * @module
 */

import { RE2JS } from "re2js";
import { parseCidr } from "../net/cidr.ts";
import { parseIp } from "../net/ip.ts";

/** What is wrong with a value, and what to do about it. */
export interface Problem {
  /** Sentence-case description quoting the value. */
  message: string;
  /** Advice for fixing it. */
  hint?: string;
}

/** `value` as JSON, for quoting an offending value in a message. */
export function jsonQuote(value: unknown): string {
  return JSON.stringify(value);
}

const DNS_LABEL = /^[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?$/;
const IPV4 = /^(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)$/;

function isHostName(host: string): boolean {
  // Docker and Kubernetes service names may contain underscores, so labels allow them.
  return host.length <= 253 && host.split(".").every((label) => DNS_LABEL.test(label));
}

function isIPv6(host: string): boolean {
  try {
    new URL(`http://[${host}]/`);
    return true;
  } catch {
    return false;
  }
}

/** Options for {@linkcode checkHostPort}. */
export interface HostPortOptions {
  /** Allow `:port` (all interfaces), for addresses we listen on rather than dial. */
  allowEmptyHost?: boolean;
  /** Allow port 0 (any free port), for addresses we listen on and announce in the log. */
  allowPortZero?: boolean;
}

/**
 * Checks a `host:port` address such as `127.0.0.1:8080`, `db:5432` or `[::1]:80`.
 * The Go tailvoy only checked for a colon; we also check the host and the port.
 */
export function checkHostPort(value: string, options: HostPortOptions = {}): Problem | undefined {
  const example = "e.g. 127.0.0.1:8080, or [::1]:8080 for IPv6";
  if (/^[a-z][a-z0-9+.-]*:\/\//i.test(value)) {
    return {
      message: `expected host:port, got URL ${jsonQuote(value)}`,
      hint: `drop the scheme, ${example}`,
    };
  }
  let host: string;
  let port: string;
  const bracketed = /^\[([^\]]*)\]:(.*)$/.exec(value);
  if (bracketed) {
    [, host, port] = bracketed;
    if (!isIPv6(host)) {
      return {
        message: `invalid IPv6 address in ${jsonQuote(value)}`,
        hint: "brackets are only for IPv6 addresses",
      };
    }
  } else {
    const colon = value.lastIndexOf(":");
    if (colon < 0) {
      return { message: `expected host:port, got ${jsonQuote(value)}`, hint: `add the port, ${example}` };
    }
    host = value.slice(0, colon);
    port = value.slice(colon + 1);
    if (host.includes(":")) {
      return {
        message: `expected host:port, got ${jsonQuote(value)}`,
        hint: `put IPv6 addresses in brackets, e.g. [${host}]:${port || "80"}`,
      };
    }
    if (host === "" && !options.allowEmptyHost) {
      return {
        message: `missing host in ${jsonQuote(value)}`,
        hint: `add a host name or IP address, ${example}`,
      };
    }
    if (host !== "" && !IPV4.test(host) && !isHostName(host)) {
      return {
        message: `invalid host ${jsonQuote(host)} in ${jsonQuote(value)}`,
        hint: `use a DNS name or IP address, ${example}`,
      };
    }
  }
  const min = options.allowPortZero ? 0 : 1;
  if (!/^\d{1,5}$/.test(port) || Number(port) < min || Number(port) > 65535) {
    return {
      message: `invalid port ${jsonQuote(port)} in ${jsonQuote(value)}`,
      hint: "use a port number from 1 to 65535",
    };
  }
  return undefined;
}

/**
 * Checks a route path pattern: an exact path (`/health`, `/`), a prefix ending in `/*` (`/api/*`), or `/*`.
 */
export function checkPathPattern(value: string): Problem | undefined {
  if (!value.startsWith("/")) {
    return {
      message: `path ${jsonQuote(value)} must start with /`,
      hint: `write it as ${jsonQuote(`/${value}`)}`,
    };
  }
  if (/\s/.test(value)) {
    return { message: `path ${jsonQuote(value)} contains whitespace`, hint: "percent-encode it (%20)" };
  }
  const star = value.indexOf("*");
  if (star >= 0 && (star !== value.length - 1 || !value.endsWith("/*"))) {
    const base = value.slice(0, star).replace(/\/?$/, "/");
    return {
      message: `path ${jsonQuote(value)} has a wildcard that is not a final /*`,
      hint: `use ${jsonQuote(`${base}*`)} to match everything under ${jsonQuote(base)}`,
    };
  }
  return undefined;
}

/** Checks a route hostname: a DNS name, optionally with a leading `*.` wildcard. */
export function checkHostname(value: string): Problem | undefined {
  if (value === "*" || value === "") {
    return {
      message: `hostname ${jsonQuote(value)} matches nothing specific`,
      hint: "omit hostname for a catch-all route",
    };
  }
  if (value.endsWith(".")) {
    return {
      message: `hostname ${jsonQuote(value)} ends with a dot`,
      hint: `write ${jsonQuote(value.slice(0, -1))}`,
    };
  }
  const name = value.startsWith("*.") ? value.slice(2) : value;
  if (name.includes("*") || !isHostName(name) || name.includes("_")) {
    return {
      message: `invalid hostname ${jsonQuote(value)}`,
      hint: "use a DNS name such as app.example.com, or *.example.com for subdomains",
    };
  }
  return undefined;
}

/** Checks an ACL tag such as `tag:gw`. */
export function checkTag(value: string): Problem | undefined {
  if (!value.startsWith("tag:")) {
    return {
      message: `tag ${jsonQuote(value)} must start with "tag:"`,
      hint: `write ${jsonQuote(`tag:${value}`)}`,
    };
  }
  if (!/^tag:[A-Za-z][A-Za-z0-9-]*$/.test(value)) {
    return {
      message: `invalid tag ${jsonQuote(value)}`,
      hint: "tag names start with a letter and use letters, digits and dashes",
    };
  }
  return undefined;
}

/** Checks a Tailscale Service name as written in `serviceMappings` (without the `svc:` prefix). */
export function checkServiceName(value: string): Problem | undefined {
  if (value.startsWith("svc:")) {
    return {
      message: `service name ${jsonQuote(value)} includes the svc: prefix`,
      hint: `write ${jsonQuote(value.slice(4))}`,
    };
  }
  if (!/^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$/.test(value)) {
    const lower = value.toLowerCase();
    return {
      message: `invalid service name ${jsonQuote(value)}`,
      hint: lower !== value && !checkServiceName(lower)
        ? `service names are lowercase: ${jsonQuote(lower)}`
        : "use a DNS label: lowercase letters, digits and dashes, at most 63 characters",
    };
  }
  return undefined;
}

/** Checks a listener name (the key under `listeners`, used in ACL cap rules and Envoy names). */
export function checkListenerName(value: string): Problem | undefined {
  if (!/^[A-Za-z0-9][A-Za-z0-9._-]*$/.test(value)) {
    return {
      message: `invalid listener name ${jsonQuote(value)}`,
      hint: "use letters, digits, dots, dashes and underscores, starting with a letter or digit",
    };
  }
  return undefined;
}

/** Checks a peer capability name such as `rajsingh.info/cap/tailvoy`. */
export function checkCapabilityName(value: string): Problem | undefined {
  if (!/^[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+\/\S+$/.test(value)) {
    return {
      message: `invalid capability name ${jsonQuote(value)}`,
      hint: "use a domain followed by a path, e.g. rajsingh.info/cap/tailvoy",
    };
  }
  return undefined;
}

const DURATION_UNITS_MS: Record<string, number> = {
  ns: 1e-6,
  us: 1e-3,
  "µs": 1e-3,
  "μs": 1e-3,
  ms: 1,
  s: 1000,
  m: 60_000,
  h: 3_600_000,
};
const DURATION_PART = /(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)/y;

/**
 * Parses a Go-style duration (`"500ms"`, `"1s"`, `"2m"`, `"1h30m"`, `"1.5s"`, `"0"`) to milliseconds,
 * or returns undefined if it is not one. Go syntax because the Go tailvoy's `pollInterval` used `time.ParseDuration`.
 */
export function parseDuration(value: string): number | undefined {
  if (value === "0") return 0;
  if (value === "") return undefined;
  DURATION_PART.lastIndex = 0;
  let total = 0;
  while (DURATION_PART.lastIndex < value.length) {
    const match = DURATION_PART.exec(value);
    if (!match) return undefined;
    total += Number(match[1]) * DURATION_UNITS_MS[match[2]];
  }
  return total;
}

/** Checks a duration string; see {@linkcode parseDuration}. */
export function checkDuration(value: string): Problem | undefined {
  if (parseDuration(value) !== undefined) return undefined;
  const hint = /^\d+(\.\d+)?$/.test(value)
    ? `add a unit, e.g. "${value}s" or "${value}ms"`
    : 'use a number with a unit (ms, s, m, h), e.g. "500ms", "1s", "2m" or "1h30m"';
  return { message: `invalid duration ${jsonQuote(value)}`, hint };
}

/** A compiled tailvoy regex: `test` finds a match anywhere in the text (unanchored, as Go's MatchString). */
export interface Pattern {
  /** The pattern as written. */
  readonly source: string;
  /** True if the pattern matches somewhere in `text`; linear in the length of `text`. */
  test(text: string): boolean;
}

/**
 * Compiles a tailvoy regex with RE2 (the `re2js` port of Go's engine, as the Go tailvoy uses): RE2's
 * syntax, including inline flags such as `(?i)`, and matching in time linear in the input, so a pattern
 * such as `(a+)+$` cannot stall the event loop. Throws `RE2JSSyntaxException` if RE2 rejects it
 * (backreferences, lookarounds).
 */
export function compilePattern(pattern: string): Pattern {
  const re = RE2JS.compile(pattern);
  return { source: pattern, test: (text) => re.test(text) };
}

/** Why RE2 rejected a pattern, from the error {@linkcode compilePattern} threw. */
export function patternError(error: unknown): string {
  return error instanceof Error ? error.message.replace(/^error parsing regexp: /, "") : String(error);
}

/** Checks that a string compiles with {@linkcode compilePattern}. */
export function checkPattern(value: string): Problem | undefined {
  try {
    compilePattern(value);
    return undefined;
  } catch (error) {
    const reason = patternError(error);
    return {
      message: `invalid regex ${jsonQuote(value)}: ${reason}`,
      hint: "fix the pattern, or escape special characters with \\",
    };
  }
}

/** Checks a bare host (DNS name, IPv4 or IPv6 address) with no port. */
export function checkHost(value: string): Problem | undefined {
  if (value.includes(":") && isIPv6(value.replace(/^\[(.*)\]$/, "$1"))) return undefined;
  if (IPV4.test(value) || isHostName(value)) return undefined;
  return {
    message: `invalid host ${jsonQuote(value)}`,
    hint: value.includes(":")
      ? "give the host without a port, e.g. 127.0.0.1"
      : "use a DNS name or IP address",
  };
}

/** Checks an http(s) URL such as tailvoy's `discovery.envoyAdmin`. */
export function checkHttpUrl(value: string): Problem | undefined {
  let url: URL | undefined;
  try {
    url = new URL(value);
  } catch {
    // Reported below.
  }
  if (!url || (url.protocol !== "http:" && url.protocol !== "https:")) {
    return {
      message: `expected an http(s) URL, got ${jsonQuote(value)}`,
      hint: 'e.g. "http://127.0.0.1:19000"',
    };
  }
  return undefined;
}

/** Checks a tailnet node hostname (a single DNS label). */
export function checkNodeName(value: string): Problem | undefined {
  if (!/^[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?$/.test(value)) {
    return {
      message: `invalid node hostname ${jsonQuote(value)}`,
      hint: "use one DNS label: letters, digits and dashes, at most 63 characters",
    };
  }
  return undefined;
}

/** Checks an IP prefix (`10.0.0.0/8`, `fd7a:115c:a1e0::/48`) or a bare IP; host bits must be zero. */
export function checkCidr(value: string): Problem | undefined {
  const cidr = parseCidr(value);
  if (!cidr) {
    return {
      message: `invalid CIDR ${jsonQuote(value)}`,
      hint: "use an IP address or a prefix, e.g. 10.0.0.0/8, 100.64.0.7 or fd7a:115c:a1e0::/48",
    };
  }
  if (!cidr.exact) {
    return {
      message: `CIDR ${jsonQuote(value)} has host bits set`,
      hint: `write ${jsonQuote(cidr.text)} for the network, or a bare address for one host`,
    };
  }
  return undefined;
}

/** Options for {@linkcode checkDnsName}. */
export interface DnsNameOptions {
  /** What to do instead when the value is an IP address. */
  ipHint?: string;
}

/**
 * Checks a DNS name such as `pg-primary` or `pg-primary.tail1234.ts.net`; one trailing dot is allowed
 * (a fully qualified name). IP addresses are not names.
 */
export function checkDnsName(value: string, options: DnsNameOptions = {}): Problem | undefined {
  const name = value.endsWith(".") ? value.slice(0, -1) : value;
  if (parseIp(name.replace(/^\[(.*)\]$/, "$1"))) {
    return {
      message: `expected a DNS name, got IP address ${jsonQuote(value)}`,
      hint: options.ipHint ?? "give a name here",
    };
  }
  if (name === "" || !isHostName(name)) {
    return {
      message: `invalid DNS name ${jsonQuote(value)}`,
      hint: "use letters, digits and dashes in dot-separated labels, e.g. pg-primary or db.corp.internal",
    };
  }
  return undefined;
}

/** Checks an environment variable name such as `TAILVOY_EGRESS_USERS`. */
export function checkEnvName(value: string): Problem | undefined {
  if (!/^[A-Za-z_][A-Za-z0-9_]*$/.test(value)) {
    return {
      message: `invalid environment variable name ${jsonQuote(value)}`,
      hint: "use letters, digits and underscores, not starting with a digit, e.g. TAILVOY_EGRESS_USERS",
    };
  }
  return undefined;
}
