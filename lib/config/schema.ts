/**
 * The configuration schema. Types come from it through `z.infer`, so they are never declared twice.
 *
 * Layout: the Go tailvoy's own keys (`tailscale`, `listeners`, `discovery`) keep their meaning and
 * spelling, so its configs parse unchanged. Our process-wide additions live under one
 * top-level `tailvoy:` block (a single place to look, and no risk of colliding with keys the Go tailvoy
 * may add later). Per-listener additions (`acceptAppCaps`, `shadow`, `ingress`) sit on the
 * listener they affect. The egress proxy (cluster → tailnet) is its own optional top-level block,
 * `egress:` (see `egress.ts`). Every addition is optional and defaulted.
 *
 * Differences from the Go tailvoy, all deliberate:
 * - unknown keys are errors (the Go tailvoy ignored them);
 * - `tailscale.tags` and `serviceTags` are optional: tailscaled owns the node, not us;
 * - `tailscale.serviceMappings` is required only when some listener uses `serve` ingress;
 * - http/https/grpc listeners may set `backend` as a catch-all, folded into `routes` after parsing;
 * - a udp and a tcp listener may share a port number;
 * - durations (`pollInterval`, `tailvoy.timeouts.*`) are parsed to milliseconds;
 * - values are checked: backends are host:port (IPv6 bracketed), path keys are `/x`, `/x/*` or `/*`,
 *   hostnames, tags and Service names are well formed, regexes compile;
 * - in static mode each serviceMappings entry must match a listener (an exact name matches only
 *   that listener), and udp or `direct` listeners need no mapping (the Go tailvoy required one for all);
 * - tls passthrough rejects `tls:` and duplicate hostnames; per-route `tls` needs a `hostname`.
 *
 * @module
 */

import { z } from "zod";
import {
  BACKEND_PROXY_TLVS,
  DEFAULT_ADMIN_ADDRESS,
  DEFAULT_CAPABILITY,
  DEFAULT_LOCALAPI_SOCKET,
  HEALTH_POLICIES,
  INGRESS_MODES,
  L7_PROTOCOLS,
  OVERRIDE_HEADERS,
  PROTOCOLS,
  TOKEN_ALGORITHMS,
  TOKEN_LIFETIME,
} from "./constants.ts";
import { EgressSchema, normalizeEgress } from "./egress.ts";
import { joinMessage } from "./errors.ts";
import { checked, duration, nonEmpty, port } from "./fields.ts";
import {
  checkCapabilityName,
  checkHost,
  checkHostname,
  checkHostPort,
  checkHttpUrl,
  checkListenerName,
  checkNodeName,
  checkPathPattern,
  checkPattern,
  checkServiceName,
  checkTag,
} from "./formats.ts";
import { checkCrossField } from "./cross_field.ts";

// The Go tailvoy treated "" like an absent key; keep accepting it.
const emptyAsUnset = (value: unknown) => value === "" ? undefined : value;

const backend = checked(checkHostPort);

/** `tls:` on a listener or route: certificate and key files for TLS termination. */
const TlsSchema = z.strictObject({
  /** PEM certificate chain file. */
  cert: nonEmpty("the certificate file path"),
  /** PEM private key file. */
  key: nonEmpty("the private key file path"),
});

const TLV_NAMES = BACKEND_PROXY_TLVS.join(", ");

/**
 * `proxyProtocol:` on a tcp or tls listener or a tls route (our addition): send the backend a PROXY v2
 * header naming the caller, with the identity TLVs listed. `v2` is short for `{version: v2}`.
 */
const BackendProxySchema = z.preprocess(
  // Any other scalar fails as a whole, where the hint shows both spellings.
  (value) => value === "v2" ? { version: value } : value,
  z.strictObject({
    /** PROXY protocol version; only v2 (v1 cannot carry TLVs). */
    version: z.enum(["v2"]),
    /** Identity TLVs to add, each at most once (see the README for their types and encoding). */
    tlvs: z.array(z.enum(BACKEND_PROXY_TLVS))
      .refine((tlvs) => new Set(tlvs).size === tlvs.length, {
        error: joinMessage("lists a TLV more than once", `name each of ${TLV_NAMES} at most once`),
      })
      .default([]),
  }, {
    error: (issue) =>
      issue.code === "invalid_type"
        ? joinMessage(
          `expected v2 or a mapping, got ${JSON.stringify(issue.input)}`,
          `write proxyProtocol: v2, or proxyProtocol: {version: v2, tlvs: [${TLV_NAMES}]}`,
        )
        : undefined,
  }),
);

