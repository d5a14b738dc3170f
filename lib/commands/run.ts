/**
 * `tailvoy run`: the proxy process. Waits for tailscaled's LocalAPI to answer, reports the node it runs
 * beside, then serves until SIGINT or SIGTERM.
 *
 * @module
 */

import { type AdminServer, startAdminServer } from "../admin/mod.ts";
import { type Config, ConfigError, loadConfig, readCredentials } from "../config/mod.ts";
import { IdentityResolver } from "../identity/mod.ts";
import { IdentityTokens, type SigningKey, tokenContext, tokensWanted } from "../identity_token/mod.ts";
import { DataPlane } from "../l4/mod.ts";
import { l7ListenerNames } from "../envoy/mod.ts";
import type { Gateway } from "../gateway/mod.ts";
import type { L7Options, L7Stack } from "../l7/mod.ts";
import { LocalApiClient, LocalApiError, type Status } from "../localapi/mod.ts";
import { getLogger } from "../log.ts";
import { ensureLoggedIn, LoginError } from "../login/mod.ts";
import { Telemetry } from "../telemetry/mod.ts";
import { delay } from "../util/async.ts";
import { errorMessage } from "../util/error.ts";

/** Options of {@link runProxy}. */
export interface RunOptions {
  /** LocalAPI socket (overrides the config's). */
  socket?: string;
  /** Discovery mode: gRPC ext_authz listen address (default 127.0.0.1:9001). Standalone ignores it. */
  authzAddr?: string;
  /** Arguments for Envoy (after `--`). */
  envoyArgs?: string[];
  /** Resolves when the process should stop (default: SIGINT or SIGTERM). */
  stopSignal?: Promise<unknown>;
  /** Config file re-read on SIGHUP (reload is off without it). */
  configPath?: string;
}

function signalled(): Promise<string> {
  return new Promise((resolve) => {
    for (const sig of ["SIGINT", "SIGTERM"] as const) Deno.addSignalListener(sig, () => resolve(sig));
  });
}

/** Waits until the LocalAPI answers `status`, logging each distinct failure once. */
export async function waitForLocalApi(
  api: LocalApiClient,
  options: { stop: Promise<unknown>; intervalMs?: number; anyState?: boolean },
): Promise<Status | undefined> {
  const log = getLogger("localapi");
  let lastKind = "";
  let stopped = false;
  options.stop.then(() => stopped = true);
  while (!stopped) {
    try {
      const status = await api.status();
      // With credentials we can log tailscaled in ourselves: any answer will do.
      if (status.BackendState === "Running" || options.anyState) return status;
      if (lastKind !== status.BackendState) {
        log.warn(
          "tailscaled is {state}, not Running; waiting (log it in with `tailscale up` or TS_AUTHKEY)",
          {
            state: status.BackendState,
          },
        );
        lastKind = status.BackendState;
      }
    } catch (err) {
      if (!(err instanceof LocalApiError)) throw err;
      if (err.kind !== lastKind) log.warn("{message}; retrying", { message: err.message, kind: err.kind });
      lastKind = err.kind;
    }
    await delay(options.intervalMs ?? 1000, { until: options.stop });
  }
  return undefined;
}

