/**
 * Publishing to tailscaled: our serve entries (tailnet ports and Tailscale Services forwarded to our
 * loopback listeners) and the Services we advertise (`AdvertiseServices` in the prefs, read-modify-write),
 * the approval check, withholding unhealthy Services, and unadvertising at shutdown. The data plane binds
 * listeners; this is the one module that tells tailscaled about them.
 *
 * @module
 */

import type { LocalApiClient, Status } from "../localapi/mod.ts";
import { getLogger } from "../log.ts";
import type { Telemetry } from "../telemetry/mod.ts";
import { type Entries, ServeSession } from "./mod.ts";
import { delay } from "../util/async.ts";

const log = getLogger("serve");

/** How long after advertising to look whether the control server made us a host of each Service. */
const APPROVAL_CHECK_MS = 10_000;

/** Publishes the data plane's serve entries and Services; see the module doc. */
export class Publisher {
  readonly #api: LocalApiClient;
  readonly #status: Status;
  readonly #telemetry?: Telemetry;
  #serve?: ServeSession;
  #entries: Entries = { node: [], services: {} };
  /** Services we added to AdvertiseServices (to remove exactly those). */
  #advertised: string[] = [];
  /** Services kept out of AdvertiseServices (unhealthy in discovery mode). */
  #withheld = new Set<string>();
  /** Services already reported as not approved (once each is enough). */
  #unapprovedWarned = new Set<string>();
  #closing = false;

  /** A publisher for the node `status` describes (its tags decide whether Services are possible). */
  constructor(api: LocalApiClient, options: { status: Status; telemetry?: Telemetry }) {
    this.#api = api;
    this.#status = options.status;
    this.#telemetry = options.telemetry;
  }

  /** Our serve session, once entries were written (for tests). */
  get serve(): ServeSession | undefined {
    return this.#serve;
  }

  /** Makes our serve entries exactly `entries` and advertises their Services (minus withheld ones). */
  async publish(entries: Entries): Promise<void> {
    this.#entries = entries;
    const services = this.#wanted();
    if (services.length && !this.#status.Self?.Tags.length) {
      throw new Error(
        `Tailscale Services (${
          services.join(", ")
        }) need a tagged node, and this one has no tags: log tailscaled in with tags (tailscale.tags + TS_AUTHKEY or OAuth), or set tailvoy.ingress: direct`,
      );
    }
    if (this.#serve) await this.#serve.setEntries(entries);
    else if (entries.node.length || services.length) await this.#openServe(entries);
    await this.#advertise(services);
  }

  /**
   * Keeps `services` out of AdvertiseServices (their serve entries stay, so open connections and late
   * arrivals are still served) and advertises again the ones no longer in the set.
   */
  async withhold(services: ReadonlySet<string>): Promise<void> {
    this.#withheld = new Set(services);
    if (!this.#closing) await this.#advertise(this.#wanted());
  }

  /** Removes our Services from AdvertiseServices, so clients move to other replicas. */
  async unadvertise(): Promise<void> {
    if (!this.#advertised.length) return;
    const prefs = await this.#api.getPrefs();
    await this.#api.editPrefs({
      AdvertiseServices: prefs.AdvertiseServices.filter((s) => !this.#advertised.includes(s)),
    });
    log.info("no longer advertising [{services}]", { services: this.#advertised.join(", ") });
    this.#advertised = [];
  }

  /**
   * Shutdown, first half: our Services are unadvertised and, after `graceMs` (for clients to move to
   * other replicas), our serve entries are removed.
   */
  async close(options: { graceMs?: number } = {}): Promise<void> {
    this.#closing = true;
    if (this.#advertised.length) {
      await this.unadvertise().catch((err) =>
        log.warn("unadvertising failed: {error}", { error: String(err) })
      );
      await delay(options.graceMs ?? 0);
    }
    await this.#serve?.close();
  }

  #wanted(): string[] {
    return Object.keys(this.#entries.services).filter((s) => !this.#withheld.has(s));
  }

  async #advertise(services: string[]): Promise<void> {
    if (!services.length && !this.#advertised.length) return;
    const prefs = await this.#api.getPrefs();
    const current = new Set(prefs.AdvertiseServices);
    const added = services.filter((s) => !current.has(s));
    const stale = this.#advertised.filter((s) => !services.includes(s));
    if (added.length || stale.length) {
      const next = [...prefs.AdvertiseServices.filter((s) => !stale.includes(s)), ...added];
      await this.#api.editPrefs({ AdvertiseServices: next });
      log.info("advertising Tailscale Services [{services}]", { services: next.join(", ") });
    }
    this.#advertised = [...this.#advertised.filter((s) => !stale.includes(s)), ...added];
    if (services.length) void this.#checkApproved(services);
  }

  // The control server must approve a Service host (autoApprovers.services or the admin console);
  // until it does, the Service's address does not reach us. Say so instead of failing silently.
  async #checkApproved(services: string[]): Promise<void> {
    await delay(APPROVAL_CHECK_MS);
    if (this.#closing) return;
    try {
      const status = await this.#api.status();
      const self = status.Self as { CapMap?: Record<string, unknown> } | null | undefined;
      const hosted = JSON.stringify(self?.CapMap?.["service-host"] ?? {});
      for (const svc of services) {
        if (!hosted.includes(`"${svc}"`) && !this.#unapprovedWarned.has(svc)) {
          this.#unapprovedWarned.add(svc);
          log.warn(
            "{svc} is advertised but the control server has not made this node a host of it; approve it in the admin console or with autoApprovers.services in the tailnet policy",
            { svc },
          );
        }
      }
    } catch { /* best effort */ }
  }

  async #openServe(entries: Entries): Promise<void> {
    this.#serve = await ServeSession.open(this.#api, {
      onWrite: () => this.#telemetry?.serveConfigWrites.inc(),
    });
    await this.#serve.setEntries(entries);
    // tailscaled drops our entries when the bus stream ends (e.g. it restarted): put them back.
    const session = this.#serve;
    void session.lost.then(async () => {
      while (!this.#closing && this.#serve === session) {
        log.warn("lost the tailscaled session that owns our serve entries; re-registering");
        try {
          await this.#openServe(this.#entries);
          return;
        } catch (err) {
          log.warn("re-registering serve entries failed: {error}; retrying", { error: String(err) });
          await delay(1000);
        }
      }
    });
  }
}
