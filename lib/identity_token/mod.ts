/**
 * Identity tokens: a JWT tailvoy signs for each allowed request of a listener with `identityToken`,
 * sent to the backend in `X-Tailvoy-Jwt-Assertion` (as Pomerium, Cloudflare Access and Google IAP do),
 * so a backend can check who is calling without trusting the network path. Backends verify it against
 * the JWKS the admin server publishes at `/.well-known/jwks.json` (see `keys.ts` for the keys).
 *
 * Claims: `iss` (`https://<this node's MagicDNS name>/`), `aud`, `sub` (`user:<login>` for a user's
 * node, `node:<stable id>` for a tagged one), `iat`, `nbf`, `exp`, `jti`, and `login`, `name` (users
 * only), `node`, `tags`, `addresses`, `tailnet`, `rule` (the grant rule that allowed the request;
 * absent, with `shadow: true`, when a shadow listener let a denied request through).
 *
 * Cost: signing takes about half a millisecond, so a token is signed once per (identity, audience,
 * lifetime, rule) and reused until half its lifetime has passed, from a bounded cache. A cached token
 * is returned synchronously: the allow path pays one string key and one Map lookup.
 *
 * @module
 */

import { type JWTPayload, SignJWT } from "jose";
import { type Config, L7_PROTOCOLS, TOKEN_ALGORITHMS, type TokenKeyConfig } from "../config/mod.ts";
import type { Identity } from "../identity/mod.ts";
import type { Status } from "../localapi/mod.ts";
import { getLogger } from "../log.ts";
import type { RuleRef } from "../policy/mod.ts";
import {
  generateSigningKey,
  type JsonWebKeySet,
  KeyRing,
  loadSigningKey,
  type SigningKey,
  type TokenAlgorithm,
} from "./keys.ts";

export {
  generateSigningKey,
  type JsonWebKeySet,
  KeyRing,
  loadSigningKey,
  type SigningKey,
  type TokenAlgorithm,
  TokenKeyError,
} from "./keys.ts";

/** Path of the JWKS on the admin server. */
export const JWKS_PATH = "/.well-known/jwks.json";

/** What one token is about. */
export interface TokenRequest {
  /** The caller. */
  identity: Identity;
  /** The token's `aud`. */
  audience: string;
  /** How long the token is valid, in milliseconds (whole seconds count). */
  lifetimeMs: number;
  /** The grant rule that allowed the request. */
  rule?: RuleRef;
  /** A shadow listener let through a request the policy denies (there is no rule then). */
  shadow?: boolean;
}

/** Signs identity tokens (the judge's view of {@link IdentityTokens}). */
export interface TokenSigner {
  /** A token for `request`: a cached one synchronously, else a promise of a fresh one. */
  token(request: TokenRequest): string | Promise<string>;
}

/** The issuing side of every token: who signs, and in which tailnet. */
export interface TokenContext {
  /** `iss`: an https URL. */
  issuer: string;
  /** `tailnet`: the tailnet's MagicDNS suffix (e.g. `tailnet.ts.net`); `""` when unknown. */
  tailnet: string;
}

/** The token's `sub`: `user:<login>` (or `user:<id>`) for a user's node, `node:<stable id>` otherwise. */
export function subjectOf(identity: Identity): string {
  if (identity.tags.length === 0) {
    if (identity.login) return `user:${identity.login}`;
    if (identity.userId) return `user:${identity.userId}`;
  }
  return `node:${identity.nodeId}`;
}

function ruleClaim(ref: RuleRef): { capability: string; index: number; value: unknown } {
  let value: unknown = ref.json;
  try {
    value = JSON.parse(ref.json);
  } catch {
    // Cut at 2000 characters by the policy engine: the text is all there is.
  }
  return { capability: ref.capName, index: ref.index, value };
}

/** The claims of one token issued at `nowMs` (epoch milliseconds) with id `jti`. */
export function tokenClaims(
  request: TokenRequest,
  context: TokenContext,
  at: { nowMs: number; jti: string },
): JWTPayload {
  const { identity } = request;
  const iat = Math.floor(at.nowMs / 1000);
  const user = identity.tags.length === 0;
  return {
    iss: context.issuer,
    aud: request.audience,
    sub: subjectOf(identity),
    iat,
    nbf: iat,
    exp: iat + Math.max(1, Math.floor(request.lifetimeMs / 1000)),
    jti: at.jti,
    ...(user && identity.login ? { login: identity.login } : {}),
    ...(user && identity.displayName ? { name: identity.displayName } : {}),
    node: identity.node,
    tags: identity.tags,
    addresses: identity.ips,
    ...(context.tailnet ? { tailnet: context.tailnet } : {}),
    ...(request.rule ? { rule: ruleClaim(request.rule) } : {}),
    ...(request.shadow ? { shadow: true } : {}),
  };
}

