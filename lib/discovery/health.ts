/**
 * Health-based unadvertising (pure): a Tailscale Service whose Envoy clusters have no healthy host for
 * `unhealthyThreshold` polls in a row is withheld from AdvertiseServices, so clients go to replicas that
 * can serve them; it is advertised again on the first healthy poll. As in the Go tailvoy, `any` withholds when
 * any of the Service's clusters is dead and `all` only when all are; a cluster Envoy does not report
 * counts as healthy.
 *
 * @module
 */

import type { DiscoveryConfig } from "../config/mod.ts";
import type { ClusterHealth } from "./parse.ts";

/** `discovery.healthPolicy` and `discovery.unhealthyThreshold`. */
export interface HealthSettings {
  policy: DiscoveryConfig["healthPolicy"];
  threshold: DiscoveryConfig["unhealthyThreshold"];
}

/** One Service's state after a poll. */
export interface ServiceVerdict {
  healthy: boolean;
  /** Its clusters with no healthy host. */
  dead: string[];
}

/** Judges one Service from the clusters of its listeners. */
export function assessService(
  clusters: readonly string[],
  health: ReadonlyMap<string, ClusterHealth>,
  options: { policy: HealthSettings["policy"] },
): ServiceVerdict {
  const dead = clusters.filter((c) => health.get(c)?.healthy === 0);
  const unhealthy = options.policy === "all"
    ? clusters.length > 0 && dead.length === clusters.length
    : dead.length > 0;
  return { healthy: !unhealthy, dead };
}

/** A change of a Service's advertisement. */
export interface HealthChange {
  svc: string;
  /** True: advertise again; false: withhold. */
  advertise: boolean;
  dead: string[];
}

/** Counts unhealthy polls per Service and decides which are withheld. */
export class ServiceHealthTracker {
  #settings: HealthSettings;
  readonly #streaks = new Map<string, number>();
  readonly #withheld = new Set<string>();

  /** A tracker for `settings`. */
  constructor(settings: HealthSettings) {
    this.#settings = settings;
  }

  /** Replaces the settings (reload); counts so far and withheld Services are kept. */
  set settings(settings: HealthSettings) {
    this.#settings = settings;
  }

  /** Services currently withheld. */
  get withheld(): ReadonlySet<string> {
    return this.#withheld;
  }

  /**
   * Feeds one poll: `clustersOf` maps each Service (`svc:NAME`) to the clusters behind it. Returns the
   * changes; Services no longer present are forgotten.
   */
  update(
    clustersOf: ReadonlyMap<string, readonly string[]>,
    health: ReadonlyMap<string, ClusterHealth>,
  ): HealthChange[] {
    const changes: HealthChange[] = [];
    for (const svc of [...this.#streaks.keys()]) {
      if (!clustersOf.has(svc)) {
        this.#streaks.delete(svc);
        this.#withheld.delete(svc);
      }
    }
    for (const [svc, clusters] of clustersOf) {
      const verdict = assessService(clusters, health, this.#settings);
      if (verdict.healthy) {
        this.#streaks.set(svc, 0);
        if (this.#withheld.delete(svc)) changes.push({ svc, advertise: true, dead: [] });
        continue;
      }
      const streak = (this.#streaks.get(svc) ?? 0) + 1;
      this.#streaks.set(svc, streak);
      if (streak >= this.#settings.threshold && !this.#withheld.has(svc)) {
        this.#withheld.add(svc);
        changes.push({ svc, advertise: false, dead: verdict.dead });
      }
    }
    return changes;
  }
}