/** One entry of a listener's `routes`. */
const RouteSchema = z.strictObject({
  /** Host header (http) or SNI name (tls, per-route certificates) to match; `*.example.com` allowed. Omit for catch-all. */
  hostname: checked(checkHostname).optional(),
  /** Path pattern (`/x`, `/x/*`, `/*`) → backend `host:port`. Exclusive with `backend`. */
  paths: z.record(checked(checkPathPattern), backend)
    .refine((paths) => Object.keys(paths).length > 0, {
      error: joinMessage("must not be empty", 'add at least one entry, e.g. "/*": 127.0.0.1:8080'),
    })
    .optional(),
  /** Backend `host:port` for everything this route matches. Exclusive with `paths`. */
  backend: backend.optional(),
  /** Certificate for this hostname (https/grpc only), chosen by SNI. */
  tls: TlsSchema.optional(),
  /** Our addition (tls only): PROXY v2 header to this route's backend; replaces the listener's. */
  proxyProtocol: BackendProxySchema.optional(),
});

/**
 * `identityToken:` on an http/https/grpc listener (our addition): a signed JWT naming the caller in
 * `X-Tailvoy-Jwt-Assertion` on every allowed request. `true` is short for `{}`, `false` for absent.
 */
const IdentityTokenSchema = z.preprocess(
  (value) => value === true ? {} : value === false ? undefined : value,
  z.strictObject({
    /** The token's `aud`; default the listener's name. */
    audience: nonEmpty("the audience the backend checks").optional(),
    /** How long a token is valid (default 5m, from 1s to 1h), in milliseconds. */
    lifetime: duration(TOKEN_LIFETIME.default, { range: TOKEN_LIFETIME }),
  }, {
    error: (issue) =>
      issue.code === "invalid_type"
        ? joinMessage(
          `expected true, false or a mapping, got ${JSON.stringify(issue.input)}`,
          `write identityToken: true, or identityToken: {audience: my-app, lifetime: ${TOKEN_LIFETIME.default}}`,
        )
        : undefined,
  }).optional(),
);

/** `tailvoy.identityToken:` the signing key of identity tokens (our addition). */
const TokenKeySchema = z.strictObject({
  /**
   * PKCS#8 PEM private key file (P-256 for ES256, Ed25519 for EdDSA); re-read on SIGHUP. Without it a
   * key is generated at start (and lost at exit).
   */
  keyFile: nonEmpty("the private key file path").optional(),
  /** Signature algorithm (default ES256). */
  algorithm: z.enum(TOKEN_ALGORITHMS).default(TOKEN_ALGORITHMS[0]),
  /** The tokens' `iss`; default `https://<this node's MagicDNS name>/`. */
  issuer: checked(checkHttpUrl).optional(),
});

