/**
 * `tailvoy run`: the proxy process. Waits for tailscaled's LocalAPI to answer (logging it in when given
 * credentials), starts the mode the config asks for (`lib/modes/`), reloads it on SIGHUP, and shuts it
 * down in order on SIGINT or SIGTERM.
 *
 * @module
 */

import { type AdminServer, startAdminServer } from "../admin/mod.ts";
import { type Config, loadConfig, readCredentials } from "../config/mod.ts";
import { IdentityResolver } from "../identity/mod.ts";
import { IdentityTokens, type SigningKey, tokensWanted } from "../identity_token/mod.ts";
import { LocalApiClient, LocalApiError, type Status } from "../localapi/mod.ts";
import { getLogger } from "../log.ts";
import { ensureLoggedIn, LoginError } from "../login/mod.ts";
import { checkSameMode, type Mode, StartError, startMode } from "../modes/mod.ts";
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
  log.info("starting: {listeners} tailnet and {egress} egress listeners, LocalAPI {socket}", {
    listeners: Object.keys(config.listeners).length,
    egress: Object.keys(config.egress?.listeners ?? {}).length,
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
  let mode: Mode | undefined;
  let admin: AdminServer;
  try {
    admin = await startAdminServer(config.tailvoy.adminAddress, {
      telemetry,
      checks: {
        localapi: async () => (await api.status({ timeoutMs: 500 })).BackendState === "Running",
        listeners: () => mode?.listening ?? false,
        envoy: () => mode?.ready ?? false,
      },
      jwks: () => tokens.jwks(),
    });
  } catch (err) {
    log.fatal("{error}", { error: errorMessage(err) });
    return 1;
  }
  try {
    const status = await runningTailscaled();
    if (typeof status === "number") return status;
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
    try {
      mode = await startMode(config, {
        api,
        resolver,
        status,
        telemetry,
        tokens,
        firstKey,
        envoyArgs: options.envoyArgs,
        authzAddr: options.authzAddr,
      });
    } catch (err) {
      if (!(err instanceof StartError)) throw err;
      log.fatal("{error}", { error: err.message });
      return err.exitCode;
    }
    const path = options.configPath;
    const reloads = path ? onHangup(() => reload(mode!, path)) : undefined;
    const reason = await stop;
    reloads?.();
    log.info("stopping ({reason}): no new connections; draining open flows for up to {ms} ms", {
      reason: String(reason),
      ms: config.tailvoy.timeouts.drain,
    });
    await mode.close(config.tailvoy.timeouts);
    log.info("stopped");
    return 0;
  } finally {
    await admin.close();
  }

  // tailscaled's status once it runs (logged in by us when given credentials), or the exit code.
  async function runningTailscaled(): Promise<Status | number> {
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
    return status;
  }

  // SIGHUP: re-read the config. One that cannot be used (invalid, another mode, a bad key) is rejected and
  // the running one stays ("invalid"); one that fails while being applied is counted "failed".
  async function reload(mode: Mode, path: string): Promise<void> {
    let next: Config;
    try {
      next = await loadConfig(path);
      const switching = checkSameMode(next, config);
      if (switching) throw new Error(`discovery: ${switching}`);
      await mode.prepare(next);
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
      const summary = await mode.reload(next);
      telemetry.logAllows = next.tailvoy.decisionLog.allows;
      config = next;
      telemetry.configReloads.inc({ result: "ok" });
      if (!summary) log.info("reloaded {path}", { path });
      else {
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
      }
    } catch (err) {
      telemetry.configReloads.inc({ result: "failed" });
      log.error("reload failed part-way: {error}", {
        error: errorMessage(err),
      });
    }
  }
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
