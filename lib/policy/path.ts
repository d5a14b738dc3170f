/**
 * Request-path canonicalisation. The canonical form is the form route patterns are matched against
 * and, with Envoy's `normalize_path` + `merge_slashes` + `path_with_escaped_slashes_action:
 * REJECT_REQUEST`, the form the backend receives. Anything that could be read two ways is denied
 * with a reason instead of being guessed at.
 *
 * @module
 */

import { quote } from "./text.ts";

/** Result of {@link canonicalizePath}: the canonical path, or why the request target is refused. */
export type PathResult = { ok: true; path: string } | { ok: false; reason: string };

const SLASH = 0x2f;
const BACKSLASH = 0x5c;
const PERCENT = 0x25;
const HEX_DIGITS = "0123456789ABCDEF";

// Per-ASCII-character handling, mirroring Envoy's copy of Chromium's kPathCharLookup
// (source/common/chromium_url/url_canon_path.cc) so our output equals what Envoy forwards.
const COPY = 0; // passed through unchanged
const ESCAPE = 1; // Envoy percent-encodes it: space " < > ^ ` { | }
const CONTROL = 2; // NUL and other control characters: refused
const SPECIAL = 3; // '%' and '\' need their own handling
const ASCII_CLASS = new Uint8Array(128);
for (let c = 0; c < 0x20; c++) ASCII_CLASS[c] = CONTROL;
ASCII_CLASS[0x7f] = CONTROL;
for (const ch of ` "<>^\`{|}`) ASCII_CLASS[ch.charCodeAt(0)] = ESCAPE;
ASCII_CLASS[PERCENT] = SPECIAL;
ASCII_CLASS[BACKSLASH] = SPECIAL;

// RFC 3986 unreserved characters: the only escapes that are decoded (Envoy does the same).
const UNRESERVED = new Uint8Array(128);
for (const ch of "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~") {
  UNRESERVED[ch.charCodeAt(0)] = 1;
}

const HEX_VALUE = new Int8Array(128).fill(-1);
for (let i = 0; i < 16; i++) {
  HEX_VALUE[HEX_DIGITS.charCodeAt(i)] = i;
  HEX_VALUE[HEX_DIGITS.toLowerCase().charCodeAt(i)] = i;
}