/** One entry of `listeners`, keyed by listener name (the name used in ACL cap rules). */
const ListenerSchema = z.strictObject({
  /** Port on the tailnet. TCP ports are unique across listeners; a udp listener may reuse a TCP port number. */
  port,
  /** http | https | grpc (L7, through Envoy) or tls | tcp | udp (L4, proxied by us). */
  protocol: z.enum(PROTOCOLS),
  /**
   * Upstream `host:port`. Required for tcp/udp. On http/https/grpc (our addition) it is the
   * catch-all for requests no route matches; after parsing it appears as the last entry of `routes`.
   */
  backend: backend.optional(),
  /** Host/path routing (http/https/grpc) or SNI routing (tls). */
  routes: z.array(RouteSchema).optional(),
  /** Listener certificate: required for https (unless every route has one), optional for grpc. */
  tls: TlsSchema.optional(),
  /**
   * Our addition (http/https/grpc): send the backend `Tailscale-App-Capabilities` as `tailscale serve
   * --accept-app-caps` does. A list names the capabilities to send (serve's flag); `true` sends
   * `tailvoy.capabilities` (ours).
   */
  acceptAppCaps: z.union([z.boolean(), z.array(checked(checkCapabilityName)).min(1)]).default(false),
  /** Our addition: audit only; log what policy would deny but let it through. */
  shadow: z.boolean().default(false),
  /** Our addition: override `tailvoy.ingress` for this listener. udp listeners are always `direct`. */
  ingress: z.enum(INGRESS_MODES).optional(),
  /**
   * Our addition (http/https/grpc): override headers (`X-HTTP-Method-Override`, `X-Original-URL`, …) to
   * let through to the backend; by default all are removed, since a backend that honours them serves
   * another method or path than the one the policy judged.
   */
  keepHeaders: z.array(z.enum(OVERRIDE_HEADERS)).default([]),
  /**
   * Our addition (tcp/tls): send the backend a PROXY v2 header naming the caller (its tailnet address,
   * optionally login, node and tags in TLVs) before any byte of the caller's.
   */
  proxyProtocol: BackendProxySchema.optional(),
  /** Our addition (http/https/grpc): a signed identity token for the backend; see `IdentityTokenSchema`. */
  identityToken: IdentityTokenSchema.optional(),
});

/** `tailscale:` block, as in the Go tailvoy (minus the removed `service` key). */
const TailscaleSchema = z.strictObject({
  /**
   * Tailscale Service name (no `svc:` prefix) → listener names it serves. In discovery mode the
   * entries are unanchored regexes; in static mode an exact listener name matches only itself and
   * anything else is a regex (see `createServiceMatcher`).
   */
  serviceMappings: z.record(checked(checkServiceName), z.array(nonEmpty("a listener name or regex")).min(1))
    .default({}),
  /** ACL tags for the node (the Go tailvoy used them for its tsnet node). */
  tags: z.array(checked(checkTag)).default([]),
  /** ACL tags for the Tailscale Services. */
  serviceTags: z.array(checked(checkTag)).default([]),
  /** Node hostname. tailvoy defaulted it to `tailvoy-proxy`; here tailscaled owns the node, so it is only informative. */
  hostname: checked(checkNodeName).optional(),
}).prefault({});

/** `discovery:` block (Envoy Gateway mode), as in the Go tailvoy. Mutually exclusive with `listeners`. */
const DiscoverySchema = z.strictObject({
  /** Envoy admin API URL, e.g. `http://127.0.0.1:19000`. */
  envoyAdmin: checked(checkHttpUrl),
  /** Address where Envoy's discovered listeners accept connections, e.g. `127.0.0.1`. */
  envoyAddress: checked(checkHost),
  /** How often to poll Envoy admin, in milliseconds (written as a duration; default 10s). */
  pollInterval: duration("10s"),
  /** `v2` to send PROXY protocol v2 to Envoy's listeners. */
  proxyProtocol: z.preprocess(emptyAsUnset, z.enum(["v2"]).optional()),
  /** Regex; only discovered listeners whose name matches are exposed. */
  listenerFilter: checked(checkPattern).optional(),
  /** `any`: unadvertise when any cluster has no healthy host; `all`: only when all have none. */
  healthPolicy: z.preprocess(emptyAsUnset, z.enum(HEALTH_POLICIES).default("any")),
  /** Consecutive unhealthy polls before a Service is unadvertised (tailvoy: 0 means the default, 3). */
  unhealthyThreshold: z.preprocess(
    (value) => value === 0 ? undefined : value,
    z.number().int().min(1).default(3),
  ),
});