/**
 * The issuer and tailnet of this node: `iss` is `issuer` when configured, else
 * `https://<Self.DNSName without the dot>/`. Throws when neither is known (no MagicDNS name).
 */
export function tokenContext(
  status: Pick<Status, "Self" | "CurrentTailnet">,
  issuer?: string,
): TokenContext {
  const host = (status.Self?.DNSName ?? "").replace(/\.$/, "").toLowerCase();
  const tailnet = status.CurrentTailnet?.MagicDNSSuffix?.replace(/\.$/, "") ||
    (host.includes(".") ? host.slice(host.indexOf(".") + 1) : "");
  if (issuer) return { issuer, tailnet };
  if (!host) {
    throw new Error(
      "Cannot name the identity token issuer: tailscaled reported no MagicDNS name for this node " +
        "(Self.DNSName); set tailvoy.identityToken.issuer",
    );
  }
  return { issuer: `https://${host}/`, tailnet };
}

/** Whether `config` needs a signing key: a listener sends tokens, or a key file is configured. */
export function tokensWanted(config: Pick<Config, "listeners" | "tailvoy">): boolean {
  return config.tailvoy.identityToken?.keyFile !== undefined ||
    Object.values(config.listeners).some((l) => L7_PROTOCOLS.includes(l.protocol) && l.identityToken);
}

/** Options of {@link IdentityTokens}. */
export interface IdentityTokensOptions {
  /** Most tokens kept; the oldest go first. Default 10000. */
  maxEntries?: number;
  /** Wall clock in epoch milliseconds (tokens carry times), for tests. Default `Date.now`. */
  now?: () => number;
}

/** How {@link IdentityTokens.configure} changed the signing key. */
export type KeyChange = "loaded" | "generated" | "rotated" | "kept";

interface Entry {
  token: string;
  /** When to sign a fresh one: half the lifetime after issue. */
  refreshAt: number;
}

const log = getLogger("token");

// The claims an identity contributes, as one string, built once per identity object (the resolver
// shares one object per caller for its TTL).
const identityKeys = new WeakMap<Identity, string>();

function identityKey(identity: Identity): string {
  let key = identityKeys.get(identity);
  if (key === undefined) {
    key = JSON.stringify([
      identity.nodeId,
      identity.login,
      identity.userId,
      identity.displayName,
      identity.node,
      identity.tags,
      identity.ips,
    ]);
    identityKeys.set(identity, key);
  }
  return key;
}

function cacheKey(request: TokenRequest): string {
  const rule = request.rule
    ? `${request.rule.capName}\u0000${request.rule.index}\u0000${request.rule.json}`
    : request.shadow
    ? "shadow"
    : "";
  return `${identityKey(request.identity)}\u0000${request.audience}\u0000${request.lifetimeMs}\u0000${rule}`;
}

/** Issues identity tokens: the signing keys, the issuer, and the cache of signed tokens. */
export class IdentityTokens implements TokenSigner {
  /** The signing key and the previous one (published in the JWKS). */
  readonly keys: KeyRing = new KeyRing();
  /** Counters, for tests and the bench: tokens served from the cache, and tokens signed. */
  readonly stats = { hits: 0, signed: 0 };
  readonly #maxEntries: number;
  readonly #now: () => number;
  readonly #cache = new Map<string, Entry>();
  readonly #inflight = new Map<string, Promise<string>>();
  #context?: TokenContext;
  // Bumped when the key or issuer changes: tokens signed before are not cached.
  #generation = 0;

  /** An issuer without a key; {@link configure} gives it one. */
  constructor(options: IdentityTokensOptions = {}) {
    this.#maxEntries = options.maxEntries ?? 10_000;
    this.#now = options.now ?? Date.now;
  }

  /**
   * Applies `settings` (from `tailvoy.identityToken`): {@link nextKey}, then {@link use} with the
   * issuer from `status` or the settings. Rejects, changing nothing, on a key file that cannot be used
   * ({@link TokenKeyError}) or an issuer that cannot be named.
   */
  async configure(
    settings: TokenKeyConfig | undefined,
    status: Pick<Status, "Self" | "CurrentTailnet">,
  ): Promise<KeyChange> {
    const context = tokenContext(status, settings?.issuer);
    return this.use(await this.nextKey(settings), context);
  }

