/**
 * Runs Envoy as a child process: validates a bootstrap, starts Envoy and waits until it is ready,
 * restarts it after a crash, drains it on stop, and pipes its output into our log.
 *
 * Process group: Envoy is spawned with `detached: true`, which on Unix makes it the leader of a new
 * session and process group (as the Go tailvoy's `Setpgid`). A terminal's Ctrl-C therefore reaches only us;
 * we stop Envoy ourselves (drain, SIGTERM, SIGKILL) or pass signals on with {@link EnvoySupervisor.forward},
 * and every signal goes to the whole group, so nothing Envoy might start survives it.
 *
 * Limits: Envoy has no parent-death watch, so if this process is SIGKILLed, Envoy keeps running (and
 * holding its ports) until killed; the CLI must call `stop()` on SIGTERM/SIGINT. A reload is a stop
 * followed by a start on the same ports, so for the moment in between (drain, then Envoy's start-up,
 * typically well under a second) new connections to Envoy are refused and the relay refuses them too.
 *
 * @module
 */

import type { Logger } from "@logtape/logtape";
import { getLogger } from "../log.ts";
import { EnvoyAdminClient } from "./admin.ts";
import { type EnvoyBootstrap, serializeBootstrap } from "./bootstrap.ts";
import { drainEnvoy } from "./drain.ts";
import { EnvoyError } from "./errors.ts";
import { ENVOY_DIR_PREFIX, reapOrphans, recordOwner } from "./orphans.ts";
import { envoyErrorSummary, EnvoyOutput } from "./output.ts";
import { mergeEnvoyArgs, resolveEnvoyBinary } from "./process.ts";
import { delay } from "../util/async.ts";
import { errorMessage } from "../util/error.ts";

/** What the supervisor is doing. */
export type EnvoyState = "stopped" | "starting" | "ready" | "restarting" | "stopping";

/** Options of {@link EnvoySupervisor}. */
export interface EnvoySupervisorOptions {
  /** Envoy executable (`tailvoy.envoyBinary`); default `ENVOY_BIN`, else `envoy` from PATH. */
  binary?: string;
  /** Environment lookup for `ENVOY_BIN` (default `Deno.env.get`). */
  env?: (name: string) => string | undefined;
  /** Envoy worker threads, `--concurrency` (default 2). */
  concurrency?: number;
  /** Envoy's drain period in seconds, `--drain-time-s` (default 15, the Go tailvoy's drain timeout). */
  drainTimeS?: number;
  /** `--drain-strategy` (default `immediate`: idle connections close at once when draining, as Envoy Gateway does). */
  drainStrategy?: "immediate" | "gradual";
  /** Envoy's `--log-level` (default `warn`). */
  logLevel?: string;
  /** Extra Envoy arguments (the CLI's arguments after `--`); they win over ours. */
  extraArgs?: readonly string[];
  /** Where Envoy's output and our lifecycle messages go (default `getLogger("envoy")`). */
  log?: Logger;
  /** How long Envoy may take to report ready, in ms (default 10000). */
  readyTimeoutMs?: number;
  /** Crash restart backoff, in ms: first delay (100), cap (10000), uptime that resets it (60000). */
  backoff?: { initialMs?: number; maxMs?: number; resetAfterMs?: number };
  /** Parent directory of the per-run temp directories (default the system's). */
  tempDir?: string;
  /** Called on every change of {@link EnvoySupervisor.state} (e.g. to keep a readiness gauge current). */
  onState?: (state: EnvoyState) => void;
  /** Called when a restart after an unexpected exit begins, with the restart count so far. */
  onRestart?: (restarts: number) => void;
}

/** Options of {@link EnvoySupervisor.stop} and {@link EnvoySupervisor.reload}. */
export interface StopOptions {
  /** How long open connections may take to finish before SIGTERM, in ms (default 15000; 0 skips the drain). */
  drainMs?: number;
}

