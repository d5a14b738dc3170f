/**
 * tailvoy configuration: schema, parsing with located errors, `${VAR}` expansion, credentials,
 * and Service mapping. Accepts the Go tailvoy's config format unchanged; our additions live under
 * `tailvoy:`, on listeners and in `egress:` (see `schema.ts`).
 *
 * ```ts
 * import { ConfigError, loadConfig } from "./lib/config/mod.ts";
 * try {
 *   const config = await loadConfig("config.yaml");
 * } catch (error) {
 *   if (error instanceof ConfigError) console.error(error.message); // one issue per line
 * }
 * ```
 *
 * @module
 */

export {
  type AliasTarget,
  type BackendProxyConfig,
  type BackendTlv,
  type Config,
  type ConfigInput,
  ConfigSchema,
  type DiscoveryConfig,
  type EgressConfig,
  type EgressCredentialsConfig,
  type EgressListenerConfig,
  type EgressRuleConfig,
  type IdentityTokenConfig,
  type IngressMode,
  type ListenerConfig,
  type PortRange,
  type Protocol,
  type RouteConfig,
  type TailscaleConfig,
  type TailvoyConfig,
  type TlsConfig,
  type TokenKeyConfig,
} from "./schema.ts";
export { loadConfig, type LoadConfigOptions, parseConfig, type ParseConfigOptions } from "./parse.ts";
export { ConfigError, type ConfigIssue, formatIssue, formatIssues, formatPath } from "./errors.ts";
export {
  CREDENTIAL_VARIABLES,
  Credentials,
  type CredentialValues,
  readCredentials,
  type ReadCredentialsOptions,
} from "./credentials.ts";
export { createServiceMatcher, SERVICE_PREFIX, type ServiceMatcherInput } from "./services.ts";
export { compilePattern, parseDuration, type Pattern } from "./formats.ts";
export {
  BACKEND_PROXY_TLVS,
  DEFAULT_ADMIN_ADDRESS,
  DEFAULT_CAPABILITY,
  DEFAULT_EGRESS_SOURCES,
  DEFAULT_LOCALAPI_SOCKET,
  EGRESS_PROTOCOLS,
  INGRESS_MODES,
  L7_PROTOCOLS,
  PROTOCOLS,
  TOKEN_ALGORITHMS,
  TOKEN_LIFETIME,
} from "./constants.ts";
