/**
 * Identity headers for an allowed request: the Go tailvoy's `X-Tailscale-*` set, plus the headers
 * `tailscale serve` sends (`Tailscale-User-Login`, `Tailscale-User-Name`, and with `acceptAppCaps`
 * `Tailscale-App-Capabilities`), so an app written for either works unchanged behind us.
 *
 * The serve headers match tailscale/tailscale `ipn/ipnlocal/serve.go` (de9ec7ee2) byte for byte:
 * values are RFC 2047 Q-encoded when not plain ASCII (`encTailscaleHeaderValue`, Go's
 * `mime.QEncoding`), and the capability header is Go's `json.Marshal` of a map (keys sorted, no
 * spaces, `<`, `>`, `&`, U+2028 and U+2029 escaped). Golden vectors produced by Go itself are in
 * `tests/fixtures/extauthz/app_caps_golden.json`.
 *
 * Known gaps, all from information WhoIs no longer carries: tailscaled copies each capability value's
 * raw JSON text, while we re-serialise the parsed value, so a value that was not in Go's canonical
 * form (e.g. `1.0`, `1e3`, needless `\u00e9` escapes, integer-like object keys, which JavaScript
 * orders first) can differ in bytes, though never in meaning; and a capability whose value list is
 * JSON `null` is read as `[]` by the LocalAPI client.
 *
 * @module
 */

import type { Identity } from "../identity/mod.ts";
import { OVERRIDE_HEADERS } from "../config/constants.ts";
import { TAILVOY_HEADER_PREFIX } from "../wire.ts";
import type { HeaderValueOption } from "./schema.ts";

/** Header names set on allowed requests (lower case, as Envoy compares them). */
export const IDENTITY_HEADERS: Readonly<
  Record<"user" | "node" | "ip" | "tags" | "login" | "name" | "appCapabilities", string>
> = Object.freeze({
  user: "x-tailscale-user",
  node: "x-tailscale-node",
  ip: "x-tailscale-ip",
  tags: "x-tailscale-tags",
  login: "tailscale-user-login",
  name: "tailscale-user-name",
  appCapabilities: "tailscale-app-capabilities",
});

/**
 * The signed identity token (JWT) on allowed requests of a listener with `identityToken` (lower case).
 * Under {@link TAILVOY_HEADER_PREFIX}, so our Envoy drops any client copy before ext_authz runs.
 */
export const IDENTITY_TOKEN_HEADER = "x-tailvoy-jwt-assertion";

/**
 * Forwarding headers set on every allowed request, overwriting what the client sent (as `tailscale serve`
 * does): `X-Forwarded-For` and `X-Real-IP` are the caller's tailnet address, `X-Forwarded-Host` the Host.
 */
export const FORWARDING_HEADERS: Readonly<Record<"for" | "realIp" | "host", string>> = Object.freeze({
  for: "x-forwarded-for",
  realIp: "x-real-ip",
  host: "x-forwarded-host",
});

/** RFC 7239 `Forwarded`: written by the client, so removed (the `X-Forwarded-*` above replace it). */
export const FORWARDED_HEADER = "forwarded";

export { OVERRIDE_HEADERS, type OverrideHeader } from "../config/constants.ts";

/** The headers removed from every request of a listener that keeps `keep` (lower case). */
export function strippedHeaders(keep: readonly string[] = []): string[] {
  return [FORWARDED_HEADER, ...OVERRIDE_HEADERS.filter((h) => !keep.includes(h))];
}

/** Prefixes of request headers only tailvoy may set; client copies are removed. */
export const RESERVED_HEADER_PREFIXES: readonly string[] = Object.freeze(["x-tailscale-", "tailscale-"]);

// Go mime: an encoded-word is at most 75 bytes, "=?utf-8?q?" and "?=" included.
const MAX_WORD_CONTENT = 75 - "=?UTF-8?q?".length - "?=".length;
const encoder = new TextEncoder();

function qByte(b: number): string {
  if (b === 0x20) return "_";
  if (b >= 0x21 && b <= 0x7e && b !== 0x3d && b !== 0x3f && b !== 0x5f) return String.fromCharCode(b);
  return `=${b.toString(16).toUpperCase().padStart(2, "0")}`;
}