/** One Envoy process. */
interface Instance {
  child: Deno.ChildProcess;
  pid: number;
  dir: string;
  adminPath: string;
  /** `127.0.0.1:port`, or the path of a unix socket (our own bootstraps). */
  admin?: string;
  /** The client of {@link admin}, once known. */
  adminClient?: EnvoyAdminClient;
  startedAt: number;
  status: Promise<Deno.CommandStatus>;
  exit?: Deno.CommandStatus;
  /** Envoy's output, read into our log; its last lines are for error messages. */
  output: EnvoyOutput;
  /** Why the exit is not a crash: our stop (or a failed start-up), or a forwarded terminating signal. */
  exitExpected?: "stop" | "signal";
}

interface Deferred extends PromiseWithResolvers<void> {
  settled: boolean;
}

function deferred(): Deferred {
  const { promise, resolve, reject } = Promise.withResolvers<void>();
  // Nobody may be waiting; a rejection must not become an unhandled one.
  promise.catch(() => {});
  const d: Deferred = {
    promise,
    settled: false,
    resolve: () => (d.settled = true, resolve()),
    reject: (error) => (d.settled = true, reject(error)),
  };
  return d;
}

function describeExit(status: Deno.CommandStatus): string {
  return status.signal ? `signal ${status.signal}` : `exit code ${status.code}`;
}

const TERMINATING: ReadonlySet<Deno.Signal> = new Set(["SIGTERM", "SIGINT", "SIGQUIT", "SIGKILL"]);
const KILL_AFTER_MS = 5000;
const DEFAULT_DRAIN_MS = 15_000;
// Our own Envoy's admin API answers at once; a slow answer means it is not ready (or going away).
const ADMIN_TIMEOUT_MS = 1000;

/**
 * Supervises one Envoy process.
 *
 * ```ts
 * const envoy = new EnvoySupervisor({ binary: config.tailvoy.envoyBinary, extraArgs });
 * const bootstrap = renderBootstrap(config, { listenerPorts, authzSocket, secret });
 * await envoy.validate(bootstrap); // EnvoyError "validate" with Envoy's message: exit 2
 * await envoy.start(bootstrap);    // resolves once /ready says LIVE
 * // ...
 * await envoy.stop({ drainMs: config.tailvoy.timeouts.drain });
 * ```
 */
export class EnvoySupervisor {
  readonly #binary: string;
  readonly #options: EnvoySupervisorOptions;
  readonly #log: Logger;
  #state: EnvoyState = "stopped";
  #current?: Instance;
  /** The running bootstrap; `null` when the extra arguments configure Envoy alone. */
  #text?: string | null;
  #ready: Deferred = deferred();
  #restarts = 0;
  #backoffMs: number;
  #restartTimer?: ReturnType<typeof setTimeout>;
  /** Bumped by every start and stop, so an outdated start-up notices it was overtaken. */
  #generation = 0;
  #stopping?: Promise<void>;
  /** Serializes start and reload. */
  #queue: Promise<unknown> = Promise.resolve();

  /** A supervisor; nothing runs until {@link start}. */
  constructor(options: EnvoySupervisorOptions = {}) {
    this.#options = options;
    this.#binary = resolveEnvoyBinary(options.binary, { env: options.env });
    this.#log = options.log ?? getLogger("envoy");
    this.#backoffMs = options.backoff?.initialMs ?? 100;
  }

  /** The Envoy executable in use. */
  get binary(): string {
    return this.#binary;
  }

  /** What the supervisor is doing. */
  get state(): EnvoyState {
    return this.#state;
  }

  /** True while Envoy runs and has reported ready; false while starting, restarting or stopped. */
  get isReady(): boolean {
    return this.#state === "ready";
  }

  /**
   * Settles when Envoy is next ready (at once if it is): resolves then, rejects if the start fails or
   * the supervisor is stopped first.
   */
  get ready(): Promise<void> {
    return this.#ready.promise;
  }

  /** How many times Envoy was restarted after exiting unexpectedly. */
  get restarts(): number {
    return this.#restarts;
  }

  /** Envoy's admin address (`127.0.0.1:port`), once the current Envoy has written it. */
  get adminAddress(): string | undefined {
    return this.#current?.exit ? undefined : this.#current?.admin;
  }

