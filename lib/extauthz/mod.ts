/**
 * tailvoy's ext_authz server: Envoy calls `envoy.service.auth.v3.Authorization/Check` (gRPC over h2c)
 * for every request on an http/https/grpc listener, and we answer from the caller's tailnet identity
 * and the policy. See `evaluate.ts` for the checks, `headers.ts` for what an allowed request carries.
 *
 * ```ts
 * const server = createAuthzServer({ resolver, listeners: listenersFromConfig(config), secret });
 * const { port } = await server.listen("127.0.0.1:9001");
 * // ...
 * await server.close();
 * ```
 *
 * Runs on `@grpc/grpc-js`, whose server works under Deno 2.9 as is (checked against Envoy 1.40 and a
 * grpc-js client in tests/extauthz_test.ts). Permissions beyond the network: `--allow-env` (grpc-js reads
 * `GRPC_*` variables when imported), `--allow-read` on `proto/` and `--allow-sys=uid` (see `protos.ts`).
 *
 * @module
 */

import * as grpc from "@grpc/grpc-js";
import { getLogger } from "../log.ts";
import { type AuthzDeps, evaluateCheck } from "./evaluate.ts";
import { loadAuthzProtos } from "./protos.ts";
import { checkSecret } from "./secret.ts";

export {
  type AuthzCode,
  type AuthzDeps,
  type DecisionRecord,
  DENY_BODY,
  DENY_MESSAGE,
  evaluateCheck,
  type ListenerLookup,
  type ListenerSettings,
  listenersFromConfig,
  PERMISSION_DENIED,
} from "./evaluate.ts";
export {
  encodeHeaderValue,
  formatAppCapabilities,
  goJson,
  IDENTITY_HEADERS,
  type IdentityHeaderOptions,
  identityHeaders,
  RESERVED_HEADER_PREFIXES,
  spoofedHeaders,
} from "./headers.ts";
export {
  AUTHORIZATION_SERVICE,
  type AuthzProtos,
  CHECK_PATH,
  EXTERNAL_AUTH_PROTO,
  loadAuthzProtos,
  LOADER_OPTIONS,
  PROTO_DIR,
} from "./protos.ts";
export {
  type CheckRequest,
  CheckRequestSchema,
  type CheckResponse,
  CheckResponseSchema,
  HEADER_APPEND_ACTIONS,
  type HeaderValueOption,
  HeaderValueOptionSchema,
} from "./schema.ts";
export { type AddressKind, classifyAddress } from "./address.ts";
export {
  checkSecret,
  DEFAULT_SECRET_KEY,
  DEFAULT_SECRET_TLV_TYPE,
  generateSecret,
  SECRET_METADATA_NAMESPACE,
  secretMatches,
} from "./secret.ts";

/** tailvoy's default `-authz-addr`. */
export const DEFAULT_AUTHZ_ADDRESS = "127.0.0.1:9001";

/** Options of {@link createAuthzServer}: the evaluation dependencies plus server settings. */
export interface AuthzServerOptions extends AuthzDeps {
  /** Proto directory (default: the vendored `proto/`). */
  protoDir?: string;
}

/** A running (or not yet listening) ext_authz server. */
export interface AuthzServer {
  /** Binds `addr` (`host:port`, `[v6]:port`, or `:port` for all interfaces; port 0 picks one). */
  listen(addr?: string): Promise<{ host: string; port: number }>;
  /**
   * Stops: no new calls, in-flight ones finish, connections get a GOAWAY; after `graceMs` (default
   * 1000) whatever is left is cut.
   */
  close(options?: { graceMs?: number }): Promise<void>;
}

const log = getLogger("extauthz");

/** Splits `addr` into host and port; `:port` means every interface (Go's convention, as in tailvoy). */
function parseListenAddress(addr: string): { host: string; port: number; target: string } {
  // A unix socket: only processes that can reach its (private) directory can connect.
  if (addr.startsWith("unix:/")) return { host: addr, port: 0, target: addr };
  const m = /^(?:\[([^\]]+)\]|([^:[\]]*)):(\d{1,5})$/.exec(addr);
  const port = m ? Number(m[3]) : NaN;
  if (!m || port > 65535) {
    throw new Error(`Authz address "${addr}" is not host:port (e.g. ${DEFAULT_AUTHZ_ADDRESS})`);
  }
  const host = m[1] ?? (m[2] || "0.0.0.0");
  return { host, port, target: host.includes(":") ? `[${host}]:${port}` : `${host}:${port}` };
}

/**
 * Creates the ext_authz gRPC server (plaintext h2c, which is what Envoy's `envoy_grpc` speaks to a
 * cluster with `http2_protocol_options`). Throws at once on an unusable secret or missing protos.
 */
export function createAuthzServer(options: AuthzServerOptions): AuthzServer {
  if (options.secret !== null) checkSecret(options.secret);
  const { protoDir, ...deps } = options;
  const protos = loadAuthzProtos(protoDir === undefined ? {} : { protoDir });
  const server = new grpc.Server();
  const check: grpc.handleUnaryCall<unknown, unknown> = (call, callback) => {
    // evaluateCheck never rejects; the catch is for a bug in it, and still denies.
    evaluateCheck(call.request, deps).then(
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
    listen(addr = DEFAULT_AUTHZ_ADDRESS) {
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
          log.info("ext_authz listening on {host}:{port}", { host: parsed.host, port });
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
