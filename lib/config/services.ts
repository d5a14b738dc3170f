/**
 * Which Tailscale Services a listener is advertised on, from `tailscale.serviceMappings`.
 *
 * The Go tailvoy treats every entry as an unanchored regex, even in static mode, so `web: [http]`
 * also maps a listener named `https`. We keep regexes (so the Go tailvoy's configs work unchanged) but
 * an entry that is exactly the name of a static listener matches only that listener.
 *
 * @module
 */

import { compilePattern } from "./formats.ts";

/** The prefix Tailscale uses for Service names. */
export const SERVICE_PREFIX = "svc:";

/** One compiled `serviceMappings` entry. */
export interface MappingEntry {
  /** Service name without the `svc:` prefix. */
  service: string;
  /** The entry as written. */
  pattern: string;
  /** True if the entry matches `name`. */
  matches(name: string): boolean;
}

/** Options for {@linkcode compileMappingEntry}. */
export interface MappingEntryOptions {
  /** Configured listener names in static mode; absent in discovery mode, where every entry is a regex. */
  staticListeners?: ReadonlySet<string>;
}

/** Compiles one `serviceMappings` entry of `service` (RE2). Throws on a pattern RE2 rejects. */
export function compileMappingEntry(
  service: string,
  pattern: string,
  options: MappingEntryOptions = {},
): MappingEntry {
  if (options.staticListeners?.has(pattern)) {
    return { service, pattern, matches: (name) => name === pattern };
  }
  const regex = compilePattern(pattern);
  return { service, pattern, matches: (name) => regex.test(name) };
}

/** The parts of a parsed config that service matching needs. */
export interface ServiceMatcherInput {
  /** Holds `serviceMappings`. */
  tailscale: { serviceMappings: Record<string, string[]> };
  /** Static listeners by name; ignored in discovery mode. */
  listeners: Record<string, unknown>;
  /** Present in discovery mode. */
  discovery?: unknown;
}

/**
 * Builds a function returning the Services (as `svc:<name>`, sorted by name, no duplicates) a listener
 * is advertised on; an empty list means none. Patterns were validated by {@linkcode parseConfig}.
 */
export function createServiceMatcher(config: ServiceMatcherInput): (listenerName: string) => string[] {
  const staticListeners = config.discovery === undefined ? new Set(Object.keys(config.listeners)) : undefined;
  const mappings = config.tailscale.serviceMappings;
  const entries = Object.keys(mappings).sort().flatMap((service) =>
    mappings[service].map((pattern) => compileMappingEntry(service, pattern, { staticListeners }))
  );
  return (listenerName) => {
    const services: string[] = [];
    for (const entry of entries) {
      const name = SERVICE_PREFIX + entry.service;
      if (entry.matches(listenerName) && !services.includes(name)) services.push(name);
    }
    return services;
  };
}
