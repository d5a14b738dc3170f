/**
 * Enumerations and defaults shared by the schema, the cross-field rules and the runtime.
 *
 * @module
 */

/** Listener protocols, as in the Go tailvoy. */
export const PROTOCOLS = ["http", "https", "grpc", "tls", "tcp", "udp"] as const;

/** Protocols terminated by Envoy, where paths, hostnames and headers are visible. */
export const L7_PROTOCOLS: readonly string[] = ["http", "https", "grpc"];

/**
 * How tailnet traffic reaches a listener:
 * `serve` asks tailscaled to forward a Tailscale Service (VIP) port to us with PROXY protocol;
 * `direct` listens on the node's own Tailscale address.
 */
export const INGRESS_MODES = ["serve", "direct"] as const;

/**
 * Identity TLVs a tcp/tls backend may ask for in `proxyProtocol.tlvs`; their type numbers and encoding
 * are the backend contract's (`lib/l4/backend_proxy.ts`).
 */
export const BACKEND_PROXY_TLVS = ["login", "node", "tags"] as const;

/** Signature algorithms of identity tokens: ES256 (P-256, the default) or EdDSA (Ed25519). */
export const TOKEN_ALGORITHMS = ["ES256", "EdDSA"] as const;

/** Identity token lifetime: default, and the range a listener may set (durations). */
export const TOKEN_LIFETIME = Object.freeze({ default: "5m", min: "1s", max: "1h" });

/** Envoy cluster health policies for discovery mode, as in the Go tailvoy. */
export const HEALTH_POLICIES = ["any", "all"] as const;

/** Default tailscaled LocalAPI socket on Linux. */
export const DEFAULT_LOCALAPI_SOCKET = "/var/run/tailscale/tailscaled.sock";

/** Default peer capability carrying tailvoy rules, as in the Go tailvoy. */
export const DEFAULT_CAPABILITY = "rajsingh.info/cap/tailvoy";

/** Default admin (health, metrics) listen address. */
export const DEFAULT_ADMIN_ADDRESS = "127.0.0.1:9002";

/**
 * Request headers some backends honour to serve another path or method than the one the policy judged
 * (an `/admin` page under an `/api/*` grant, a DELETE under a GET-only one): removed at L7 unless a
 * listener keeps them by name (`keepHeaders`).
 */
export const OVERRIDE_HEADERS = [
  "x-original-url",
  "x-rewrite-url",
  "x-http-method-override",
  "x-http-method",
  "x-method-override",
] as const;

/** One of {@link OVERRIDE_HEADERS}. */
export type OverrideHeader = typeof OVERRIDE_HEADERS[number];

/** What an egress proxy listener speaks: HTTP proxy (CONNECT and absolute-form) and SOCKS5. */
export const EGRESS_PROTOCOLS = ["http", "socks5"] as const;

/** Clients an egress listener accepts when it names no `sources`: this host only. */
export const DEFAULT_EGRESS_SOURCES: readonly string[] = Object.freeze(["127.0.0.0/8", "::1/128"]);