/** Runs the proxy until stopped; resolves with the exit code. */
export async function runProxy(initial: Config, options: RunOptions): Promise<number> {
  let config = initial;
  const log = getLogger();
  const socket = options.socket ?? config.tailvoy.localApiSocket;
  const stop = options.stopSignal ?? signalled();
  using api = new LocalApiClient(socket, { timeoutMs: config.tailvoy.timeouts.whois });
  log.info("starting: {listeners} listeners, LocalAPI {socket}", {
    listeners: Object.keys(config.listeners).length,
    socket,
  });
  if (options.authzAddr && !config.discovery) {
    log.warn(
      "--authz-addr {addr} is ignored: it is for Envoy Gateway mode (discovery:); our own Envoy calls ext_authz on a private unix socket",
      { addr: options.authzAddr },
    );
  }
  const telemetry = new Telemetry({ logAllows: config.tailvoy.decisionLog.allows });
  const tokens = new IdentityTokens();
  // The key file is read before waiting for tailscaled: a bad one stops the proxy at once (exit 2).
  let firstKey: SigningKey | undefined;
  if (config.discovery && config.tailvoy.identityToken) {
    log.warn("tailvoy.identityToken is ignored in discovery mode: identity tokens need static listeners");
  } else if (tokensWanted(config)) {
    try {
      firstKey = await tokens.nextKey(config.tailvoy.identityToken);
    } catch (err) {
      log.fatal("{error}", { error: errorMessage(err) });
      return 2;
    }
  }
  let plane: DataPlane | undefined;
  let l7: L7Stack | undefined;
  let gateway: Gateway | undefined;
  let admin: AdminServer;
  try {
    admin = await startAdminServer(config.tailvoy.adminAddress, {
      telemetry,
      checks: {
        localapi: async () => (await api.status({ timeoutMs: 500 })).BackendState === "Running",
        listeners: () => plane !== undefined || gateway?.listeners !== undefined,
        envoy: () => gateway ? gateway.ready : l7 === undefined ? plane !== undefined : l7.ready,
      },
      jwks: () => tokens.jwks(),
    });
  } catch (err) {
    log.fatal("{error}", { error: errorMessage(err) });
    return 1;
  }
  try {
    return await serve();
  } finally {
    await admin.close();
  }

  async function serve(): Promise<number> {
    const credentials = readCredentials();
    let status = await waitForLocalApi(api, { stop, anyState: !credentials.isEmpty });
    if (!status) return 0;
    try {
      status = await ensureLoggedIn(api, {
        credentials,
        tags: config.tailscale.tags,
        hostname: config.tailscale.hostname,
        controlUrl: config.tailvoy.controlUrl,
        apiBaseUrl: config.tailvoy.apiBaseUrl,
      });
    } catch (err) {
      if (!(err instanceof LoginError)) throw err;
      log.fatal("{error}", { error: err.message });
      return 1;
    }
    if (status.BackendState !== "Running") {
      const running = await waitForLocalApi(api, { stop });
      if (!running) return 0;
      status = running;
    }
    log.info("tailscaled {version} is running as {node} ({ips}), {mode}", {
      version: status.Version,
      node: status.Self?.DNSName.replace(/\.$/, "") ?? "?",
      ips: status.TailscaleIPs.join(", "),
      mode: status.TUN ? "kernel TUN" : "userspace networking",
      tags: status.Self?.Tags ?? [],
    });
    const resolver = new IdentityResolver(api, {
      capNames: config.tailvoy.capabilities,
      ttlMs: config.tailvoy.timeouts.whoisCacheTtl,
      observer: telemetry.resolverObserver(),
      onMalformed: (identity, issue) =>
        getLogger("policy").warn("malformed grant rule for {node} ignored: {json} ({reason})", {
          node: identity.node,
          user: identity.login,
          json: issue.json,
          reason: issue.reason,
        }),
    });
    if (config.discovery) return await serveGateway(resolver, status);
    const self = status;
    if (firstKey) {
      try {
        tokens.use(firstKey, tokenContext(self, config.tailvoy.identityToken?.issuer));
      } catch (err) {
        log.fatal("{error}", { error: errorMessage(err) });
        return 2;
      }
    }
    try {
      l7 = await startL7(config, {
        resolver,
        telemetry,
        envoyArgs: options.envoyArgs,
        tokens,
      });
    } catch (err) {
      log.fatal("could not start Envoy and ext_authz: {error}", {
        error: errorMessage(err),
      });
      const { isConfigRejected } = await import("../l7/mod.ts");
      return isConfigRejected(err) ? 2 : 1;
    }
    try {
      plane = await DataPlane.start(config, { api, resolver, status, telemetry, l7Targets: l7?.targets });
    } catch (err) {
      await l7?.close(0);
      log.fatal("could not start the listeners: {error}", {
        error: errorMessage(err),
      });
      return 1;
    }
    log.info("ready: {tcp} TCP and {udp} UDP listeners", { tcp: plane.tcp.length, udp: plane.udp.length });
    return await untilStopped(reload, async ({ drain, unadvertiseGrace }) => {
      await plane!.close(drain, { graceMs: unadvertiseGrace });
      await l7?.close(drain);
    });

    // SIGHUP: re-read the config; an invalid one is rejected and the running one stays.
    async function reload(path: string): Promise<void> {
      let next: Config;
      try {
        next = await loadConfig(path);
        checkSameMode(next, config);
        // The key file is read again: a new key signs from now on, the previous one stays in the JWKS.
        if (tokensWanted(next)) await tokens.configure(next.tailvoy.identityToken, self);
      } catch (err) {
        telemetry.configReloads.inc({ result: "invalid" });
        log.error("reload rejected, still running the previous config: {errors}", {
          errors: errorMessage(err),
        });
        return;
      }
      const restartOnly = (c: Config) =>
        JSON.stringify({ ...c.tailvoy, decisionLog: undefined, identityToken: undefined });
      if (restartOnly(next) !== restartOnly(config)) {
        log.warn(
          "changes under tailvoy: (other than decisionLog and identityToken) take effect after a restart",
        );
      }
      try {
        const drainMs = next.tailvoy.timeouts.drain;
        if (l7 && l7ListenerNames(next).length) await l7.reload(next, { drainMs });
        else if (l7) {
          await l7.close(drainMs);
          l7 = undefined;
        } else if (l7ListenerNames(next).length) {
          l7 = await startL7(next, {
            resolver,
            telemetry,
            envoyArgs: options.envoyArgs,
            tokens,
          });
        }
        const summary = await plane!.reload(next, { l7Targets: l7?.targets });
        telemetry.logAllows = next.tailvoy.decisionLog.allows;
        config = next;
        telemetry.configReloads.inc({ result: "ok" });
        log.info(
          "reloaded {path}: added [{added}], removed [{removed}], changed [{changed}], kept [{kept}]",
          {
            path,
            added: summary.added.join(", "),
            removed: summary.removed.join(", "),
            changed: summary.changed.join(", "),
            kept: summary.kept.join(", "),
          },
        );
      } catch (err) {
        telemetry.configReloads.inc({ result: "failed" });
        log.error("reload failed part-way: {error}", {
          error: errorMessage(err),
        });
      }
    }
  }

  // Discovery mode: the listeners come from Envoy (Envoy Gateway's, which we may run ourselves).
  async function serveGateway(resolver: IdentityResolver, status: Status): Promise<number> {
    const { Gateway } = await import("../gateway/mod.ts");
    try {
      gateway = await Gateway.start(config, {
        api,
        resolver,
        status,
        telemetry,
        authzAddr: options.authzAddr,
        envoyArgs: options.envoyArgs,
      });
    } catch (err) {
      log.fatal("could not start discovery mode: {error}", {
        error: errorMessage(err),
      });
      return 1;
    }
    log.info("ready: discovery mode, polling Envoy admin {admin} every {ms} ms", {
      admin: config.discovery!.envoyAdmin,
      ms: config.discovery!.pollInterval,
    });
    return await untilStopped(async (path) => {
      try {
        const next = await loadConfig(path);
        checkSameMode(next, config);
        await gateway!.reload(next);
        telemetry.logAllows = next.tailvoy.decisionLog.allows;
        config = next;
        telemetry.configReloads.inc({ result: "ok" });
        log.info("reloaded {path}", { path });
      } catch (err) {
        telemetry.configReloads.inc({ result: "invalid" });
        log.error("reload rejected, still running the previous config: {errors}", {
          errors: errorMessage(err),
        });
      }
    }, ({ drain, unadvertiseGrace }) => gateway!.close(drain, { graceMs: unadvertiseGrace }));
  }

  // Serves until stopped (SIGHUP runs `reload` when there is a config file), then shuts down with `close`.
  async function untilStopped(
    reload: (path: string) => Promise<void>,
    close: (timeouts: Config["tailvoy"]["timeouts"]) => Promise<void>,
  ): Promise<number> {
    const path = options.configPath;
    const reloads = path ? onHangup(() => reload(path)) : undefined;
    const reason = await stop;
    reloads?.();
    log.info("stopping ({reason}): no new connections; draining open flows for up to {ms} ms", {
      reason: String(reason),
      ms: config.tailvoy.timeouts.drain,
    });
    await close(config.tailvoy.timeouts);
    log.info("stopped");
    return 0;
  }
}

// A reload cannot switch between static listeners and discovery: the processes differ.
function checkSameMode(next: Config, current: Config): void {
  if (Boolean(next.discovery) !== Boolean(current.discovery)) {
    throw new ConfigError([{
      path: ["discovery"],
      message: current.discovery
        ? "switching from discovery mode to static listeners needs a restart"
        : "switching from static listeners to discovery mode needs a restart",
    }]);
  }
}

/**
 * The L7 stack, loaded only when the config has http/https/grpc listeners: gRPC and the protos cost
 * tens of MB of memory that an L4-only proxy should not pay.
 */
async function startL7(config: Config, options: L7Options): Promise<L7Stack | undefined> {
  if (!l7ListenerNames(config).length) return undefined;
  const { L7Stack } = await import("../l7/mod.ts");
  return await L7Stack.start(config, options);
}

/** Runs `fn` on each SIGHUP, one at a time; returns a function that stops listening. */
function onHangup(fn: () => Promise<void>): () => void {
  let chain = Promise.resolve();
  const handler = () => {
    chain = chain.then(fn, fn);
  };
  Deno.addSignalListener("SIGHUP", handler);
  return () => Deno.removeSignalListener("SIGHUP", handler);
}