/** `tailvoy.timeouts:` durations, each written like `"500ms"` and parsed to milliseconds. */
const TimeoutsSchema = z.strictObject({
  /** LocalAPI WhoIs call timeout (default 1s). */
  whois: duration("1s"),
  /** How long a WhoIs answer is reused (default 1s; 0 disables caching). */
  whoisCacheTtl: duration("1s", { allowZero: true }),
  /** Backend connect timeout (default 10s, the Go tailvoy's value). */
  dial: duration("10s"),
  /** Time allowed for a TLS ClientHello to arrive when routing by SNI (default 5s). */
  tlsHello: duration("5s"),
  /** Time given to open connections to finish on shutdown (default 15s; 0 closes at once). */
  drain: duration("15s", { allowZero: true }),
  /** How often long-lived connections are re-authorized (default 10s; 0 disables). */
  recheck: duration("10s", { allowZero: true }),
  /** On shutdown, time between unadvertising our Tailscale Services and draining, so clients move to other replicas (default 5s). */
  unadvertiseGrace: duration("5s", { allowZero: true }),
}).prefault({});

/** `tailvoy:` block: our additions, all optional. */
const TailvoySchema = z.strictObject({
  /** tailscaled LocalAPI unix socket (default `/var/run/tailscale/tailscaled.sock`). */
  localApiSocket: nonEmpty("the tailscaled socket path").default(DEFAULT_LOCALAPI_SOCKET),
  /** Peer capability names whose rules grant access (default `["rajsingh.info/cap/tailvoy"]`). */
  capabilities: z.array(checked(checkCapabilityName)).min(1).default([DEFAULT_CAPABILITY]),
  /** Default ingress for listeners: `serve` (Tailscale Services via tailscaled, default) or `direct` (node address). */
  ingress: z.enum(INGRESS_MODES).default("serve"),
  /** Envoy executable, a path or a name looked up in PATH (default `envoy`). */
  envoyBinary: nonEmpty("the Envoy executable").default("envoy"),
  /** Listen address of our admin server (health, metrics) (default `127.0.0.1:9002`). */
  adminAddress: checked((value) => checkHostPort(value, { allowEmptyHost: true, allowPortZero: true }))
    .default(
      DEFAULT_ADMIN_ADDRESS,
    ),
  /** Timeouts and intervals. */
  timeouts: TimeoutsSchema,
  /**
   * Control server tailscaled logs in to when tailvoy logs it in (TS_AUTHKEY or OAuth), for
   * self-hosted control such as headscale; unset keeps tailscaled's own (Tailscale's by default).
   */
  controlUrl: checked(checkHttpUrl).optional(),
  /** Tailscale API base URL for the OAuth client exchange (default `https://api.tailscale.com`). */
  apiBaseUrl: checked(checkHttpUrl).default("https://api.tailscale.com"),
  /**
   * Accept a serve-ingress connection only from tailscaled's user (default true): the PROXY header such
   * a connection starts with names the caller, so no other local user may open one. Linux only.
   */
  servePeerCheck: z.boolean().default(true),
  /** Decision log: one JSON line per L4 flow (open and close) and per L7 decision. */
  decisionLog: z.strictObject({
    /** Log allowed decisions too (default true); denies are always logged. */
    allows: z.boolean().default(true),
  }).prefault({}),
  /** Identity tokens' signing key and issuer (used when a listener sets `identityToken`). */
  identityToken: TokenKeySchema.optional(),
}).prefault({});

const ConfigShape = z.strictObject({
  /** Tailnet identity and Service mappings. */
  tailscale: TailscaleSchema,
  /** Static listeners by name (standalone mode). */
  listeners: z.record(checked(checkListenerName), ListenerSchema).optional(),
  /** Envoy Gateway mode: discover listeners from Envoy admin instead. */
  discovery: DiscoverySchema.optional(),
  /** Our additions. */
  tailvoy: TailvoySchema,
  /** Our addition: a policy-controlled proxy from the cluster into the tailnet (see `egress.ts`). */
  egress: EgressSchema.optional(),
});

type ParsedShape = z.output<typeof ConfigShape>;
type ParsedRoute = z.output<typeof RouteSchema>;

