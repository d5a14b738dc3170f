/**
 * What egress runs, from the config's `egress:` block: its listeners and its policy (aliases, compiled
 * rules, limits). Pure, and light to import: the egress plane itself (`mod.ts`) is loaded only when a
 * config has an `egress:` block.
 *
 * @module
 */

import type { EgressConfig } from "../config/mod.ts";
import { type Aliases, type CompiledRule, compileRules } from "./destination.ts";
import type { EgressProtocol } from "./handshake.ts";

/** One egress listener, as planned from `egress.listeners`. */
export interface EgressListenerSpec {
  name: string;
  /** `host:port` to bind (an empty host: every interface). */
  address: string;
  /** A proxy: the protocols it speaks. */
  protocols?: EgressProtocol[];
  /** Port-mapped: where every connection goes. */
  target?: { host: string; port: number };
  /** Client prefixes allowed to connect. */
  sources: string[];
  /** Where the proxy users are read from (again on each apply). */
  credentials?: { file?: string; env?: string };
}

/** The config-wide part of egress: aliases, rules and limits (swapped on reload). */
export interface EgressPolicy {
  aliases: Aliases;
  rules: CompiledRule[];
  timeouts: { dial: number; handshake: number; idle: number; lifetime: number };
}

/** The egress listeners and policy of a config (`undefined` without an `egress:` block). */
export function planEgress(
  egress: EgressConfig | undefined,
): { listeners: EgressListenerSpec[]; policy: EgressPolicy } | undefined {
  if (!egress) return undefined;
  const listeners = Object.entries(egress.listeners).map(([name, l]) => ({
    name,
    address: l.address,
    protocols: "protocols" in l ? l.protocols : undefined,
    target: "target" in l ? l.target : undefined,
    sources: l.sources,
    credentials: l.credentials,
  }));
  return {
    listeners,
    policy: { aliases: egress.aliases, rules: compileRules(egress.rules), timeouts: egress.timeouts },
  };
}