function utf8Length(lead: number): number {
  return lead < 0x80 ? 1 : lead < 0xe0 ? 2 : lead < 0xf0 ? 3 : 4;
}

/**
 * tailscale's `encTailscaleHeaderValue`: `""` for text that is not valid Unicode (a lone surrogate, the
 * JavaScript form of invalid UTF-8), the value itself when it is printable ASCII or tab, otherwise
 * Go's `mime.QEncoding.Encode("utf-8", value)`: encoded-words of at most 75 bytes separated by a
 * space, never splitting a character.
 */
export function encodeHeaderValue(value: string): string {
  if (!value.isWellFormed()) return "";
  let plain = true;
  for (let i = 0; i < value.length; i++) {
    const c = value.charCodeAt(i);
    if ((c < 0x20 || c > 0x7e) && c !== 0x09) {
      plain = false;
      break;
    }
  }
  if (plain) return value;
  const bytes = encoder.encode(value);
  let out = "=?utf-8?q?";
  let wordLength = 0;
  for (let i = 0; i < bytes.length;) {
    const b = bytes[i];
    const literal = b >= 0x20 && b <= 0x7e && b !== 0x3d && b !== 0x3f && b !== 0x5f;
    const charLength = literal ? 1 : utf8Length(b);
    const encodedLength = literal ? 1 : 3 * charLength;
    if (wordLength + encodedLength > MAX_WORD_CONTENT) {
      out += "?= =?utf-8?q?";
      wordLength = 0;
    }
    for (let j = i; j < i + charLength; j++) out += qByte(bytes[j]);
    wordLength += encodedLength;
    i += charLength;
  }
  return `${out}?=`;
}

const GO_ESCAPES: Record<string, string> = {
  "<": "\\u003c",
  ">": "\\u003e",
  "&": "\\u0026",
  "\u2028": "\\u2028",
  "\u2029": "\\u2029",
};

/**
 * JSON text as Go's `json.Marshal` writes it for a value parsed from JSON. `JSON.stringify` already
 * agrees on everything but HTML-sensitive characters, U+2028/U+2029 (escaped by Go) and lone
 * surrogates (Go writes `\ufffd`). Those characters only occur inside strings, so a textual pass is
 * exact; an escaped backslash is matched first so `\\ud800` is left alone.
 */
export function goJson(value: unknown): string {
  return (JSON.stringify(value) ?? "null").replace(
    /\\\\|\\ud[89a-f][0-9a-f]{2}|[<>&\u2028\u2029]/g,
    (m) => m === "\\\\" ? m : m.length === 6 ? "\\ufffd" : GO_ESCAPES[m],
  );
}

/**
 * The `Tailscale-App-Capabilities` value `tailscale serve --accept-app-caps` would send: the caller's
 * capabilities among `accepted`, as `{"<cap>":[<value>,...],...}`, Q-encoded when not ASCII.
 * `undefined` (no header) when the caller holds no capability at all, as serve does; `{}` when it
 * holds some but none of the accepted ones.
 */
export function formatAppCapabilities(
  capMap: Readonly<Record<string, readonly unknown[]>>,
  accepted: readonly string[],
): string | undefined {
  if (Object.keys(capMap).length === 0) return undefined;
  // Go sorts map keys by bytes; capability names are ASCII URLs, where that is code-unit order.
  const names = [...new Set(accepted)].filter((name) => Object.hasOwn(capMap, name)).sort();
  const json = `{${names.map((name) => `${goJson(name)}:${goJson(capMap[name])}`).join(",")}}`;
  return encodeHeaderValue(json);
}

// Control characters would make Envoy reject the mutation (or, upstream, split a header).
function headerSafe(value: string): string {
  // deno-lint-ignore no-control-regex
  return value.replace(/[\x00-\x08\x0a-\x1f\x7f]/g, "");
}

function setHeader(key: string, value: string): HeaderValueOption {
  // `append` present and false overwrites on every Envoy version read (envoy.md §2.4); `append_action`
  // says the same to versions that read only it. Empty values (tagged nodes) are kept, not dropped.
  return {
    header: { key, value },
    append: { value: false },
    append_action: "OVERWRITE_IF_EXISTS_OR_ADD",
    keep_empty_value: true,
  };
}