// Resolve per-listener defaults once, here, so no consumer can forget the udp or catch-all rules.
function normalize(config: ParsedShape) {
  const listeners = Object.fromEntries(
    Object.entries(config.listeners ?? {}).map(([name, { backend, ...listener }]) => {
      const l7 = L7_PROTOCOLS.includes(listener.protocol);
      const routes: ParsedRoute[] = listener.routes ?? [];
      return [name, {
        ...listener,
        ...(l7 ? {} : { backend }),
        routes: l7 && backend !== undefined ? [...routes, { backend }] : routes,
        ingress: listener.ingress ?? (listener.protocol === "udp" ? "direct" : config.tailvoy.ingress),
      }];
    }),
  );
  const { egress: raw, ...rest } = config;
  // No `egress` key at all without an egress block (as the file had none).
  const out: typeof rest & { listeners: typeof listeners; egress?: ReturnType<typeof normalizeEgress> } = {
    ...rest,
    listeners,
  };
  if (raw) out.egress = normalizeEgress(raw, { dial: config.tailvoy.timeouts.dial });
  return out;
}

/**
 * The whole configuration file. Parsing applies defaults, checks cross-field rules and normalizes
 * listeners: every listener has `routes` (possibly empty) and a resolved `ingress`, and on
 * http/https/grpc a listener `backend` becomes a trailing catch-all route.
 * Use {@linkcode parseConfig} for located, human-readable errors.
 */
export const ConfigSchema = ConfigShape
  .superRefine((config, ctx) =>
    checkCrossField(config, (issue) =>
      ctx.addIssue({
        code: "custom",
        path: issue.path,
        message: joinMessage(issue.message, issue.hint),
        params: { at: issue.at, rule: true },
      }))
  )
  .transform(normalize);

/** A parsed, defaulted and normalized configuration. */
export type Config = z.infer<typeof ConfigSchema>;
/** The configuration as written (before defaults and normalization). */
export type ConfigInput = z.input<typeof ConfigSchema>;
/** One parsed listener. */
export type ListenerConfig = Config["listeners"][string];
/** One parsed route. */
export type RouteConfig = ListenerConfig["routes"][number];
/** Parsed `proxyProtocol:` of a tcp/tls listener or tls route. */
export type BackendProxyConfig = NonNullable<ListenerConfig["proxyProtocol"]>;
/** An identity TLV name of `proxyProtocol.tlvs`. */
export type BackendTlv = BackendProxyConfig["tlvs"][number];
/** Parsed `identityToken:` of an http/https/grpc listener. */
export type IdentityTokenConfig = NonNullable<ListenerConfig["identityToken"]>;
/** Parsed `tailvoy.identityToken:` (signing key and issuer). */
export type TokenKeyConfig = NonNullable<Config["tailvoy"]["identityToken"]>;
/** Parsed `tls:` certificate files. */
export type TlsConfig = NonNullable<ListenerConfig["tls"]>;
/** Parsed `discovery:` block. */
export type DiscoveryConfig = NonNullable<Config["discovery"]>;
/** Parsed `tailscale:` block. */
export type TailscaleConfig = Config["tailscale"];
/** Parsed `tailvoy:` block (our additions). */
export type TailvoyConfig = Config["tailvoy"];
/** Listener protocol. */
export type Protocol = ListenerConfig["protocol"];
/** Ingress mode. */
export type IngressMode = ListenerConfig["ingress"];
/** Parsed `egress:` block, normalized (see `normalizeEgress`). */
export type EgressConfig = NonNullable<Config["egress"]>;
/** One parsed egress listener: a proxy (`protocols`) or port-mapped (`target`). */
export type EgressListenerConfig = EgressConfig["listeners"][string];
/** Parsed `credentials:` of an egress listener: `file` or `env`. */
export type EgressCredentialsConfig = NonNullable<EgressListenerConfig["credentials"]>;
/** One parsed egress destination rule. */
export type EgressRuleConfig = EgressConfig["rules"][number];
/** An inclusive port range of `egress.rules[].ports`. */
export type PortRange = NonNullable<EgressRuleConfig["ports"]>[number];
/** A parsed alias target: `port` absent means the port the client asked for. */
export type AliasTarget = EgressConfig["aliases"][string];
