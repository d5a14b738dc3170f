/**
 * The contract between our relay, the Envoy we run and our ext_authz server: what each end writes and
 * the other reads. Change a value here and every end follows.
 *
 * - The relay opens each L7 connection to Envoy with a PROXY v2 header: source = the caller's tailnet
 *   address, destination port = the Tailscale Service the connection came through ({@link ServiceIndex};
 *   0 for the node itself), TLV {@link SECRET_TLV_TYPE} = the per-process secret.
 * - Envoy's proxy_protocol listener filter stores the TLV in connection metadata
 *   ({@link SECRET_METADATA_NAMESPACE}/{@link SECRET_KEY}); a network RBAC filter closes, before any HTTP,
 *   every connection whose TLV is not the secret. So only our relay can name a caller to Envoy.
 * - Envoy's HTTP ext_authz asks our server (a unix socket in a private 0700 directory) about each request,
 *   adding {@link AUTHZ_HEADERS} from the connection (overwriting any client copy) and the listener name.
 *
 * @module
 */

/** PROXY v2 TLV type carrying the relay secret (in the 0xE0-0xEF custom range). */
export const SECRET_TLV_TYPE = 0xe0;

/** Metadata namespace the proxy_protocol filter writes the secret TLV to. */
export const SECRET_METADATA_NAMESPACE = "envoy.filters.listener.proxy_protocol";

/** Metadata key of the secret TLV. */
export const SECRET_KEY = "tailvoy_secret";

/**
 * Headers Envoy adds to each HTTP ext_authz check. `peer` is `%DOWNSTREAM_REMOTE_ADDRESS%` (the PROXY
 * source: `ip:port`, IPv6 in brackets), `local` is `%DOWNSTREAM_LOCAL_ADDRESS%` (the PROXY destination,
 * whose port names the Service), `listener` is the listener's name, a constant of its filter.
 * The request's own `content-type` is never sent as such (see `contentType`).
 */
export const AUTHZ_HEADERS = Object.freeze({
  peer: "x-tailvoy-peer",
  local: "x-tailvoy-local",
  listener: "x-tailvoy-listener",
  /**
   * The request's `content-type` (`%REQ(content-type)%`), under another name: an authz request that
   * itself says `application/grpc` makes Envoy 1.40 turn its own timeout reply into HTTP 200 +
   * grpc-status, which ext_authz reads as an allow (envoyproxy/envoy#32476: gRPC failed open).
   */
  contentType: "x-tailvoy-content-type",
});

/** Prefix of request headers only tailvoy and its Envoy may set: client copies are dropped at the edge. */
export const TAILVOY_HEADER_PREFIX = "x-tailvoy-";

const PRINTABLE = /^[\x21-\x7e]+$/;
const MIN_SECRET_LENGTH = 16;

/** A fresh relay secret: 32 random bytes, base64url (43 printable ASCII characters). */
export function generateSecret(): string {
  const bytes = crypto.getRandomValues(new Uint8Array(32));
  return btoa(String.fromCharCode(...bytes)).replaceAll("+", "-").replaceAll("/", "_").replace(/=+$/, "");
}

/**
 * Why `secret` is unusable, or `undefined`: it must reach Envoy's metadata unchanged (Envoy turns each
 * byte of invalid UTF-8 into "!", so printable ASCII only) and resist guessing. The text names the
 * length, never the value.
 */
export function secretProblem(secret: string): string | undefined {
  if (secret.length < MIN_SECRET_LENGTH) {
    return `Secret of ${secret.length} characters is too short: use at least ${MIN_SECRET_LENGTH}`;
  }
  if (!PRINTABLE.test(secret)) {
    return `Secret of ${secret.length} characters is not printable ASCII: Envoy would alter it in metadata`;
  }
  return undefined;
}

/** Path prefix of the checks Envoy sends (`/check` + the request's own path). */
export const CHECK_PATH_PREFIX = "/check";

/**
 * Tailscale Services as PROXY destination ports, per process: the relay writes {@link portOf}, ext_authz
 * reads {@link serviceAt}. Port 0 is the node itself. Entries are never removed (a reload keeps old ones
 * valid for connections in flight), and there are at most 65,535.
 */
export class ServiceIndex {
  readonly #ports = new Map<string, number>();
  readonly #names: string[] = [""];

  /** The destination port for `svcName` (`svc:NAME`), or 0 for none. */
  portOf(svcName: string | undefined): number {
    if (!svcName) return 0;
    let port = this.#ports.get(svcName);
    if (port === undefined) {
      port = this.#names.length;
      if (port > 65535) throw new Error(`More than 65,535 Tailscale Services: cannot index ${svcName}`);
      this.#ports.set(svcName, port);
      this.#names.push(svcName);
    }
    return port;
  }

  /**
   * The Service at destination `port`: `""` for 0 (the node), `undefined` for a port no Service was
   * given (which a check must deny: it did not come from our relay).
   */
  serviceAt(port: number): string | undefined {
    return Number.isInteger(port) && port >= 0 ? this.#names[port] : undefined;
  }
}
