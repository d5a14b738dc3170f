/**
 * tailvoy's ext_authz: Envoy asks about every request on an http/https/grpc listener, and we answer from
 * the caller's tailnet identity and the policy. `evaluate.ts` decides (one place, whatever the transport),
 * `http.ts` is the server our own Envoy calls (HTTP on a private unix socket), `headers.ts` says what an
 * allowed request carries. The gRPC server Envoy Gateway calls (`grpc.ts`, `grpc_bridge.ts`) is not
 * exported here: it loads grpc-js, which only the bridge process may.
 *
 * ```ts
 * const server = await serveHttpAuthz(`${privateDir}/authz.sock`, { resolver, listeners, services });
 * // ... Envoy's ext_authz http_service points at that socket
 * await server.close();
 * ```
 *
 * @module
 */

export {
  type AuthzCode,
  type AuthzDeps,
  type CheckAnswer,
  type CheckInput,
  checkInputFromRequest,
  CheckInputSchema,
  decisionEvent,
  type DecisionRecord,
  DENY_BODY,
  DENY_MESSAGE,
  denyHeaders,
  evaluateCheck,
  judge,
  type ListenerLookup,
  type ListenerSettings,
  listenersFromConfig,
  PERMISSION_DENIED,
  toCheckResponse,
  type Verdict,
} from "./evaluate.ts";
export {
  type HttpAuthzOptions,
  type HttpAuthzServer,
  httpCheckInput,
  JUDGE_PATH,
  serveHttpAuthz,
  verdictResponse,
} from "./http.ts";
export {
  encodeHeaderValue,
  formatAppCapabilities,
  FORWARDED_HEADER,
  FORWARDING_HEADERS,
  forwardingHeaders,
  goJson,
  IDENTITY_HEADERS,
  IDENTITY_TOKEN_HEADER,
  type IdentityHeaderOptions,
  identityHeaders,
  identityTokenHeader,
  OVERRIDE_HEADERS,
  type OverrideHeader,
  RESERVED_HEADER_PREFIXES,
  spoofedHeaders,
  strippedHeaders,
} from "./headers.ts";
export {
  type CheckRequest,
  CheckRequestSchema,
  type CheckResponse,
  CheckResponseSchema,
  HEADER_APPEND_ACTIONS,
  type HeaderValueOption,
  HeaderValueOptionSchema,
} from "./schema.ts";
export { type AddressKind, classifyAddress } from "../net/address.ts";
