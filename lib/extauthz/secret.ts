/**
 * The per-process secret that proves a connection came through our relay: the relay puts it in a
 * PROXY v2 TLV, Envoy's proxy_protocol listener filter stores it in connection metadata, and
 * ext_authz forwards that metadata to us.
 *
 * Verified on Envoy 1.40: the TLV value arrives as a `google.protobuf.Value` *string*
 * (`metadata_context.filter_metadata[namespace].fields[key].stringValue`), byte for byte when it is
 * valid UTF-8; each byte of an invalid UTF-8 sequence becomes "!". A secret is therefore printable
 * ASCII, which {@link generateSecret} guarantees and {@link checkSecret} enforces.
 *
 * @module
 */

import { timingSafeEqual } from "node:crypto";

/** PROXY v2 TLV type carrying the secret (in the 0xE0-0xEF custom range). */
export const DEFAULT_SECRET_TLV_TYPE = 0xe0;

/** Metadata key the proxy_protocol filter rule stores the TLV under. */
export const DEFAULT_SECRET_KEY = "tailvoy_secret";

/**
 * PROXY v2 TLV type carrying the Tailscale Service (`svc:NAME`) a connection arrived through, next to
 * the secret; only believed when the secret in the same header matches.
 */
export const SERVICE_TLV_TYPE = 0xe1;

/** Metadata key Envoy stores the Service TLV under. */
export const SERVICE_KEY = "tailvoy_svc";

/** Metadata namespace the rule writes to, and ext_authz's `metadata_context_namespaces` forwards. */
export const SECRET_METADATA_NAMESPACE = "envoy.filters.listener.proxy_protocol";

const PRINTABLE = /^[\x21-\x7e]+$/;
const MIN_LENGTH = 16;

/** A fresh secret: 32 random bytes, base64url (43 printable ASCII characters). */
export function generateSecret(): string {
  const bytes = crypto.getRandomValues(new Uint8Array(32));
  return btoa(String.fromCharCode(...bytes)).replaceAll("+", "-").replaceAll("/", "_").replace(/=+$/, "");
}

/**
 * Why `secret` is unusable, or `undefined`: it must round-trip through Envoy unchanged and be long
 * enough to resist guessing. The text names the length, never the value.
 */
export function secretProblem(secret: string): string | undefined {
  if (secret.length < MIN_LENGTH) {
    return `Secret of ${secret.length} characters is too short: use at least ${MIN_LENGTH}`;
  }
  if (!PRINTABLE.test(secret)) {
    return `Secret of ${secret.length} characters is not printable ASCII: Envoy would alter it in metadata`;
  }
  return undefined;
}

/** Throws the {@link secretProblem} of `secret`, if any. */
export function checkSecret(secret: string): void {
  const problem = secretProblem(secret);
  if (problem) throw new Error(problem);
}

const encoder = new TextEncoder();

/** Compares a presented value with the expected secret in time independent of where they differ. */
export function secretMatches(presented: string | undefined, expected: Uint8Array): boolean {
  if (presented === undefined) return false;
  const bytes = encoder.encode(presented);
  // Compare something of the right length either way, so a length mismatch costs the same.
  const same = bytes.length === expected.length;
  return timingSafeEqual(same ? bytes : expected, expected) && same;
}
