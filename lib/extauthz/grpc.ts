/**
 * The gRPC ext_authz server (`envoy.service.auth.v3.Authorization/Check`, plaintext h2c) that Envoy
 * Gateway's SecurityPolicy calls. It runs in the gRPC bridge, a child process (see `grpc_bridge.ts`):
 * grpc-js rides on Deno's `node:http2`, which a misbehaving client can abort inside nghttp2
 * (denoland/deno#36788), so it must never share a process with the data plane. Only this module and
 * `protos.ts` load the grpc-js/protobuf stack.
 *
 * ```ts
 * const server = createAuthzServer({ check: (request) => evaluateCheck(request, deps) });
 * const { port } = await server.listen("127.0.0.1:0");
 * await server.close();
 * ```
 *
 * Permissions beyond the network: `--allow-env` (grpc-js reads `GRPC_*` variables when imported),
 * `--allow-read` on `proto/` and `--allow-sys=uid` (see `protos.ts`).
 *
 * @module
 */

import * as grpc from "@grpc/grpc-js";
import { getLogger } from "../log.ts";
import { joinHostPort, splitHostPort } from "../net/address.ts";
import { loadAuthzProtos } from "./protos.ts";
import type { CheckResponse } from "./schema.ts";

/** Options of {@link createAuthzServer}. */
export interface AuthzServerOptions {
  /** Answers one decoded CheckRequest; a rejection is answered with INTERNAL (Envoy then denies). */
  check: (request: unknown) => Promise<CheckResponse>;
  /** Proto directory (default: the vendored `proto/`). */
  protoDir?: string;
}

/** A running (or not yet listening) ext_authz server. */
export interface AuthzServer {
  /** Binds `addr` (`host:port`, `[v6]:port`, or `:port` for all interfaces; port 0 picks one). */
  listen(addr: string): Promise<{ host: string; port: number }>;
  /**
   * Stops: no new calls, in-flight ones finish, connections get a GOAWAY; after `graceMs` (default
   * 1000) whatever is left is cut.
   */
  close(options?: { graceMs?: number }): Promise<void>;
}

const log = getLogger("extauthz");

/** Splits `addr` into host and port; `:port` means every interface (Go's convention, kept from the Go tailvoy). */
export function parseListenAddress(addr: string): { host: string; port: number; target: string } {
  if (addr.startsWith("unix:/")) return { host: addr, port: 0, target: addr };
  const split = splitHostPort(addr);
  if (!split) throw new Error(`Authz address "${addr}" is not host:port (e.g. 127.0.0.1:9001)`);
  const host = split.host || "0.0.0.0";
  return { host, port: split.port, target: joinHostPort(host, split.port) };
}

/** Creates the gRPC ext_authz server. Throws at once on missing protos. */
export function createAuthzServer(options: AuthzServerOptions): AuthzServer {
  const protos = loadAuthzProtos(options.protoDir === undefined ? {} : { protoDir: options.protoDir });
  const server = new grpc.Server();
  const check: grpc.handleUnaryCall<unknown, unknown> = (call, callback) => {
    options.check(call.request).then(
      (response) => callback(null, response),
      (error) => {
        log.error("Check failed unexpectedly: {error}", { error });
        callback({ code: grpc.status.INTERNAL, details: "authorization failed" });
      },
    );
  };
  server.addService(protos.service, { Check: check });
  let listening = false;
  let closed = false;
  return {
    listen(addr) {
      if (closed) return Promise.reject(new Error("Authz server is closed"));
      if (listening) {
        return Promise.reject(new Error(`Authz server is already listening, not binding "${addr}"`));
      }
      let parsed: ReturnType<typeof parseListenAddress>;
      try {
        parsed = parseListenAddress(addr);
      } catch (error) {
        return Promise.reject(error);
      }
      listening = true;
      return new Promise((resolve, reject) => {
        server.bindAsync(parsed.target, grpc.ServerCredentials.createInsecure(), (error, port) => {
          if (error) {
            listening = false;
            reject(new Error(`Authz server cannot listen on "${addr}": ${error.message}`, { cause: error }));
            return;
          }
          log.info("gRPC ext_authz listening on {host}:{port}", { host: parsed.host, port });
          resolve({ host: parsed.host, port });
        });
      });
    },
    close(closeOptions = {}) {
      if (closed) return Promise.resolve();
      closed = true;
      const graceMs = closeOptions.graceMs ?? 1000;
      return new Promise<void>((resolve) => {
        const timer = setTimeout(() => {
          server.forceShutdown();
          resolve();
        }, graceMs);
        server.tryShutdown(() => {
          clearTimeout(timer);
          resolve();
        });
      });
    },
  };
}
