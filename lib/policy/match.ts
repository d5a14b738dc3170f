/**
 * Host canonicalisation and the three pattern languages of a rule: route patterns (the Go tailvoy's
 * `/*`, `/prefix/*`, exact), hostname patterns (exact or `*.domain`) and HTTP methods.
 *
 * @module
 */

import { canonicalizePath } from "./path.ts";
import { quote } from "./text.ts";

/** Result of {@link canonicalizeHost}: the canonical host (`""` when none was given), or why it is invalid. */
export type HostResult = { ok: true; host: string } | { ok: false; reason: string };

// Lower-case letters, digits, "_" (seen in internal names) and "-"; labels of 1-63 characters,
// at most 253 in all. A loop, not a regex: this runs on every request.
function isHostname(h: string): boolean {
  if (h.length === 0 || h.length > 253) return false;
  let label = 0;
  for (let i = 0; i < h.length; i++) {
    const c = h.charCodeAt(i);
    if (c === 0x2e) {
      if (label === 0) return false;
      label = 0;
    } else if ((c >= 0x61 && c <= 0x7a) || (c >= 0x30 && c <= 0x39) || c === 0x2d || c === 0x5f) {
      if (++label > 63) return false;
    } else {
      return false;
    }
  }
  return label > 0;
}
const IPV6 = /^[0-9a-f]*:[0-9a-f:.]*:[0-9a-f:.]*$/;
const PORT = /^:[0-9]{0,5}$/;
const METHOD_TOKEN = /^[A-Za-z0-9!#$%&'*+.^_`|~-]+$/;

function badHost(raw: string, why: string): HostResult {
  return { ok: false, reason: `host ${quote(raw)} ${why}` };
}

/**
 * Canonicalises a Host/`:authority` value or a TLS SNI: lower-cased, `:port` removed (also from
 * `[v6]:port`, whose brackets are dropped), one trailing dot removed. `""` stays `""` (no host).
 * Anything that is not a DNS name or IP literal (spaces, `@`, `/`, empty labels, non-ASCII) is
 * invalid: a hostname-restricted rule never matches it.
 */
export function canonicalizeHost(raw: string): HostResult {
  if (raw.length === 0) return { ok: true, host: "" };
  if (raw.charCodeAt(0) === 0x5b) { // "[v6]" or "[v6]:port"
    const close = raw.indexOf("]");
    if (close < 0) return badHost(raw, "has an unterminated IPv6 literal");
    const rest = raw.slice(close + 1);
    if (rest !== "" && !PORT.test(rest)) return badHost(raw, "has an invalid port");
    const addr = raw.slice(1, close).toLowerCase();
    return IPV6.test(addr) ? { ok: true, host: addr } : badHost(raw, "is not a valid IPv6 literal");
  }
  let host = raw.toLowerCase();
  const colon = host.indexOf(":");
  if (colon >= 0) {
    if (host.indexOf(":", colon + 1) >= 0) { // several colons: a bare IPv6 address, no port possible
      return IPV6.test(host) ? { ok: true, host } : badHost(raw, "is not a valid hostname or IPv6 address");
    }
    if (!PORT.test(host.slice(colon))) return badHost(raw, "has an invalid port");
    host = host.slice(0, colon);
  }
  if (host.endsWith(".")) host = host.slice(0, -1);
  if (host.length === 0) return badHost(raw, "has an empty hostname");
  if (!isHostname(host)) return badHost(raw, "is not a valid hostname");
  return { ok: true, host };
}

/** A compiled hostname pattern: an exact host, or a `*.` suffix (stored with its leading dot). */
export type HostPattern = { exact: string } | { suffix: string };

/**
 * Compiles a hostname pattern from a rule: lower-cased, one trailing dot removed. Returns an error
 * string for a pattern that could never match a canonical host (a port, `*` anywhere but a leading
 * `*.` label, an empty label, invalid characters).
 */
export function compileHostPattern(pattern: string): HostPattern | string {
  let p = pattern.toLowerCase();
  if (p.endsWith(".")) p = p.slice(0, -1);
  if (p.startsWith("*.")) {
    const base = p.slice(2);
    if (isHostname(base)) return { suffix: `.${base}` };
    return `hostname pattern ${quote(pattern)}: "*." must be followed by a valid domain`;
  }
  if (isHostname(p)) return { exact: p };
  if (IPV6.test(p)) return { exact: p };
  if (p.startsWith("[") && p.endsWith("]") && IPV6.test(p.slice(1, -1))) return { exact: p.slice(1, -1) };
  return `hostname pattern ${
    quote(pattern)
  } is not a hostname or "*.domain" (no ports, "*" only as the first label)`;
}

/** Matches a canonical host against a compiled pattern; `*.d` matches any depth below `d`, never `d` itself. */
export function matchHostPattern(pattern: HostPattern, host: string): boolean {
  if ("exact" in pattern) return pattern.exact === host;
  return host.length > pattern.suffix.length && host.endsWith(pattern.suffix);
}

/**
 * Matches a hostname pattern (`app.example.com` or `*.example.com`) against a host or SNI.
 * Both sides are canonicalised first (case, trailing dot, port), so this is a convenience for
 * tools and tests; decisions use patterns compiled once by `parseCapRules`. An invalid host or
 * pattern matches nothing.
 */
export function matchHostname(pattern: string, host: string): boolean {
  const compiled = compileHostPattern(pattern);
  const h = canonicalizeHost(host);
  return typeof compiled !== "string" && h.ok && h.host !== "" && matchHostPattern(compiled, h.host);
}

/** A compiled route pattern. */
export type RoutePattern =
  | { kind: "all" }
  | { kind: "prefix"; bare: string; prefix: string }
  | { kind: "exact"; path: string };

/**
 * Compiles a route pattern: `/*` matches every path; `/p/*` matches `/p`, `/p/` and everything
 * below (not `/pq`); anything else is exact. Returns an error string for a pattern that could
 * never match a canonical path (no leading `/`, `*` other than a final `/*`, or a base that
 * {@link canonicalizePath} would rewrite, e.g. `/a/../b`, `/a//b`, `/%7e`, a query).
 */
export function compileRoutePattern(pattern: string): RoutePattern | string {
  if (pattern === "/*") return { kind: "all" };
  const prefix = pattern.endsWith("/*");
  const base = prefix ? pattern.slice(0, -2) : pattern;
  if (!base.startsWith("/")) return `route ${quote(pattern)} must start with "/"`;
  if (base.includes("*")) return `route ${quote(pattern)}: "*" is only supported as a final "/*"`;
  if (prefix && base.endsWith("/")) return `route ${quote(pattern)} has an empty segment before "/*"`;
  const canonical = canonicalizePath(base);
  if (!canonical.ok) return `route ${quote(pattern)} is not a valid path: ${canonical.reason}`;
  if (canonical.path !== base) {
    return `route ${quote(pattern)} is not in canonical form (would be ${quote(canonical.path)}${
      prefix ? ' + "/*"' : ""
    }) and could never match`;
  }
  return prefix ? { kind: "prefix", bare: base, prefix: `${base}/` } : { kind: "exact", path: base };
}

/** Matches a canonical path against a compiled route pattern. */
export function matchRoutePattern(pattern: RoutePattern, path: string): boolean {
  switch (pattern.kind) {
    case "all":
      return true;
    case "prefix":
      return path === pattern.bare || path.startsWith(pattern.prefix);
    case "exact":
      return path === pattern.path;
  }
}

/**
 * Matches a route pattern against a path with the Go tailvoy's exact string semantics
 * (`internal/policy/engine.go` `matchPath`): `/*` everything, `/p/*` is `/p` or a `/p/` prefix,
 * else equality. The path is compared as given; pass a canonical path ({@link canonicalizePath}).
 */
export function matchRoute(pattern: string, path: string): boolean {
  if (pattern === "/*") return true;
  if (pattern.endsWith("/*")) {
    return path.startsWith(pattern.slice(0, -1)) || path === pattern.slice(0, -2);
  }
  return pattern === path;
}

/** Returns an error string when `method` is not an HTTP method token (RFC 9110 §5.6.2). */
export function methodError(method: string): string | undefined {
  return METHOD_TOKEN.test(method) ? undefined : `method ${quote(method)} is not an HTTP token`;
}