  /** Process id of the current Envoy. */
  get pid(): number | undefined {
    return this.#current?.exit ? undefined : this.#current?.pid;
  }

  /**
   * Runs `envoy --mode validate` on `bootstrap` (with the extra arguments). Throws an
   * {@link EnvoyError} of kind `validate` whose message is Envoy's complaint.
   */
  async validate(bootstrap: EnvoyBootstrap): Promise<void> {
    const dir = await Deno.makeTempDir({ prefix: "tailvoy-envoy-validate-", dir: this.#options.tempDir });
    try {
      const path = `${dir}/envoy.json`;
      await Deno.writeTextFile(path, serializeBootstrap(bootstrap), { mode: 0o600 });
      const args = mergeEnvoyArgs(
        ["--mode", "validate", "-c", path, "--disable-hot-restart", "--log-level", "warn"],
        this.#options.extraArgs ?? [],
      );
      let output: Deno.CommandOutput;
      try {
        output = await this.#command(args).output();
      } catch (error) {
        throw this.#spawnError(error);
      }
      if (output.success) return;
      const decoder = new TextDecoder();
      const text = `${decoder.decode(output.stderr)}${decoder.decode(output.stdout)}`;
      throw new EnvoyError("validate", `Envoy rejected the bootstrap: ${envoyErrorSummary(text)}`, {
        output: text,
        exitCode: output.code,
      });
    } finally {
      await Deno.remove(dir, { recursive: true }).catch(() => {});
    }
  }

  /**
   * Starts Envoy with `bootstrap` and resolves once Envoy's `/ready` answers `LIVE`. Throws an
   * {@link EnvoyError}: `spawn` (binary missing), `start` (Envoy exited or was not ready in time,
   * with its error lines), `state` (already running). Does not validate first; call {@link validate}.
   */
  start(bootstrap: EnvoyBootstrap): Promise<void> {
    return this.#serial(async () => {
      await reapOrphans(this.#options.tempDir, this.#log);
      await this.#start(serializeBootstrap(bootstrap));
    });
  }

  /**
   * Starts Envoy with no bootstrap of ours: its configuration comes entirely from the extra arguments
   * (Envoy Gateway's `--config-yaml`, service node and cluster…), as when the Go tailvoy replaces Envoy
   * Gateway's data-plane image. Resolves once `/ready` answers `LIVE`; errors as {@link start}.
   */
  startExternal(): Promise<void> {
    return this.#serial(async () => {
      await reapOrphans(this.#options.tempDir, this.#log);
      await this.#start(null);
    });
  }