  /**
   * The key `settings` asks for: read from its key file (again on each call, so a replaced file is
   * seen), else the in-memory key already in use, else a new one. Rejects with a
   * {@link TokenKeyError} naming the file and the fix when the file cannot be used.
   */
  async nextKey(settings: TokenKeyConfig | undefined): Promise<SigningKey> {
    const alg: TokenAlgorithm = settings?.algorithm ?? TOKEN_ALGORITHMS[0];
    const current = this.keys.current;
    if (settings?.keyFile !== undefined) return await loadSigningKey(settings.keyFile, alg);
    if (current && current.file === undefined && current.alg === alg) return current;
    return await generateSigningKey(alg);
  }

  /**
   * Signs with `key` from now on (the current key, if another, stays in the JWKS as the previous) and
   * issues tokens in `context`; tokens cached under another key or issuer are dropped. Logs the change.
   */
  use(key: SigningKey, context: TokenContext): KeyChange {
    const current = this.keys.current;
    const rotated = this.keys.rotate(key);
    if (rotated || context.issuer !== this.#context?.issuer || context.tailnet !== this.#context.tailnet) {
      this.#context = context;
      this.#cache.clear();
      this.#generation++;
    }
    const change: KeyChange = !rotated ? "kept" : current ? "rotated" : key.file ? "loaded" : "generated";
    const props = {
      kid: key.kid,
      alg: key.alg,
      file: key.file,
      previous: current?.kid,
      issuer: context.issuer,
    };
    if (change === "loaded") {
      log.info("identity tokens: signing with {alg} key {kid} from {file}, issuer {issuer}", props);
    } else if (change === "generated") {
      log.info(
        "identity tokens: signing with {alg} key {kid}, generated at start (kept in memory only: tokens " +
          "signed before a restart stop verifying; set tailvoy.identityToken.keyFile to keep a key), issuer {issuer}",
        props,
      );
    } else if (change === "rotated") {
      log.info(
        "identity tokens: rotated to {alg} key {kid}{file}; the previous key {previous} stays in the JWKS",
        { ...props, file: key.file ? ` from ${key.file}` : " (generated)" },
      );
    }
    return change;
  }

  /** The issuer and tailnet tokens carry; `undefined` before {@link configure}. */
  get context(): TokenContext | undefined {
    return this.#context;
  }

  /** The JWKS to publish (current and previous key); `undefined` before there is a key. */
  jwks(): JsonWebKeySet | undefined {
    return this.keys.jwks();
  }

  /** Number of cached tokens. */
  get size(): number {
    return this.#cache.size;
  }

  /**
   * A token for `request`: the cached one while less than half its lifetime has passed (returned
   * synchronously), else a freshly signed one (concurrent requests for the same token share one
   * signature). Throws before {@link configure} has given it a key.
   */
  token(request: TokenRequest): string | Promise<string> {
    const key = this.keys.current;
    const context = this.#context;
    if (!key || !context) {
      throw new Error("Identity tokens are on but no signing key is loaded: this is a bug in tailvoy");
    }
    const id = cacheKey(request);
    const now = this.#now();
    const hit = this.#cache.get(id);
    if (hit !== undefined && now < hit.refreshAt) {
      this.stats.hits++;
      return hit.token;
    }
    const pending = this.#inflight.get(id);
    if (pending) return pending;
    const generation = this.#generation;
    const signing = this.#sign(request, key, context, now).then((token) => {
      if (generation === this.#generation) {
        this.#store(id, { token, refreshAt: now + request.lifetimeMs / 2 });
      }
      return token;
    }).finally(() => this.#inflight.delete(id));
    this.#inflight.set(id, signing);
    return signing;
  }

  async #sign(request: TokenRequest, key: SigningKey, context: TokenContext, nowMs: number): Promise<string> {
    const claims = tokenClaims(request, context, { nowMs, jti: crypto.randomUUID() });
    const token = await new SignJWT(claims)
      .setProtectedHeader({ alg: key.alg, kid: key.kid, typ: "JWT" })
      .sign(key.privateKey);
    this.stats.signed++;
    return token;
  }

  #store(id: string, entry: Entry): void {
    this.#cache.delete(id);
    if (this.#cache.size >= this.#maxEntries) {
      // Maps iterate in insertion order, and a refreshed token is re-inserted: the first is the oldest.
      const oldest = this.#cache.keys().next();
      if (!oldest.done) this.#cache.delete(oldest.value);
    }
    this.#cache.set(id, entry);
  }
}
