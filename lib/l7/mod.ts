/**
 * The L7 stack: our ext_authz gRPC server, Envoy rendered from the config and supervised, and the
 * per-listener targets the L4 relay forwards http/https/grpc connections to (Envoy's loopback
 * listeners, with a per-process secret only we and Envoy know).
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
import {
  type AuthzServer,
  createAuthzServer,
  type DecisionRecord,
  generateSecret,
  listenersFromConfig,
} from "../extauthz/mod.ts";
import type { IdentityResolver } from "../identity/mod.ts";
import type { L7Target } from "../l4/mod.ts";
import { getLogger } from "../log.ts";
import { unknownCallerDecision } from "../policy/mod.ts";
import type { DecisionEvent, Telemetry } from "../telemetry/mod.ts";

export { EnvoyError } from "../envoy/mod.ts";

/** Inputs of {@link L7Stack.start}. */
export interface L7Options {
  resolver: IdentityResolver;
  telemetry?: Telemetry;
  /**
   * ext_authz listen address (`-authz-addr`). Unset: a unix socket in a private directory, which only
   * this user can reach (Deno's HTTP/2 server can be crashed by a misbehaving client: denoland/deno#36788).
   */
  authzAddr?: string;
  /** Arguments after `--`, passed to Envoy. */
  envoyArgs?: string[];
}

/** A running L7 stack. */
export class L7Stack {
  /** Envoy targets by listener name, for the L4 relay. */
  targets: Map<string, L7Target>;
  readonly #ports: Map<string, number>;
  readonly #secret: string;
  readonly #current: { lookup: ReturnType<typeof listenersFromConfig> };
  readonly #authzAddress: string;
  readonly #privateDir?: string;
  readonly #authz: AuthzServer;
  readonly #envoy: EnvoySupervisor;
  readonly #gauges: ReturnType<typeof setInterval>;

  private constructor(
    state: {
      targets: Map<string, L7Target>;
      ports: Map<string, number>;
      secret: string;
      current: { lookup: ReturnType<typeof listenersFromConfig> };
      authzAddress: string;
      privateDir?: string;
    },
    authz: AuthzServer,
    envoy: EnvoySupervisor,
    telemetry?: Telemetry,
  ) {
    this.targets = state.targets;
    this.#ports = state.ports;
    this.#secret = state.secret;
    this.#current = state.current;
    this.#authzAddress = state.authzAddress;
    this.#privateDir = state.privateDir;
    this.#authz = authz;
    this.#envoy = envoy;
    let restarts = 0;
    this.#gauges = setInterval(() => {
      telemetry?.envoyReady.set(envoy.isReady ? 1 : 0);
      if (envoy.restarts > restarts) telemetry?.envoyRestarts.inc(envoy.restarts - restarts);
      restarts = envoy.restarts;
    }, 1000);
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
    // ext_authz reads the listener settings through this holder, so a reload can swap them.
    const current = { lookup: listenersFromConfig(config) };
    const authz = createAuthzServer({
      resolver: options.resolver,
      listeners: (name) => current.lookup(name),
      secret,
      appCapNames: config.tailvoy.capabilities,
      onDecision: (record) => options.telemetry?.decision(decisionEvent(record)),
    });
    const privateDir = options.authzAddr ? undefined : await Deno.makeTempDir({ prefix: "tailvoy-authz-" });
    if (privateDir) await Deno.chmod(privateDir, 0o700);
    const bound = await authz.listen(options.authzAddr ?? `unix:${privateDir}/authz.sock`);
    const envoy = new EnvoySupervisor({ binary: config.tailvoy.envoyBinary, extraArgs: options.envoyArgs });
    try {
      const ports = allocatePorts(names);
      const authzAddress = bound.host.startsWith("unix:")
        ? bound.host
        : `${bound.host.includes(":") ? `[${bound.host}]` : bound.host}:${bound.port}`;
      const bootstrap = renderBootstrap(config, { listenerPorts: ports, authzAddress });
      await envoy.validate(bootstrap);
      await envoy.start(bootstrap);
      await envoy.ready;
      const bytes = new TextEncoder().encode(secret);
      const targets = new Map(
        names.map((name) => [name, { hostname: "127.0.0.1", port: ports.get(name)!, secret: bytes }]),
      );
      log.info("Envoy ready ({binary}, admin {admin}): {listeners}", {
        binary: envoy.binary,
        admin: envoy.adminAddress,
        listeners: names.map((n) => `${n}→127.0.0.1:${ports.get(n)}`).join(", "),
        ports: Object.fromEntries(ports),
        pid: envoy.pid,
      });
      return new L7Stack(
        { targets, ports, secret, current, authzAddress, privateDir },
        authz,
        envoy,
        options.telemetry,
      );
    } catch (err) {
      await envoy.stop({ drainMs: 0 }).catch(() => {});
      await authz.close({ graceMs: 0 });
      if (privateDir) await Deno.remove(privateDir, { recursive: true }).catch(() => {});
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
    const bootstrap = renderBootstrap(config, { listenerPorts: ports, authzAddress: this.#authzAddress });
    const restarted = await this.#envoy.reload(bootstrap, { drainMs: options.drainMs });
    this.#current.lookup = listenersFromConfig(config);
    this.#ports.clear();
    for (const [n, p] of ports) this.#ports.set(n, p);
    const bytes = new TextEncoder().encode(this.#secret);
    this.targets = new Map(
      names.map((n) => [n, { hostname: "127.0.0.1", port: ports.get(n)!, secret: bytes }]),
    );
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
    clearInterval(this.#gauges);
    await this.#envoy.stop({ drainMs });
    await this.#authz.close();
    if (this.#privateDir) await Deno.remove(this.#privateDir, { recursive: true }).catch(() => {});
  }
}

/** An ext_authz decision record as a telemetry event (metrics and decision log). */
export function decisionEvent(record: DecisionRecord): DecisionEvent {
  return {
    layer: "l7",
    listener: record.listener,
    requestId: record.requestId,
    caller: record.callerPort === undefined ? record.callerIp : `${record.callerIp}:${record.callerPort}`,
    identity: record.identity,
    host: record.host,
    method: record.method,
    path: record.path,
    // Refused before the policy ran (bad secret, bad source, unknown listener): still a deny to count.
    decision: record.decision ??
      unknownCallerDecision("l7", { listener: record.listener, host: record.host }, {
        reason: record.explanation,
      }),
    shadow: record.shadow,
    code: record.code,
    latencyMs: record.latencyMs,
  };
}

/** Whether `err` is Envoy refusing the rendered config (the CLI exits 2 on it). */
export function isConfigRejected(err: unknown): boolean {
  return err instanceof EnvoyError && (err.kind === "validate" || err.kind === "render");
}