  /**
   * Stops Envoy gracefully: fails its health check, drains its listeners, waits up to `drainMs` for
   * the requests in flight to finish (idle keep-alive connections are not waited for: Envoy never
   * closes them itself), then SIGTERM, and SIGKILL after 5 s. Resolves when the process is gone.
   */
  stop(options: StopOptions = {}): Promise<void> {
    this.#stopping ??= this.#stop(options.drainMs ?? DEFAULT_DRAIN_MS).finally(() => {
      this.#stopping = undefined;
    });
    return this.#stopping;
  }

  /**
   * Replaces the running Envoy with one for `bootstrap`: validates it (an invalid one throws and the
   * running Envoy stays), stops the old Envoy with a drain, then starts the new one, since they share
   * ports. Between the two, Envoy's ports refuse connections. Returns false when `bootstrap` equals the
   * running one (nothing done).
   */
  reload(bootstrap: EnvoyBootstrap, options: StopOptions = {}): Promise<boolean> {
    return this.#serial(async () => {
      const text = serializeBootstrap(bootstrap);
      if (text === this.#text && this.#state !== "stopped" && this.#state !== "stopping") return false;
      await this.validate(bootstrap);
      this.#log.info("Reloading Envoy: draining the running one, then starting the new bootstrap");
      await this.stop(options);
      await this.#start(text);
      return true;
    });
  }

  /**
   * Sends `signal` to Envoy's process group (e.g. SIGUSR1 to reopen access logs; Envoy ignores SIGHUP).
   * A terminating signal (SIGTERM, SIGINT, SIGQUIT, SIGKILL) counts as a stop: no restart follows.
   * Returns false when no Envoy is running.
   */
  forward(signal: Deno.Signal): boolean {
    const instance = this.#current;
    if (!instance || instance.exit) return false;
    if (TERMINATING.has(signal)) instance.exitExpected ??= "signal";
    this.#log.info("Forwarding {signal} to Envoy (pid {pid})", { signal, pid: instance.pid });
    return this.#signal(instance, signal);
  }

  #serial<T>(task: () => Promise<T>): Promise<T> {
    const run = this.#queue.then(task, task);
    this.#queue = run.catch(() => {});
    return run;
  }

  #command(args: string[], options: { spawn?: boolean } = {}): Deno.Command {
    return new Deno.Command(this.#binary, {
      args,
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
      // Own session and process group (see the module comment).
      detached: options.spawn === true,
    });
  }

  #spawnError(error: unknown): EnvoyError {
    const why = error instanceof Deno.errors.NotFound
      ? "was not found: install Envoy, or set tailvoy.envoyBinary or ENVOY_BIN"
      : `could not be run: ${errorMessage(error)}`;
    return new EnvoyError("spawn", `Envoy binary "${this.#binary}" ${why}`, { cause: error });
  }

  #setState(state: EnvoyState): void {
    if (state === this.#state) return;
    this.#state = state;
    if (state === "ready") this.#ready.resolve();
    else if (this.#ready.settled) this.#ready = deferred();
    this.#notify(() => this.#options.onState?.(state));
  }

  /** Runs a caller's callback; its failure is logged, never the state machine's. */
  #notify(callback: () => void): void {
    try {
      callback();
    } catch (error) {
      this.#log.error("An Envoy state callback failed: {error}", {
        error: errorMessage(error),
      });
    }
  }

  async #start(text: string | null): Promise<void> {
    if (this.#state !== "stopped") {
      throw new EnvoyError("state", `Envoy is already ${this.#state}: stop it first, or reload`);
    }
    const generation = ++this.#generation;
    this.#text = text;
    this.#backoffMs = this.#options.backoff?.initialMs ?? 100;
    this.#setState("starting");
    try {
      await this.#launch(text, generation);
    } catch (error) {
      if (generation === this.#generation) this.#setState("stopped");
      this.#ready.reject(error);
      throw error;
    }
    this.#setState("ready");
    this.#log.info("Envoy is ready (pid {pid}, admin {admin})", {
      pid: this.#current?.pid,
      admin: this.#current?.admin,
    });
  }

  /** Spawns Envoy and waits for it to be ready; on failure nothing is left running. */
  async #launch(text: string | null, generation: number): Promise<void> {
    const dir = await Deno.makeTempDir({ prefix: ENVOY_DIR_PREFIX, dir: this.#options.tempDir });
    const configPath = `${dir}/envoy.json`;
    const adminPath = `${dir}/admin-address`;
    let instance: Instance | undefined;
    try {
      // The bootstrap names certificate files, our authz socket and the relay secret: readable by us
      // only, and so is the admin API (its /config_dump shows all of it): a unix socket in our 0700
      // directory, not a TCP port every local user can reach.
      if (text !== null) {
        const bootstrap = JSON.parse(text);
        bootstrap.admin = {
          ...bootstrap.admin,
          address: { pipe: { path: `${dir}/admin.sock`, mode: 0o600 } },
        };
        await Deno.writeTextFile(configPath, JSON.stringify(bootstrap), { mode: 0o600, createNew: true });
      }
      if (generation !== this.#generation) throw new EnvoyError("start", "Envoy was stopped during start-up");
      const options = this.#options;
      const args = mergeEnvoyArgs(
        [
          ...(text === null ? [] : ["-c", configPath]),
          "--disable-hot-restart",
          "--admin-address-path",
          adminPath,
          // Envoy Gateway's arguments size Envoy themselves (--cpuset-threads); ours get 2 workers.
          ...(text === null && options.concurrency === undefined
            ? []
            : ["--concurrency", String(options.concurrency ?? 2)]),
          "--drain-time-s",
          String(options.drainTimeS ?? 15),
          "--drain-strategy",
          options.drainStrategy ?? "immediate",
          "--log-level",
          options.logLevel ?? "warn",
        ],
        options.extraArgs ?? [],
        { external: text === null },
      );
      let child: Deno.ChildProcess;
      try {
        child = this.#command(args, { spawn: true }).spawn();
      } catch (error) {
        throw this.#spawnError(error);
      }
      // Envoy outlives a tailvoy that dies abruptly (it is in its own session): record who owns it so
      // the next supervisor on this machine can reap it.
      await recordOwner(dir, child.pid);
      const started: Instance = {
        child,
        pid: child.pid,
        dir,
        adminPath,
        startedAt: performance.now(),
        status: child.status,
        output: new EnvoyOutput(child, { log: this.#log }),
      };
      instance = started;
      started.status.then((status) => this.#onExit(started, status));
      this.#current = started;
      this.#log.debug("Envoy started (pid {pid}): {binary} {args}", {
        pid: child.pid,
        binary: this.#binary,
        args: args.join(" "),
      });
      await this.#waitReady(started, generation);
    } catch (error) {
      if (instance) {
        // Detach first: this exit is the start-up's failure to report, not a crash to restart.
        if (this.#current === instance) this.#current = undefined;
        instance.exitExpected = "stop";
        await this.#terminate(instance);
      }
      await Deno.remove(dir, { recursive: true }).catch(() => {});
      throw error;
    }
  }

  async #waitReady(instance: Instance, generation: number): Promise<void> {
    const timeoutMs = this.#options.readyTimeoutMs ?? 10_000;
    const deadline = performance.now() + timeoutMs;
    while (true) {
      if (instance.exit) {
        await instance.output.done;
        const output = instance.output.tail;
        throw new EnvoyError(
          "start",
          `Envoy exited during start-up (${describeExit(instance.exit)}): ${envoyErrorSummary(output)}`,
          { output, exitCode: instance.exit.code },
        );
      }
      if (generation !== this.#generation) throw new EnvoyError("start", "Envoy was stopped during start-up");
      if (performance.now() > deadline) {
        const output = instance.output.tail;
        throw new EnvoyError(
          "start",
          `Envoy was not ready within ${timeoutMs} ms: ${envoyErrorSummary(output) || "no output"}`,
          { output },
        );
      }
      instance.admin ??= (await Deno.readTextFile(instance.adminPath).catch(() => "")).trim() || undefined;
      const admin = this.#adminOf(instance);
      if (admin && await admin.readyState().catch(() => undefined) === "LIVE") return;
      await delay(50, { until: instance.status });
    }
  }

  /** The admin API of `instance`, once Envoy has written its address; `undefined` once it exited. */
  #adminOf(instance: Instance): EnvoyAdminClient | undefined {
    if (!instance.admin || instance.exit) return undefined;
    instance.adminClient ??= new EnvoyAdminClient(
      instance.admin.startsWith("/") ? instance.admin : `http://${instance.admin}`,
      { timeoutMs: ADMIN_TIMEOUT_MS },
    );
    return instance.adminClient;
  }

  #onExit(instance: Instance, status: Deno.CommandStatus): void {
    instance.exit = status;
    if (this.#current !== instance) return; // a start-up failure or an old instance: handled there
    const uptimeMs = Math.round(performance.now() - instance.startedAt);
    if (instance.exitExpected === "stop") return; // stop() finishes the job
    if (instance.exitExpected === "signal") {
      this.#log.info("Envoy exited ({how}) after a forwarded signal", { how: describeExit(status) });
      this.#current = undefined;
      this.#generation++;
      clearTimeout(this.#restartTimer);
      this.#setState("stopped");
      this.#ready.reject(new EnvoyError("state", "Envoy was stopped"));
      void instance.output.done.then(() => Deno.remove(instance.dir, { recursive: true }).catch(() => {}));
      return;
    }
    if (this.#state !== "ready") return; // still starting: #waitReady reports it
    this.#setState("restarting");
    void instance.output.done.then(() => Deno.remove(instance.dir, { recursive: true }).catch(() => {}));
    const delayMs = this.#nextBackoff(uptimeMs);
    this.#log.error("Envoy exited unexpectedly ({how}) after {uptimeMs} ms; restarting in {delayMs} ms", {
      how: describeExit(status),
      exitCode: status.code,
      signal: status.signal,
      uptimeMs,
      delayMs,
      restarts: this.#restarts,
    });
    this.#scheduleRestart(delayMs);
  }

  #nextBackoff(uptimeMs: number): number {
    const backoff = this.#options.backoff ?? {};
    const initial = backoff.initialMs ?? 100;
    // A long healthy run means the crash is not part of a crash loop: start over from the first delay.
    if (uptimeMs >= (backoff.resetAfterMs ?? 60_000)) this.#backoffMs = initial;
    const delayMs = this.#backoffMs;
    this.#backoffMs = Math.min(this.#backoffMs * 2, backoff.maxMs ?? 10_000);
    return delayMs;
  }

  #scheduleRestart(delayMs: number): void {
    const generation = this.#generation;
    this.#restartTimer = setTimeout(() => {
      this.#restartTimer = undefined;
      if (generation === this.#generation && this.#state === "restarting") void this.#restart(generation);
    }, delayMs);
  }

  async #restart(generation: number): Promise<void> {
    this.#restarts++;
    this.#log.warn("Restarting Envoy (restart {restarts})", { restarts: this.#restarts });
    const restarts = this.#restarts;
    this.#notify(() => this.#options.onRestart?.(restarts));
    const startedAt = performance.now();
    try {
      await this.#launch(this.#text ?? null, generation);
    } catch (error) {
      if (generation !== this.#generation || this.#state !== "restarting") return; // stopped meanwhile
      const delayMs = this.#nextBackoff(performance.now() - startedAt);
      this.#log.error("Envoy restart {restarts} failed: {error}; retrying in {delayMs} ms", {
        restarts: this.#restarts,
        error: errorMessage(error),
        delayMs,
      });
      this.#scheduleRestart(delayMs);
      return;
    }
    if (generation !== this.#generation) return;
    this.#setState("ready");
    this.#log.info("Envoy is ready again (pid {pid}, restart {restarts})", {
      pid: this.#current?.pid,
      restarts: this.#restarts,
    });
  }

  async #stop(drainMs: number): Promise<void> {
    this.#generation++;
    clearTimeout(this.#restartTimer);
    this.#restartTimer = undefined;
    const instance = this.#current;
    if (this.#state === "stopped" && !instance) return;
    this.#setState("stopping");
    if (instance && !instance.exit) {
      instance.exitExpected = "stop";
      const admin = this.#adminOf(instance);
      if (drainMs > 0 && admin) await drainEnvoy(admin, { drainMs, until: instance.status, log: this.#log });
      await this.#terminate(instance);
    }
    if (instance) {
      await instance.output.done;
      await Deno.remove(instance.dir, { recursive: true }).catch(() => {});
    }
    if (this.#current === instance) this.#current = undefined;
    this.#setState("stopped");
    this.#ready.reject(new EnvoyError("state", "Envoy was stopped"));
  }

  /** SIGTERM, then SIGKILL after 5 s; resolves once the process has exited. */
  async #terminate(instance: Instance): Promise<void> {
    if (instance.exit) return void await instance.status;
    this.#signal(instance, "SIGTERM");
    await delay(KILL_AFTER_MS, { until: instance.status });
    if (!instance.exit) {
      this.#log.warn("Envoy (pid {pid}) did not exit within {ms} ms of SIGTERM: sending SIGKILL", {
        pid: instance.pid,
        ms: KILL_AFTER_MS,
      });
      this.#signal(instance, "SIGKILL");
    }
    await instance.status;
  }

  #signal(instance: Instance, signal: Deno.Signal): boolean {
    try {
      // The whole group (Envoy leads it); Windows has no process groups.
      if (Deno.build.os === "windows") instance.child.kill(signal);
      else Deno.kill(-instance.pid, signal);
      return true;
    } catch {
      return false; // already gone
    }
  }
}
