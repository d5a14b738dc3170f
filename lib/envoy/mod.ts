/**
 * Envoy for the L7 listeners (http, https, grpc): the bootstrap we render from the config, the
 * supervisor that runs Envoy with it, and the client of Envoy's admin API (ours and Envoy Gateway's).
 *
 * ```ts
 * const names = l7ListenerNames(config);
 * const listenerPorts = allocatePorts(names); // or ports of your choosing
 * const bootstrap = renderBootstrap(config, { listenerPorts, authzAddress: "127.0.0.1:9001" });
 * const envoy = new EnvoySupervisor({ binary: config.tailvoy.envoyBinary, extraArgs });
 * await envoy.validate(bootstrap); // EnvoyError (kind "validate") carrying Envoy's message
 * await envoy.start(bootstrap);
 * // the relay forwards each L7 connection to 127.0.0.1:<listenerPorts.get(name)> with PROXY v2
 * await envoy.stop({ drainMs: config.tailvoy.timeouts.drain });
 * ```
 *
 * @module
 */

export {
  ADMIN_PATHS,
  DEFAULT_ADMIN_MAX_BYTES,
  DEFAULT_ADMIN_TIMEOUT_MS,
  EnvoyAdminClient,
  EnvoyAdminError,
  type EnvoyAdminFailure,
  type EnvoyAdminOptions,
} from "./admin.ts";
export {
  AUTHZ_CLUSTER,
  DEFAULT_AUTHZ_TIMEOUT_MS,
  DEFAULT_CONNECT_TIMEOUT_MS,
  DEFAULT_MAX_CONNECTIONS,
  type EnvoyBootstrap,
  type JsonObject,
  type JsonValue,
  l7ListenerNames,
  type NamedResource,
  pathMatch,
  renderBootstrap,
  type RenderOptions,
  serializeBootstrap,
} from "./bootstrap.ts";
export { EnvoyError, type EnvoyErrorKind } from "./errors.ts";
export { reapOrphans } from "./orphans.ts";
export { envoyErrorSummary, type EnvoyLogLine, parseEnvoyLogLine } from "./output.ts";
export { allocatePorts, DEFAULT_ENVOY_BINARY, mergeEnvoyArgs, resolveEnvoyBinary } from "./process.ts";
export {
  type EnvoyState,
  EnvoySupervisor,
  type EnvoySupervisorOptions,
  type StopOptions,
} from "./supervisor.ts";
