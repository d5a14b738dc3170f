/**
 * The contract between tailvoy and a tcp/tls backend that opts in with `proxyProtocol`: before any byte
 * of the caller's, the backend reads one PROXY v2 header whose source is the caller's tailnet address,
 * whose destination is this node's tailnet address (of the source's family) and the listener's tailnet
 * port, and which carries the identity TLVs the listener asked for, in the order it listed them.
 *
 * Separate from the relay → Envoy contract (`lib/wire.ts`): that one's secret TLV (0xE0) is never sent to
 * a backend, and these types sit in 0xE8–0xEF, so neither header can be read as the other.
 *
 * @module
 */

import type { BackendTlv } from "../config/mod.ts";
import type { Identity } from "../identity/mod.ts";
import type { ProxyTlv } from "../proxy_protocol/mod.ts";

/**
 * PROXY v2 TLV types of the identity TLVs (values UTF-8; empty when the caller has none): `login` the
 * user's login name (empty for a tagged node), `node` the node's MagicDNS name, `tags` its tags joined
 * with `,` (empty for a user's node). `token` is reserved for the signed identity token (issue #14):
 * not sent yet, and not accepted in a config until it is.
 */
export const BACKEND_TLV_TYPES: Readonly<Record<BackendTlv | "token", number>> = Object.freeze({
  login: 0xe8,
  node: 0xe9,
  tags: 0xea,
  token: 0xeb,
});

const VALUES: Readonly<Record<BackendTlv, (identity: Identity) => string>> = {
  login: (identity) => identity.login ?? "",
  node: (identity) => identity.node,
  tags: (identity) => identity.tags.join(","),
};

const enc = new TextEncoder();

/** The TLVs `names` asks for, describing `identity`, in the order of `names`. */
export function identityTlvs(identity: Identity, names: readonly BackendTlv[]): ProxyTlv[] {
  return names.map((name) => ({ type: BACKEND_TLV_TYPES[name], value: enc.encode(VALUES[name](identity)) }));
}