// Fast path: only characters Envoy copies unchanged, no empty segment, and no "." / ".." segment
// (nor one followed by ";" parameters). Such a path is already canonical.
const CANONICAL_FAST = /^(?:\/(?!\.\.?(?:[/;]|$))[A-Za-z0-9\-._~!$&'()*+,;=:@[\]]+)*\/?$/;
// A "." or ".." segment carrying path parameters: Tomcat/Spring strip ";…" and then treat it as a
// dot-segment, Envoy does not, so "/public/..;/admin" would reach /admin behind such a backend.
const DOT_WITH_PARAMS = /^\.\.?(?:;|%3B)/;
const ABSOLUTE_FORM = /^[A-Za-z][A-Za-z0-9+.-]*:/;
const UTF8 = new TextDecoder("utf-8", { fatal: true });

function fail(reason: string): PathResult {
  return { ok: false, reason };
}

function hexValue(code: number): number {
  return code < 128 ? HEX_VALUE[code] : -1; // NaN (past the end) is not < 128
}

function percent(byte: number): string {
  return `%${HEX_DIGITS[byte >> 4]}${HEX_DIGITS[byte & 15]}`;
}

/**
 * Canonicalises a request target (`:path`, as Envoy puts it in `CheckRequest.attributes.request.http.path`).
 *
 * Steps: the query and fragment are removed; escapes of unreserved characters (ALPHA DIGIT `-._~`)
 * are decoded and every other valid escape is kept with upper-case hex; characters Envoy escapes
 * (space `"<>^\`{|}` and non-ASCII) are percent-encoded as UTF-8; dot-segments are resolved
 * (RFC 3986 remove_dot_segments, `..` above the root clamps to `/` like Envoy); repeated slashes
 * are merged.
 *
 * Refused (`ok: false` with a reason): an empty, `*` or absolute-form target; `%2F`, `%5C`, a
 * literal `\`; NUL or a control character (literal anywhere in the target, or percent-encoded in
 * the path); an invalid escape (`%zz`, `%2`); a percent-encoded byte sequence that is not UTF-8
 * (overlong forms such as `%C0%AE`); a `.`/`..` segment with `;` parameters; and a `..` that would
 * remove an empty segment (`/a//../b`), whose meaning depends on whether slashes are merged first.
 */
export function canonicalizePath(raw: string): PathResult {
  if (raw.length === 0) return fail("empty request path");
  if (raw.charCodeAt(0) !== SLASH) {
    if (raw === "*") return fail('asterisk-form request target "*" has no path');
    if (ABSOLUTE_FORM.test(raw)) return fail(`absolute-form request target ${quote(raw)} is not a path`);
    return fail(`request path ${quote(raw)} does not start with "/"`);
  }
  // One scan: control characters are refused in the whole target (the query reaches the backend
  // too), and the path ends at the first "?" or "#".
  let end = raw.length;
  for (let i = 0; i < raw.length; i++) {
    const c = raw.charCodeAt(i);
    if (c < 0x20 || c === 0x7f) {
      return fail(
        c === 0 ? "NUL character in request target" : `control character ${percent(c)} in request target`,
      );
    }
    if (end === raw.length && (c === 0x3f || c === 0x23)) end = i;
  }
  const path = end === raw.length ? raw : raw.slice(0, end);
  if (CANONICAL_FAST.test(path)) return { ok: true, path };
  return canonicalizeSlow(path);
}

function canonicalizeSlow(path: string): PathResult {
  // 1. Split on "/" while normalising escapes. Decoding never yields "/" (%2F is refused), so the
  //    segment boundaries seen here are the ones every later reader sees.
  const segments: string[] = [];
  let segment = "";
  let highBytes = false;
  for (let i = 1; i < path.length; i++) {
    const c = path.charCodeAt(i);
    if (c === SLASH) {
      segments.push(segment);
      segment = "";
    } else if (c >= 0x80) {
      const cp = path.codePointAt(i)!;
      if (cp >= 0xd800 && cp <= 0xdfff) return fail("unpaired UTF-16 surrogate in path");
      const ch = String.fromCodePoint(cp);
      segment += encodeURIComponent(ch); // UTF-8, upper-case hex
      i += ch.length - 1;
      highBytes = true;
    } else {
      const cls = ASCII_CLASS[c];
      if (cls === COPY) segment += path[i];
      else if (cls === ESCAPE) segment += percent(c);
      else if (c === BACKSLASH) return fail('backslash "\\" in path (some servers read it as "/")');
      else { // "%"
        const hi = hexValue(path.charCodeAt(i + 1));
        const lo = hexValue(path.charCodeAt(i + 2));
        if (hi < 0 || lo < 0) return fail(`invalid percent-encoding ${quote(path.slice(i, i + 3))} in path`);
        const byte = hi * 16 + lo;
        i += 2;
        if (byte === 0) return fail("encoded NUL %00 in path");
        if (byte === SLASH) return fail("encoded slash %2F in path");
        if (byte === BACKSLASH) return fail("encoded backslash %5C in path");
        if (byte < 0x20 || byte === 0x7f) return fail(`encoded control character ${percent(byte)} in path`);
        if (byte < 0x80 && UNRESERVED[byte] === 1) segment += String.fromCharCode(byte);
        else {
          segment += percent(byte);
          if (byte >= 0x80) highBytes = true;
        }
      }
    }
  }
  segments.push(segment);

  // 2. Resolve dot-segments on the decoded segments ("%2e%2e" is ".." by now), clamping at the root.
  const out: string[] = [];
  let dotAtEnd = false;
  for (let k = 0; k < segments.length; k++) {
    const s = segments[k];
    if (s === "." || s === "..") {
      // Popping an empty segment means "//.." : merge-then-resolve and resolve-then-merge differ.
      if (s === ".." && out.pop() === "") {
        return fail(
          '".." after an empty segment ("//..") is ambiguous: its target depends on whether slashes are merged first',
        );
      }
      dotAtEnd = k === segments.length - 1; // "/a/b/.." -> "/a/", as RFC 3986 and Envoy
      continue;
    }
    if (DOT_WITH_PARAMS.test(s)) return fail(`dot-segment with parameters ${quote(s)} in path`);
    out.push(s);
  }

  // 3. Merge slashes: drop empty segments, keep a single trailing slash.
  const trailing = dotAtEnd || (out.length > 0 && out[out.length - 1] === "");
  const parts = out.filter((s) => s !== "");
  const canonical = parts.length === 0 ? "/" : `/${parts.join("/")}${trailing ? "/" : ""}`;

  if (highBytes && !isUtf8Escaped(canonical)) {
    return fail("percent-encoded bytes in path are not valid UTF-8 (e.g. an overlong %C0%AE)");
  }
  return { ok: true, path: canonical };
}

// Checks that the bytes a server gets by percent-decoding `path` form valid UTF-8; decoders that
// accept overlong forms would otherwise turn %C0%AE into ".".
function isUtf8Escaped(path: string): boolean {
  const bytes = new Uint8Array(path.length);
  let n = 0;
  for (let i = 0; i < path.length; i++) {
    const c = path.charCodeAt(i);
    if (c === PERCENT) {
      bytes[n++] = hexValue(path.charCodeAt(i + 1)) * 16 + hexValue(path.charCodeAt(i + 2));
      i += 2;
    } else {
      bytes[n++] = c;
    }
  }
  try {
    UTF8.decode(bytes.subarray(0, n));
    return true;
  } catch {
    return false;
  }
}
