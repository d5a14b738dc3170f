/**
 * SNI host_name validation (RFC 6066 §3): an ASCII DNS hostname, never an IP literal.
 *
 * @module
 */

import { parseIp, parseIpv6 } from "../net/ip.ts";
import { ClientHelloError } from "./errors.ts";

const LABEL = /^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/;
const NUMERIC = /^[0-9]+$/;

/**
 * The host name in an SNI `host_name` entry, lower-cased and without a trailing dot; `undefined` for an
 * IP literal (RFC 6066 forbids them, and some clients send them anyway). Throws a `malformed`
 * {@link ClientHelloError} for anything that is not a valid letters-digits-hyphen DNS name, e.g. a NUL
 * byte or non-ASCII text.
 */
export function sniHostName(raw: Uint8Array): string | undefined {
  // 253 characters plus an optional trailing dot.
  if (raw.length > 254) {
    throw new ClientHelloError(
      "malformed",
      `SNI host_name of ${raw.length} bytes is longer than 253 characters`,
    );
  }
  const text = String.fromCharCode(...raw);
  if (parseIp(text) || (text.startsWith("[") && text.endsWith("]") && parseIpv6(text.slice(1, -1)))) {
    return undefined;
  }
  const name = text.toLowerCase().replace(/\.$/, "");
  const labels = name.split(".");
  if (name.length > 253 || !labels.every((label) => LABEL.test(label))) {
    throw new ClientHelloError(
      "malformed",
      `SNI host_name ${JSON.stringify(text)} is not a valid DNS hostname`,
    );
  }
  // A numeric last label is never a real name: an IPv4 address in some non-canonical spelling.
  if (NUMERIC.test(labels[labels.length - 1])) return undefined;
  return name;
}
