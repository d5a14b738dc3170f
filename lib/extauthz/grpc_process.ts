/**
 * Envoy Gateway's gRPC ext_authz, isolated: the HTTP authz server on a private unix socket judges, and
 * a supervised child process (`grpc_bridge.ts`) speaks gRPC to Envoy. Whatever a gRPC client does to
 * Deno's HTTP/2 stack (denoland/deno#36788 aborts the process) ends the child only; it is restarted with
 * backoff on the same address, and Envoy denies while it is down (its ext_authz call fails).
 *
 * @module
 */

import { lineSplitter } from "../util/lines.ts";
import { getLogger, loggingArgs } from "../log.ts";
import { joinHostPort } from "../net/address.ts";
import { selfCommand } from "../self.ts";
import { ServiceIndex } from "../wire.ts";
import type { AuthzDeps } from "./evaluate.ts";
import { type HttpAuthzServer, serveHttpAuthz } from "./http.ts";

/** Options of {@link GrpcAuthzProcess.start}. */
export interface GrpcAuthzOptions extends AuthzDeps {
  /** How long the child may take to bind (default 30 s). */
  startTimeoutMs?: number;
}

/** The Go tailvoy's default `-authz-addr` (Envoy Gateway mode). */
export const DEFAULT_AUTHZ_ADDRESS = "127.0.0.1:9001";

const log = getLogger("extauthz");
const MAX_BACKOFF_MS = 5000;
// A child that ran this long before exiting starts the backoff afresh.
const STABLE_MS = 30_000;

/** A running gRPC ext_authz child and the judge it asks. */
export class GrpcAuthzProcess {
  #child?: Deno.ChildProcess;
  #address: string;
  #restarts = 0;
  #backoffMs = 100;
  #closing = false;
  #restartTimer?: ReturnType<typeof setTimeout>;
  readonly #judge: HttpAuthzServer;
  readonly #dir: string;
  readonly #options: GrpcAuthzOptions;
  #watching: Promise<void> = Promise.resolve();

  private constructor(judge: HttpAuthzServer, dir: string, address: string, options: GrpcAuthzOptions) {
    this.#judge = judge;
    this.#dir = dir;
    this.#address = address;
    this.#options = options;
  }

  /**
   * Starts the judge and the child, bound to `listen` (`host:port`; port 0 picks one, kept across
   * restarts). Rejects when the child cannot bind, with its reason.
   */
  static async start(listen: string, options: GrpcAuthzOptions): Promise<GrpcAuthzProcess> {
    const dir = await Deno.makeTempDir({ prefix: "tailvoy-authz-" });
    await Deno.chmod(dir, 0o700);
    let judge: HttpAuthzServer | undefined;
    try {
      const { startTimeoutMs: _, ...deps } = options;
      // Envoy Gateway's connections carry no relay secret or Service: every check is node-scoped.
      judge = await serveHttpAuthz(`${dir}/judge.sock`, { ...deps, services: new ServiceIndex() });
      const process = new GrpcAuthzProcess(judge, dir, listen, options);
      await process.#spawn();
      return process;
    } catch (err) {
      await judge?.close();
      await Deno.remove(dir, { recursive: true }).catch(() => {});
      throw err;
    }
  }

  /** The address the child listens on (`host:port`). */
  get address(): string {
    return this.#address;
  }

  /** The child's pid, while it runs. */
  get pid(): number | undefined {
    return this.#child?.pid;
  }

  /** Restarts after the child exited. */
  get restarts(): number {
    return this.#restarts;
  }

  async #spawn(): Promise<void> {
    const { command, args } = selfCommand([
      "authz-bridge",
      "--authz-addr",
      this.#address,
      "--judge",
      this.#judge.path,
      ...loggingArgs(),
    ]);
    const child = new Deno.Command(command, {
      args,
      stdin: "piped",
      stdout: "piped",
      stderr: "inherit",
    }).spawn();
    this.#child = child;
    const started = performance.now();
    const lines = child.stdout.pipeThrough(new TextDecoderStream()).pipeThrough(lineSplitter()).values();
    const timeoutMs = this.#options.startTimeoutMs ?? 30_000;
    let timer: ReturnType<typeof setTimeout> | undefined;
    const first = await Promise.race([
      lines.next(),
      child.status.then((s) => ({ exited: s })),
      new Promise<"timeout">((resolve) => timer = setTimeout(() => resolve("timeout"), timeoutMs)),
    ]);
    clearTimeout(timer);
    let bound: { host: string; port: number } | undefined;
    if (typeof first === "object" && "value" in first && typeof first.value === "string") {
      try {
        bound = JSON.parse(first.value).listening;
      } catch { /* not the ready line */ }
    }
    if (!bound) {
      try {
        child.kill("SIGKILL");
      } catch { /* exited */ }
      const status = await child.status;
      throw new Error(
        `The gRPC ext_authz process did not start on "${this.#address}" (exit ${status.code}${
          status.signal ? `, ${status.signal}` : ""
        }): see its log lines above; check that the address is free and valid`,
      );
    }
    this.#address = joinHostPort(bound.host, bound.port);
    // Keep reading so the pipe never fills; nothing more is expected.
    (async () => {
      for await (const _ of lines) { /* drain */ }
    })().catch(() => {});
    log.info("gRPC ext_authz process ready (pid {pid}) on {address}", {
      pid: child.pid,
      address: this.#address,
    });
    this.#watching = child.status.then((status) => this.#onExit(status, performance.now() - started));
  }

  #onExit(status: Deno.CommandStatus, uptimeMs: number): void {
    this.#child = undefined;
    if (this.#closing) return;
    this.#restarts++;
    if (uptimeMs > STABLE_MS) this.#backoffMs = 100;
    const delay = this.#backoffMs;
    this.#backoffMs = Math.min(this.#backoffMs * 2, MAX_BACKOFF_MS);
    log.error(
      "gRPC ext_authz process exited ({how}) after {uptime} s; Envoy's checks are denied until it is back; restarting in {delay} ms",
      {
        how: status.signal ? `signal ${status.signal}` : `exit ${status.code}`,
        uptime: Math.round(uptimeMs / 1000),
        delay,
      },
    );
    this.#restartTimer = setTimeout(() => {
      if (this.#closing) return;
      this.#spawn().catch((error) => {
        log.error("gRPC ext_authz process failed to restart: {error}", { error });
        this.#onExit({ success: false, code: 1, signal: null }, 0);
      });
    }, delay);
  }

  /** Stops the child (its stdin closes, then SIGTERM after a second) and the judge. */
  async close(): Promise<void> {
    this.#closing = true;
    clearTimeout(this.#restartTimer);
    const child = this.#child;
    if (child) {
      await child.stdin.close().catch(() => {});
      const timer = setTimeout(() => {
        try {
          child.kill("SIGKILL");
        } catch { /* exited */ }
      }, 1000);
      await child.status;
      clearTimeout(timer);
    }
    await this.#watching;
    await this.#judge.close();
    await Deno.remove(this.#dir, { recursive: true }).catch(() => {});
  }
}
