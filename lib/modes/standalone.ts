/**
 * Standalone mode: the listeners come from the config; http/https/grpc listeners go to our own Envoy
 * (the L7 stack, loaded only when there are some: gRPC and the protos cost tens of MB that an L4-only
 * proxy should not pay).
 *
 * @module
 */

import type { Config } from "../config/mod.ts";
import { l7ListenerNames } from "../envoy/mod.ts";
import { tokenContext, tokensWanted } from "../identity_token/mod.ts";
import type { L7Stack } from "../l7/mod.ts";
import { getLogger } from "../log.ts";
import { Listeners } from "./listeners.ts";
import { type Mode, type ModeDeps, type ReloadSummary, StartError } from "./mod.ts";
import { planListeners } from "./plan.ts";
import { errorMessage } from "../util/error.ts";

const log = getLogger();

/** Standalone mode; see the module doc. */
export class StandaloneMode implements Mode {
  readonly #deps: ModeDeps;
  readonly #listeners: Listeners;
  #l7?: L7Stack;

  private constructor(deps: ModeDeps, listeners: Listeners, l7: L7Stack | undefined) {
    this.#deps = deps;
    this.#listeners = listeners;
    this.#l7 = l7;
  }

  /** Starts Envoy and ext_authz (when there are L7 listeners), then the listeners. */
  static async start(config: Config, deps: ModeDeps): Promise<StandaloneMode> {
    if (deps.firstKey) {
      try {
        deps.tokens.use(deps.firstKey, tokenContext(deps.status, config.tailvoy.identityToken?.issuer));
      } catch (err) {
        throw new StartError(errorMessage(err), { exitCode: 2, cause: err });
      }
    }
    let l7: L7Stack | undefined;
    try {
      l7 = await startL7(config, deps);
    } catch (err) {
      const { isConfigRejected } = await import("../l7/mod.ts");
      throw new StartError(
        `could not start Envoy and ext_authz: ${errorMessage(err)}`,
        { exitCode: isConfigRejected(err) ? 2 : 1, cause: err },
      );
    }
    let listeners: Listeners | undefined;
    try {
      listeners = await Listeners.start(config.tailvoy, {
        ...deps,
        serve: Object.values(config.listeners).some((l) => l.ingress === "serve" && l.protocol !== "udp"),
      });
      await listeners.apply(planListeners(config, { l7Targets: l7?.targets }));
    } catch (err) {
      await listeners?.close({ drain: 0, unadvertiseGrace: 0 });
      await l7?.close(0);
      throw new StartError(
        `could not start the listeners: ${errorMessage(err)}`,
        { exitCode: 1, cause: err },
      );
    }
    const plane = listeners.plane;
    log.info("ready: {tcp} TCP, {udp} UDP and {egress} egress listeners", {
      tcp: plane.tcp.length,
      udp: plane.udp.length,
      egress: listeners.egress?.listeners.size ?? 0,
    });
    return new StandaloneMode(deps, listeners, l7);
  }

  /** The running data plane (for tests). */
  get listeners(): Listeners {
    return this.#listeners;
  }

  /** The L7 stack, when there are L7 listeners (for tests). */
  get l7(): L7Stack | undefined {
    return this.#l7;
  }

  get listening(): boolean {
    return true;
  }

  get ready(): boolean {
    return this.#l7?.ready ?? true;
  }

  /** The key file is read again: a new key signs from now on, the previous one stays in the JWKS. */
  async prepare(next: Config): Promise<void> {
    if (tokensWanted(next)) await this.#deps.tokens.configure(next.tailvoy.identityToken, this.#deps.status);
  }

  /** Envoy is reloaded, started or stopped as the L7 listeners require; then the listeners are applied. */
  async reload(next: Config): Promise<ReloadSummary> {
    const drainMs = next.tailvoy.timeouts.drain;
    const wantsL7 = l7ListenerNames(next).length > 0;
    if (this.#l7 && wantsL7) await this.#l7.reload(next, { drainMs });
    else if (this.#l7) {
      await this.#l7.close(drainMs);
      this.#l7 = undefined;
    } else if (wantsL7) this.#l7 = await startL7(next, this.#deps);
    return await this.#listeners.apply(planListeners(next, { l7Targets: this.#l7?.targets }));
  }

  async close(timeouts: Config["tailvoy"]["timeouts"]): Promise<void> {
    await this.#listeners.close(timeouts);
    await this.#l7?.close(timeouts.drain);
  }
}

async function startL7(config: Config, deps: ModeDeps): Promise<L7Stack | undefined> {
  if (!l7ListenerNames(config).length) return undefined;
  const { L7Stack } = await import("../l7/mod.ts");
  return await L7Stack.start(config, {
    resolver: deps.resolver,
    telemetry: deps.telemetry,
    envoyArgs: deps.envoyArgs,
    tokens: deps.tokens,
  });
}