/** The {@link IDENTITY_TOKEN_HEADER} mutation carrying `token` (a compact JWT: base64url and dots). */
export function identityTokenHeader(token: string): HeaderValueOption {
  return setHeader(IDENTITY_TOKEN_HEADER, token);
}

/** {@link FORWARDING_HEADERS} for an allowed request from `callerIp` to `host`. */
export function forwardingHeaders(callerIp: string, host: string): HeaderValueOption[] {
  return [
    setHeader(FORWARDING_HEADERS.for, callerIp),
    setHeader(FORWARDING_HEADERS.realIp, callerIp),
    setHeader(FORWARDING_HEADERS.host, headerSafe(host)),
  ];
}

/** Inputs of {@link identityHeaders}. */
export interface IdentityHeaderOptions {
  /** The caller's IP, as Envoy reported it. */
  callerIp: string;
  /** Capability names forwarded in `Tailscale-App-Capabilities`; omit for no such header. */
  appCapNames?: readonly string[];
}

/**
 * Header mutations for an allowed request:
 * - `X-Tailscale-User` (login; `""` for a tagged node), `X-Tailscale-Node` (MagicDNS name without the
 *   trailing dot), `X-Tailscale-IP` (caller IP), `X-Tailscale-Tags` (comma-joined), raw as the Go tailvoy sent them;
 * - for user nodes only, `Tailscale-User-Login` and `Tailscale-User-Name`, Q-encoded, as serve does
 *   (serve sends no user headers for tagged nodes; its profile-picture and info headers are not sent:
 *   WhoIs data we keep has no picture URL, and the info link documents serve, not us);
 * - with `appCapNames`, `Tailscale-App-Capabilities` (see {@link formatAppCapabilities}).
 */
export function identityHeaders(identity: Identity, options: IdentityHeaderOptions): HeaderValueOption[] {
  const headers = [
    setHeader(IDENTITY_HEADERS.user, headerSafe(identity.login ?? "")),
    setHeader(IDENTITY_HEADERS.node, headerSafe(identity.node)),
    setHeader(IDENTITY_HEADERS.ip, options.callerIp),
    setHeader(IDENTITY_HEADERS.tags, headerSafe(identity.tags.join(","))),
  ];
  if (identity.tags.length === 0) {
    headers.push(setHeader(IDENTITY_HEADERS.login, encodeHeaderValue(identity.login ?? "")));
    headers.push(setHeader(IDENTITY_HEADERS.name, encodeHeaderValue(identity.displayName ?? "")));
  }
  if (options.appCapNames) {
    const caps = formatAppCapabilities(identity.capMap, options.appCapNames);
    if (caps !== undefined) headers.push(setHeader(IDENTITY_HEADERS.appCapabilities, caps));
  }
  return headers;
}

/**
 * Client-sent headers under {@link RESERVED_HEADER_PREFIXES} or {@link TAILVOY_HEADER_PREFIX} that `set`
 * does not overwrite, for `headers_to_remove`. Envoy's header_mutation filter strips them first in our
 * bootstrap; this also covers an Envoy configured by someone else (Envoy Gateway) and a client spoofing
 * a header we only sometimes set (`Tailscale-User-Login` from a tagged node, {@link IDENTITY_TOKEN_HEADER}
 * on a listener without tokens).
 */
export function spoofedHeaders(
  requestHeaders: Readonly<Record<string, string>> | undefined,
  set: readonly HeaderValueOption[],
  options: { keep?: readonly string[] } = {},
): string[] {
  if (!requestHeaders) return [];
  const ours = new Set(set.map((h) => h.header.key));
  const stripped = new Set(strippedHeaders(options.keep));
  return Object.keys(requestHeaders).filter((key) =>
    !ours.has(key) &&
    (stripped.has(key) || key.startsWith(TAILVOY_HEADER_PREFIX) ||
      RESERVED_HEADER_PREFIXES.some((prefix) => key.startsWith(prefix)))
  );
}
