/**
 * Modes: how the proxy gets its listeners. Standalone plans them from the config and runs its own Envoy
 * for http/https/grpc; Envoy Gateway mode (`discovery:`) plans them from the listeners a running Envoy
 * reports and serves gRPC ext_authz for Envoy Gateway. Both implement {@link Mode}; `lib/commands/run.ts`
 * drives whichever the config asks for through one start, reload and close.
 *
 * @module
 */

import type { Config } from "../config/mod.ts";
import type { IdentityResolver } from "../identity/mod.ts";
import type { IdentityTokens, SigningKey } from "../identity_token/mod.ts";
import type { ReloadSummary } from "../l4/mod.ts";
import type { LocalApiClient, Status } from "../localapi/mod.ts";
import type { Telemetry } from "../telemetry/mod.ts";

export type { ReloadSummary } from "../l4/mod.ts";

/** A running mode. */
export interface Mode {
  /** The listeners are running (the `listeners` health check). */
  readonly listening: boolean;
  /** Envoy answers `/ready`, or there is no Envoy to wait for (the `envoy` health check). */
  readonly ready: boolean;
  /** Checks and prepares what `next` needs before anything changes; throws when `next` cannot be used. */
  prepare(next: Config): Promise<void>;
  /** Applies a prepared config; resolves with what changed, when the mode knows it at once. */
  reload(next: Config): Promise<ReloadSummary | undefined>;
  /**
   * Shuts down: our Services unadvertised and, after `unadvertiseGrace`, serve entries removed and
   * listeners closed; open flows get `drain` to finish; then Envoy and ext_authz stop.
   */
  close(timeouts: Config["tailvoy"]["timeouts"]): Promise<void>;
}

/** What a mode is started with. */
export interface ModeDeps {
  api: LocalApiClient;
  resolver: IdentityResolver;
  /** tailscaled's status once it runs (own IPs, tags, TUN or userspace). */
  status: Status;
  telemetry: Telemetry;
  /** Identity-token signer (standalone); `firstKey` was read before tailscaled ran. */
  tokens: IdentityTokens;
  firstKey?: SigningKey;
  /** Arguments after `--`, for Envoy. */
  envoyArgs?: string[];
  /** Envoy Gateway mode: the gRPC ext_authz listen address. */
  authzAddr?: string;
}

/** A mode could not start; `exitCode` is what the process exits with (2: the config is at fault). */
export class StartError extends Error {
  /** Process exit code. */
  readonly exitCode: number;

  /** `message` says what failed and what to do. */
  constructor(message: string, options: { exitCode: number; cause?: unknown }) {
    super(message, { cause: options.cause });
    this.name = "StartError";
    this.exitCode = options.exitCode;
  }
}

/** Starts the mode `config` asks for. Rejects with a {@link StartError}. */
export async function startMode(config: Config, deps: ModeDeps): Promise<Mode> {
  if (config.discovery) {
    // Loaded only in this mode: it brings gRPC.
    const { GatewayMode } = await import("./gateway.ts");
    return await GatewayMode.start(config, deps);
  }
  const { StandaloneMode } = await import("./standalone.ts");
  return await StandaloneMode.start(config, deps);
}

/** Why `next` cannot replace `current` without a restart (it switches modes: the processes differ). */
export function checkSameMode(next: Config, current: Config): string | undefined {
  if (Boolean(next.discovery) === Boolean(current.discovery)) return undefined;
  return current.discovery
    ? "switching from discovery mode to static listeners needs a restart"
    : "switching from static listeners to discovery mode needs a restart";
}
