/**
 * What both modes run from a plan: the data plane (tailnet listeners), the publisher that tells
 * tailscaled about them, and the egress listeners (cluster side), applied together and shut down in
 * order.
 *
 * @module
 */

import type { Config } from "../config/mod.ts";
import type { EgressPlane } from "../egress/mod.ts";
import { DataPlane, type DataPlaneDeps, type ReloadSummary } from "../l4/mod.ts";
import { getLogger } from "../log.ts";
import { Publisher } from "../serve/publish.ts";
import type { Plan } from "./plan.ts";

/** Running listeners and their publication. */
export class Listeners {
  readonly plane: DataPlane;
  readonly publisher: Publisher;
  /** The egress listeners, once a plan had an `egress:` block. */
  egress?: EgressPlane;
  readonly #deps: DataPlaneDeps;

  private constructor(plane: DataPlane, publisher: Publisher, deps: DataPlaneDeps) {
    this.plane = plane;
    this.publisher = publisher;
    this.#deps = deps;
  }

  /** A data plane without listeners yet; `serve`: set up the serve-ingress peer check now. */
  static async start(
    settings: Config["tailvoy"],
    deps: DataPlaneDeps & { serve: boolean },
  ): Promise<Listeners> {
    const plane = await DataPlane.start(settings, deps);
    return new Listeners(plane, new Publisher(deps.api, deps), deps);
  }

  /** Runs exactly the plan's listeners and publishes them; the plan's warnings are logged. */
  async apply(
    plan: Plan,
    options: { warn?: (listener: string, message: string) => void } = {},
  ): Promise<ReloadSummary> {
    const warn = options.warn ??
      ((listener, message) => getLogger("l4").error("listener {listener}: {message}", { listener, message }));
    for (const w of plan.warnings) warn(w.listener, w.message);
    if (plan.egress && !this.egress) {
      // Loaded only with an egress block: an ingress-only proxy does not pay for the parsers.
      const { EgressPlane } = await import("../egress/mod.ts");
      this.egress = new EgressPlane({ ...this.#deps, flows: this.plane.flows }, plan.egress.policy);
    }
    // Without an egress block any more: its listeners stop (open flows finish under the old policy).
    await this.egress?.apply(plan.egress?.listeners ?? [], plan.egress?.policy ?? this.egress.policy);
    try {
      return await this.plane.apply(plan.specs);
    } finally {
      // What runs is published even when part of the plan failed (so it is reachable and later removed).
      await this.publisher.publish(this.plane.serveEntries());
    }
  }

  /** Keeps `services` out of AdvertiseServices (see {@link Publisher.withhold}). */
  withhold(services: ReadonlySet<string>): Promise<void> {
    return this.publisher.withhold(services);
  }

  /** Services unadvertised, serve entries removed after the grace, listeners closed, flows drained. */
  async close(timeouts: { drain: number; unadvertiseGrace: number }): Promise<void> {
    await this.publisher.close({ graceMs: timeouts.unadvertiseGrace });
    this.egress?.close();
    await this.plane.close(timeouts.drain);
  }
}
