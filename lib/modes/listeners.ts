/**
 * The tailnet side both modes share: the data plane that runs planned listeners and the publisher that
 * tells tailscaled about them, applied together and shut down in order.
 *
 * @module
 */

import type { Config } from "../config/mod.ts";
import { DataPlane, type DataPlaneDeps, type ReloadSummary } from "../l4/mod.ts";
import { getLogger } from "../log.ts";
import { Publisher } from "../serve/publish.ts";
import type { Plan } from "./plan.ts";

/** Running listeners and their publication. */
export class TailnetListeners {
  readonly plane: DataPlane;
  readonly publisher: Publisher;

  private constructor(plane: DataPlane, publisher: Publisher) {
    this.plane = plane;
    this.publisher = publisher;
  }

  /** A data plane without listeners yet; `serve`: set up the serve-ingress peer check now. */
  static async start(
    settings: Config["tailvoy"],
    deps: DataPlaneDeps & { serve: boolean },
  ): Promise<TailnetListeners> {
    const plane = await DataPlane.start(settings, deps);
    return new TailnetListeners(plane, new Publisher(deps.api, deps));
  }

  /** Runs exactly the plan's listeners and publishes them; the plan's warnings are logged. */
  async apply(
    plan: Plan,
    options: { warn?: (listener: string, message: string) => void } = {},
  ): Promise<ReloadSummary> {
    const warn = options.warn ??
      ((listener, message) => getLogger("l4").error("listener {listener}: {message}", { listener, message }));
    for (const w of plan.warnings) warn(w.listener, w.message);
    try {
      return await this.plane.apply(plan.specs, { egress: plan.egress });
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
    await this.plane.close(timeouts.drain);
  }
}
