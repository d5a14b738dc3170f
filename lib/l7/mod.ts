/**
 * The L7 stack: our HTTP ext_authz server on a unix socket in a private directory, Envoy rendered from
 * the config and supervised, and the per-listener targets the L4 relay forwards http/https/grpc
 * connections to (Envoy's loopback listeners, which admit only connections carrying the per-process
 * secret only we and Envoy know; see `lib/wire.ts`).
 *
 * @module
 */

import type { Config } from "../config/mod.ts";
import {
  allocatePorts,
  EnvoyError,
  EnvoySupervisor,
  l7ListenerNames,
  renderBootstrap,
} from "../envoy/mod.ts";
import { decisionEvent, type HttpAuthzServer, listenersFromConfig, serveHttpAuthz } from "../extauthz/mod.ts";
import type { IdentityResolver } from "../identity/mod.ts";
import type { TokenSigner } from "../identity_token/mod.ts";
import type { L7Target } from "../l4/mod.ts";
import { getLogger } from "../log.ts";
import type { Telemetry } from "../telemetry/mod.ts";
import { generateSecret, ServiceIndex } from "../wire.ts";

export { EnvoyError } from "../envoy/mod.ts";

/** Inputs of {@link L7Stack.start}. */
export interface L7Options {
  resolver: IdentityResolver;
  telemetry?: Telemetry;
  /** Arguments after `--`, passed to Envoy. */
  envoyArgs?: string[];
  /** Signs identity tokens for listeners with `identityToken`. */
  tokens?: TokenSigner;
}

/** A running L7 stack. */
export class L7Stack {
  /** Envoy targets by listener name, for the L4 relay. */
  targets: Map<string, L7Target>;
  readonly #ports: Map<string, number>;
  readonly #secret: string;
  readonly #services: ServiceIndex;
  readonly #current: { lookup: ReturnType<typeof listenersFromConfig> };
  readonly #privateDir: string;
  readonly #authz: HttpAuthzServer;
  readonly #envoy: EnvoySupervisor;

  private constructor(
    state: {
      targets: Map<string, L7Target>;
      ports: Map<string, number>;
      secret: string;
      services: ServiceIndex;
      current: { lookup: ReturnType<typeof listenersFromConfig> };
      privateDir: string;
    },
    authz: HttpAuthzServer,
    envoy: EnvoySupervisor,
  ) {
    this.targets = state.targets;
    this.#ports = state.ports;
    this.#secret = state.secret;
    this.#services = state.services;
    this.#current = state.current;
    this.#privateDir = state.privateDir;
    this.#authz = authz;
    this.#envoy = envoy;
  }

  /**
   * Starts ext_authz and Envoy for the config's L7 listeners; `undefined` when there are none.
   * Rejects with an {@link EnvoyError} of kind `validate` when Envoy refuses the rendered config.
   */
  static async start(config: Config, options: L7Options): Promise<L7Stack | undefined> {
    const names = l7ListenerNames(config);
    if (!names.length) return undefined;
    const log = getLogger("l7");
    const secret = generateSecret();
    const services = new ServiceIndex();
    // ext_authz reads the listener settings through this holder, so a reload can swap them.
    const current = { lookup: listenersFromConfig(config) };
    // Whoever can connect to the authz socket can name any caller: only this user may reach it.
    const privateDir = await Deno.makeTempDir({ prefix: "tailvoy-authz-" });
    await Deno.chmod(privateDir, 0o700);
    let authz: HttpAuthzServer;
    try {
      authz = await serveHttpAuthz(`${privateDir}/authz.sock`, {
        resolver: options.resolver,
        listeners: (name) => current.lookup(name),
        services,
        appCapNames: config.tailvoy.capabilities,
        tokens: options.tokens,
        onDecision: (record) => options.telemetry?.decision(decisionEvent(record)),
      });
    } catch (err) {
      await Deno.remove(privateDir, { recursive: true }).catch(() => {});
      throw err;
    }
    const envoy = new EnvoySupervisor({
      binary: config.tailvoy.envoyBinary,
      extraArgs: options.envoyArgs,
      ...options.telemetry?.envoyCallbacks(),
    });
    try {
      const ports = allocatePorts(names);
      const bootstrap = renderBootstrap(config, { listenerPorts: ports, authzSocket: authz.path, secret });
      await envoy.validate(bootstrap);
      await envoy.start(bootstrap);
      await envoy.ready;
      const targets = l7Targets(names, ports, { secret, services });
      log.info("Envoy ready ({binary}, admin {admin}): {listeners}", {
        binary: envoy.binary,
        admin: envoy.adminAddress,
        listeners: names.map((n) => `${n}→127.0.0.1:${ports.get(n)}`).join(", "),
        ports: Object.fromEntries(ports),
        pid: envoy.pid,
      });
      return new L7Stack(
        { targets, ports, secret, services, current, privateDir },
        authz,
        envoy,
      );
    } catch (err) {
      await envoy.stop({ drainMs: 0 }).catch(() => {});
      await authz.close();
      await Deno.remove(privateDir, { recursive: true }).catch(() => {});
      throw err;
    }
  }

  /**
   * Applies a new config: listener ports are kept for listeners that stay, new ones get free ports, and
   * Envoy restarts (with drain) only if its rendered config changed. Resolves true when Envoy was
   * restarted.
   */
  async reload(config: Config, options: { drainMs: number }): Promise<boolean> {
    const names = l7ListenerNames(config);
    const fresh = allocatePorts(names.filter((n) => !this.#ports.has(n)));
    const ports = new Map(names.map((n) => [n, this.#ports.get(n) ?? fresh.get(n)!]));
    const bootstrap = renderBootstrap(config, {
      listenerPorts: ports,
      authzSocket: this.#authz.path,
      secret: this.#secret,
    });
    const restarted = await this.#envoy.reload(bootstrap, { drainMs: options.drainMs });
    this.#current.lookup = listenersFromConfig(config);
    this.#ports.clear();
    for (const [n, p] of ports) this.#ports.set(n, p);
    this.targets = l7Targets(names, ports, { secret: this.#secret, services: this.#services });
    return restarted;
  }

  /** Whether Envoy answers /ready. */
  get ready(): boolean {
    return this.#envoy.isReady;
  }

  /** Envoy's restarts after crashes. */
  get restarts(): number {
    return this.#envoy.restarts;
  }

  /** Envoy's process id (for tests and signals). */
  get envoyPid(): number | undefined {
    return this.#envoy.pid;
  }

  /** Drains and stops Envoy, then the ext_authz server. */
  async close(drainMs: number): Promise<void> {
    await this.#envoy.stop({ drainMs });
    await this.#authz.close();
    await Deno.remove(this.#privateDir, { recursive: true }).catch(() => {});
  }
}

function l7Targets(
  names: readonly string[],
  ports: ReadonlyMap<string, number>,
  options: { secret: string; services: ServiceIndex },
): Map<string, L7Target> {
  const secret = new TextEncoder().encode(options.secret);
  return new Map(
    names.map((n) => [n, { hostname: "127.0.0.1", port: ports.get(n)!, secret, services: options.services }]),
  );
}

/** Whether `err` is Envoy refusing the rendered config (the CLI exits 2 on it). */
export function isConfigRejected(err: unknown): boolean {
  return err instanceof EnvoyError && (err.kind === "validate" || err.kind === "render");
}
