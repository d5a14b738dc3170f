/**
 * Unit tests of identity tokens (lib/identity_token): the claims for users and tagged nodes, the cache
 * (reused until half the lifetime, bounded, one signature for concurrent misses), key files (every kind
 * of bad file named with its fix), rotation (the previous key stays in the JWKS), the config shape, and
 * the judge adding the header (and removing client copies). Keys are made here with WebCrypto, so no
 * openssl is needed; tokens are checked with jose as a backend would.
 */

import assert from "node:assert/strict";
import { join } from "node:path";
import { createLocalJWKSet, decodeProtectedHeader, jwtVerify } from "jose";
import { ConfigError, parseConfig } from "../../lib/config/mod.ts";
import { type CheckInput, judge, type ListenerSettings } from "../../lib/extauthz/mod.ts";
import { type Identity, IdentityResolver } from "../../lib/identity/mod.ts";
import {
  IdentityTokens,
  type KeyChange,
  KeyRing,
  loadSigningKey,
  subjectOf,
  type TokenAlgorithm,
  tokenClaims,
  tokenContext,
  TokenKeyError,
  type TokenRequest,
  tokensWanted,
} from "../../lib/identity_token/mod.ts";
import type { WhoIsResponse } from "../../lib/localapi/mod.ts";
import type { RuleRef } from "../../lib/policy/mod.ts";

const CAP = "rajsingh.info/cap/tailvoy";
const STATUS = {
  Self: { DNSName: "gw.tailnet.ts.net.", HostName: "gw", TailscaleIPs: [], Tags: [] },
  CurrentTailnet: { MagicDNSSuffix: "tailnet.ts.net" },
};
const ISSUER = "https://gw.tailnet.ts.net/";

const ALICE: Identity = {
  login: "alice@example.com",
  displayName: "Alice Zoë",
  userId: "7",
  node: "alice.tailnet.ts.net",
  nodeId: "nALICE",
  tags: [],
  ips: ["100.64.0.2", "fd7a:115c:a1e0::2"],
  capMap: {},
  rules: [],
  malformed: [],
};
const CI: Identity = {
  node: "ci.tailnet.ts.net",
  nodeId: "nCI",
  tags: ["tag:ci"],
  ips: ["100.64.0.3"],
  capMap: {},
  rules: [],
  malformed: [],
};
const RULE: RuleRef = { capName: CAP, index: 0, json: '{"listeners":["web"],"routes":["/api/*"]}' };

function request(overrides: Partial<TokenRequest> = {}): TokenRequest {
  return { identity: ALICE, audience: "web", lifetimeMs: 300_000, rule: RULE, ...overrides };
}

async function tempDir(): Promise<string> {
  return await Deno.makeTempDir({ prefix: "tailvoy-token-test-" });
}

function pem(label: string, der: ArrayBuffer): string {
  const b64 = btoa(String.fromCharCode(...new Uint8Array(der)));
  return `-----BEGIN ${label}-----\n${b64.match(/.{1,64}/g)!.join("\n")}\n-----END ${label}-----\n`;
}

type KeySpec = "P-256" | "P-384" | "Ed25519" | "RSA";

/** A PKCS#8 PEM private key (and its SPKI public key) of `spec`, made with WebCrypto. */
async function makeKey(spec: KeySpec): Promise<{ privatePem: string; publicPem: string }> {
  const params = spec === "Ed25519" ? { name: "Ed25519" } : spec === "RSA"
    ? {
      name: "RSASSA-PKCS1-v1_5",
      modulusLength: 2048,
      publicExponent: new Uint8Array([1, 0, 1]),
      hash: "SHA-256",
    }
    : { name: "ECDSA", namedCurve: spec };
  const pair = await crypto.subtle.generateKey(params, true, ["sign", "verify"]) as CryptoKeyPair;
  return {
    privatePem: pem("PRIVATE KEY", await crypto.subtle.exportKey("pkcs8", pair.privateKey)),
    publicPem: pem("PUBLIC KEY", await crypto.subtle.exportKey("spki", pair.publicKey)),
  };
}

async function writeKey(dir: string, name: string, spec: KeySpec): Promise<string> {
  const file = join(dir, name);
  await Deno.writeTextFile(file, (await makeKey(spec)).privatePem);
  return file;
}

async function verify(tokens: IdentityTokens, token: string, audience = "web", currentDate?: Date) {
  return await jwtVerify(token, createLocalJWKSet(tokens.jwks()!), { issuer: ISSUER, audience, currentDate });
}

async function configured(
  options: { now?: () => number; maxEntries?: number; algorithm?: TokenAlgorithm; keyFile?: string } = {},
): Promise<IdentityTokens> {
  const tokens = new IdentityTokens({ now: options.now, maxEntries: options.maxEntries });
  await tokens.configure({ algorithm: options.algorithm ?? "ES256", keyFile: options.keyFile }, STATUS);
  return tokens;
}

// ---------------------------------------------------------------------------------------------
// Claims

Deno.test("claims: a user's token names her, the rule, the node and the tailnet; jose verifies it", async () => {
  const tokens = await configured();
  const token = await tokens.token(request());
  const { payload, protectedHeader } = await verify(tokens, token);
  assert.equal(protectedHeader.alg, "ES256");
  assert.equal(protectedHeader.typ, "JWT");
  assert.equal(protectedHeader.kid, tokens.keys.current!.kid);
  const { iat, nbf, exp, jti, ...rest } = payload;
  assert.equal(nbf, iat);
  assert.equal(exp! - iat!, 300);
  assert.match(String(jti), /^[0-9a-f-]{36}$/);
  assert.deepEqual(rest, {
    iss: ISSUER,
    aud: "web",
    sub: "user:alice@example.com",
    login: "alice@example.com",
    name: "Alice Zoë",
    node: "alice.tailnet.ts.net",
    tags: [],
    addresses: ["100.64.0.2", "fd7a:115c:a1e0::2"],
    tailnet: "tailnet.ts.net",
    rule: { capability: CAP, index: 0, value: { listeners: ["web"], routes: ["/api/*"] } },
  });
});

Deno.test("claims: a tagged node is node:<stable id>, with tags and no user claims", () => {
  const claims = tokenClaims(request({ identity: CI, audience: "api" }), { issuer: ISSUER, tailnet: "t" }, {
    nowMs: 1_700_000_000_500,
    jti: "j",
  });
  assert.equal(claims.sub, "node:nCI");
  assert.deepEqual(claims.tags, ["tag:ci"]);
  assert.equal(claims.login, undefined);
  assert.equal(claims.name, undefined);
  assert.equal(claims.iat, 1_700_000_000, "whole seconds");
  assert.equal(claims.exp, 1_700_000_300);
  assert.equal(claims.aud, "api");
  // Even if WhoIs gave a tagged node a user, it is not who the node is.
  assert.equal(subjectOf({ ...CI, login: "owner@example.com" }), "node:nCI");
});

Deno.test("claims: a user without a login is user:<id>; a shadow allow has no rule and says so", () => {
  assert.equal(subjectOf({ ...ALICE, login: undefined }), "user:7");
  assert.equal(subjectOf({ ...ALICE, login: undefined, userId: undefined }), "node:nALICE");
  const claims = tokenClaims(request({ rule: undefined, shadow: true }), { issuer: ISSUER, tailnet: "" }, {
    nowMs: 0,
    jti: "j",
  });
  assert.equal(claims.rule, undefined);
  assert.equal(claims.shadow, true);
  assert.equal(claims.tailnet, undefined, "no tailnet known: no claim");
  const cut = tokenClaims(request({ rule: { ...RULE, json: '{"routes":["/a' } }), {
    issuer: ISSUER,
    tailnet: "",
  }, { nowMs: 0, jti: "j" });
  assert.deepEqual(cut.rule, { capability: CAP, index: 0, value: '{"routes":["/a' }, "cut JSON stays text");
});

Deno.test("issuer: this node's MagicDNS name as an https URL, or the configured one; none is an error", () => {
  assert.deepEqual(tokenContext(STATUS), { issuer: ISSUER, tailnet: "tailnet.ts.net" });
  assert.deepEqual(tokenContext({ Self: { ...STATUS.Self, DNSName: "GW.Other.ts.net." } }), {
    issuer: "https://gw.other.ts.net/",
    tailnet: "other.ts.net",
  });
  assert.equal(tokenContext(STATUS, "https://id.example.com").issuer, "https://id.example.com");
  assert.throws(
    () => tokenContext({ Self: { ...STATUS.Self, DNSName: "" } }),
    /set tailvoy\.identityToken\.issuer/,
  );
});

// ---------------------------------------------------------------------------------------------
// Cache

Deno.test("cache: one signature per identity, audience and rule, reused until half the lifetime", async () => {
  let now = 1_700_000_000_000;
  const tokens = await configured({ now: () => now });
  const first = await tokens.token(request());
  assert.equal(tokens.stats.signed, 1);
  const again = tokens.token(request());
  assert.equal(typeof again, "string", "a cached token is returned synchronously");
  assert.equal(again, first);
  now += 149_000;
  assert.equal(tokens.token(request()), first, "still under half of 5 min");
  assert.equal(await tokens.token(request({ audience: "other" })) === first, false, "another audience");
  assert.equal(await tokens.token(request({ rule: { ...RULE, index: 1 } })) === first, false, "another rule");
  assert.equal(await tokens.token(request({ identity: CI })) === first, false, "another caller");
  assert.equal(
    await tokens.token(request({ identity: { ...ALICE, tags: ["tag:x"] } })) === first,
    false,
    "the same node with other claims",
  );
  assert.equal(tokens.token(request({ identity: { ...ALICE } })), first, "an equal identity object hits");
  assert.equal(tokens.stats.signed, 5);
  now += 1_001;
  const fresh = await tokens.token(request());
  assert.notEqual(fresh, first, "half the lifetime has passed: signed again");
  assert.equal(tokens.stats.signed, 6);
  const { payload } = await verify(tokens, fresh, "web", new Date(now));
  assert.equal(payload.iat, Math.floor(now / 1000));
  await assert.rejects(verify(tokens, first, "web", new Date(now + 150_000)), /"exp" claim/, "expired");
});

Deno.test("cache: concurrent misses share one signature; the cache is bounded", async () => {
  const tokens = await configured({ maxEntries: 3 });
  const [a, b] = await Promise.all([tokens.token(request()), tokens.token(request())]);
  assert.equal(a, b);
  assert.equal(tokens.stats.signed, 1);
  for (let i = 0; i < 10; i++) await tokens.token(request({ audience: `aud-${i}` }));
  assert.equal(tokens.size, 3);
  await tokens.token(request({ audience: "aud-9" }));
  assert.equal(tokens.stats.signed, 11, "the newest stays");
  await tokens.token(request());
  assert.equal(tokens.stats.signed, 12, "the oldest went first");
});

Deno.test("token: without a key it throws (the judge denies)", () => {
  assert.throws(() => new IdentityTokens().token(request()), /no signing key/);
});

// ---------------------------------------------------------------------------------------------
// Keys

Deno.test("keys: P-256 for ES256 and Ed25519 for EdDSA load from PKCS#8 files; kid is stable", async () => {
  const dir = await tempDir();
  try {
    const p256 = await writeKey(dir, "p256.pem", "P-256");
    const ed = await writeKey(dir, "ed.pem", "Ed25519");
    const a = await loadSigningKey(p256, "ES256");
    const b = await loadSigningKey(p256, "ES256");
    assert.equal(a.kid, b.kid, "same key, same kid");
    assert.equal(a.file, p256);
    assert.equal(a.privateKey.extractable, false);
    assert.deepEqual(Object.keys(a.publicJwk).sort(), ["alg", "crv", "kid", "kty", "use", "x", "y"]);
    const tokens = await configured({ algorithm: "EdDSA", keyFile: ed });
    const token = await tokens.token(request());
    assert.equal(decodeProtectedHeader(token).alg, "EdDSA");
    assert.equal((await verify(tokens, token)).payload.sub, "user:alice@example.com");
    assert.equal(tokens.jwks()!.keys[0].crv, "Ed25519");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("keys: every unusable key file is refused with the file and the fix", async () => {
  const dir = await tempDir();
  try {
    const p384 = await writeKey(dir, "p384.pem", "P-384");
    const ed = await writeKey(dir, "ed.pem", "Ed25519");
    const p256 = await writeKey(dir, "p256.pem", "P-256");
    const rsa = await writeKey(dir, "rsa.pem", "RSA");
    const pub = join(dir, "pub.pem");
    await Deno.writeTextFile(pub, (await makeKey("P-256")).publicPem);
    const sec1 = join(dir, "sec1.pem");
    await Deno.writeTextFile(
      sec1,
      (await Deno.readTextFile(p256)).replaceAll("PRIVATE KEY", "EC PRIVATE KEY"),
    );
    const text = join(dir, "text.pem");
    await Deno.writeTextFile(text, "not a key\n");
    const damaged = join(dir, "damaged.pem");
    await Deno.writeTextFile(damaged, "-----BEGIN PRIVATE KEY-----\n@@@\n-----END PRIVATE KEY-----\n");
    const cases: [string, TokenAlgorithm, RegExp][] = [
      [join(dir, "missing.pem"), "ES256", /does not exist: create it with `openssl genpkey -algorithm EC/],
      [dir, "ES256", /cannot be read .*: give the path of a PEM file/],
      [p384, "ES256", /holds a P-384 EC key, but ES256 needs a P-256 EC key: generate one with `openssl/],
      [
        ed,
        "ES256",
        /holds an Ed25519 key, but ES256 needs a P-256 EC key: set tailvoy\.identityToken\.algorithm: EdDSA/,
      ],
      [
        p256,
        "EdDSA",
        /holds a P-256 EC key, but EdDSA needs an Ed25519 key: set tailvoy\.identityToken\.algorithm: ES256/,
      ],
      [rsa, "ES256", /holds an RSA key, but ES256 needs a P-256 EC key/],
      [pub, "ES256", /is not a private key \(PEM "PUBLIC KEY"\): give the private key/],
      [sec1, "ES256", /holds a SEC1 "EC PRIVATE KEY", not PKCS#8: convert it with `openssl pkcs8 -topk8/],
      [text, "ES256", /is not PEM: give a PKCS#8 private key/],
      [damaged, "ES256", /has a damaged PEM body: generate it again/],
    ];
    for (const [file, alg, why] of cases) {
      await assert.rejects(loadSigningKey(file, alg), (error: unknown) => {
        assert.ok(error instanceof TokenKeyError, file);
        assert.equal(error.file, file);
        assert.ok(error.message.includes(JSON.stringify(file)), `${file}: names the file: ${error.message}`);
        assert.match(error.message, why);
        assert.match(error.message, /^Identity token key file /, "sentence case");
        return true;
      });
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("rotation: a new key file signs, the previous stays in the JWKS; a bad file changes nothing", async () => {
  const dir = await tempDir();
  try {
    const file = await writeKey(dir, "key.pem", "P-256");
    const tokens = await configured({ keyFile: file });
    const settings = { algorithm: "ES256" as const, keyFile: file };
    const first = tokens.keys.current!.kid;
    const before = await tokens.token(request());
    const change = (): Promise<KeyChange> => tokens.configure(settings, STATUS);
    assert.equal(await change(), "kept", "the same file again: no rotation");
    assert.equal(tokens.token(request()), before, "and the cache stays");

    await Deno.writeTextFile(file, (await makeKey("P-256")).privatePem);
    assert.equal(await change(), "rotated");
    const second = tokens.keys.current!.kid;
    assert.notEqual(second, first);
    assert.deepEqual(tokens.jwks()!.keys.map((k) => k.kid), [second, first]);
    const after = await tokens.token(request());
    assert.equal(decodeProtectedHeader(after).kid, second, "the new key signs at once");
    await verify(tokens, before);
    await verify(tokens, after);

    await Deno.writeTextFile(file, (await makeKey("P-384")).privatePem);
    await assert.rejects(change(), TokenKeyError);
    assert.equal(tokens.keys.current!.kid, second, "the bad file left the key as it was");
    assert.equal(tokens.token(request()), after);

    await Deno.writeTextFile(file, (await makeKey("P-256")).privatePem);
    assert.equal(await change(), "rotated");
    const third = tokens.keys.current!.kid;
    assert.deepEqual(tokens.jwks()!.keys.map((k) => k.kid), [third, second], "only one previous key");
    await assert.rejects(verify(tokens, before), /no applicable key found/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("generated keys: kept across reloads; a new algorithm or a key file replaces it", async () => {
  const dir = await tempDir();
  try {
    const tokens = await configured();
    const generated = tokens.keys.current!;
    assert.equal(generated.file, undefined);
    assert.equal(await tokens.configure({ algorithm: "ES256" }, STATUS), "kept");
    assert.equal(await tokens.configure({ algorithm: "EdDSA" }, STATUS), "rotated");
    assert.equal(tokens.keys.current!.alg, "EdDSA");
    assert.equal(tokens.keys.previous!.kid, generated.kid);
    const file = await writeKey(dir, "k.pem", "P-256");
    assert.equal(await tokens.configure({ algorithm: "ES256", keyFile: file }, STATUS), "rotated");
    assert.equal(tokens.keys.current!.file, file);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("key ring: empty until the first key; rotating to the current key is a no-op", async () => {
  const ring = new KeyRing();
  assert.equal(ring.jwks(), undefined);
  const tokens = await configured();
  const key = tokens.keys.current!;
  assert.equal(ring.rotate(key), true);
  assert.equal(ring.rotate(key), false);
  assert.equal(ring.previous, undefined);
  assert.equal(ring.jwks()!.keys.length, 1);
  assert.equal(ring.jwks()!.keys[0].d, undefined, "no private part is published");
});

// ---------------------------------------------------------------------------------------------
// Config

const withListeners = (listeners: string, tailvoy = "") =>
  `tailvoy:\n  ingress: direct\n${tailvoy}listeners:\n${listeners}`;

function configError(text: string): string {
  try {
    parseConfig(text, { env: {} });
  } catch (error) {
    if (error instanceof ConfigError) return error.message;
    throw error;
  }
  assert.fail("expected a config error");
}

Deno.test("config: identityToken is true or {audience, lifetime}; the key block sits under tailvoy", () => {
  const config = parseConfig(
    withListeners(
      "  web: {port: 80, protocol: http, backend: 'a:1', identityToken: true}\n" +
        "  api: {port: 81, protocol: grpc, backend: 'a:1', identityToken: {audience: my-api, lifetime: 10m}}\n" +
        "  off: {port: 82, protocol: https, backend: 'a:1', tls: {cert: c, key: k}, identityToken: false}\n" +
        "  db: {port: 83, protocol: tcp, backend: 'a:1'}\n",
      "  identityToken: {keyFile: /etc/tailvoy/token.pem, algorithm: EdDSA, issuer: 'https://id.example.com/'}\n",
    ),
    { env: {} },
  );
  assert.deepEqual(config.listeners.web.identityToken, { lifetime: 300_000 });
  assert.deepEqual(config.listeners.api.identityToken, { audience: "my-api", lifetime: 600_000 });
  assert.equal(config.listeners.off.identityToken, undefined);
  assert.equal(config.listeners.db.identityToken, undefined);
  assert.deepEqual(config.tailvoy.identityToken, {
    keyFile: "/etc/tailvoy/token.pem",
    algorithm: "EdDSA",
    issuer: "https://id.example.com/",
  });
  assert.equal(tokensWanted(config), true);
  const plain = parseConfig(withListeners("  web: {port: 80, protocol: http, backend: 'a:1'}\n"), {
    env: {},
  });
  assert.equal(plain.tailvoy.identityToken, undefined);
  assert.equal(tokensWanted(plain), false);
});

Deno.test("config: a lifetime out of 1s..1h, a bad shape or an L4 listener is an error with its line", () => {
  const l = (token: string, protocol = "http") =>
    withListeners(
      `  web:\n    port: 80\n    protocol: ${protocol}\n    backend: 'a:1'\n    identityToken: ${token}\n`,
    );
  assert.match(
    configError(l("{lifetime: 2h}")),
    /^listeners\.web\.identityToken\.lifetime: must be between 1s and 1h, got "2h" \(line 8:/m,
  );
  assert.match(configError(l("{lifetime: 500ms}")), /lifetime: must be between 1s and 1h, got "500ms"/);
  assert.match(configError(l("{lifetime: 0}")), /lifetime: must be greater than 0/);
  assert.match(
    configError(l("{lifetim: 5m}")),
    /identityToken\.lifetim: unknown key .*did you mean "lifetime"\?/,
  );
  assert.match(configError(l("{audience: ''}")), /identityToken\.audience: must not be empty/);
  assert.match(
    configError(l("yes")),
    /^listeners\.web\.identityToken: expected true, false or a mapping, got "yes" \(line 8:/m,
  );
  assert.match(
    configError(l("true", "tcp")),
    /^listeners\.web\.identityToken: only applies to http, https and grpc listeners, not tcp \(line 8:/m,
  );
  assert.match(
    configError(
      withListeners(
        "  web: {port: 80, protocol: http, backend: 'a:1'}\n",
        "  identityToken: {algorithm: RS256}\n",
      ),
    ),
    /tailvoy\.identityToken\.algorithm: must be one of ES256, EdDSA; got "RS256"/,
  );
});

// ---------------------------------------------------------------------------------------------
// The judge

const WEB_RULE = { listeners: ["web", "plain"], routes: ["/api/*"] };

function whois(): WhoIsResponse {
  return {
    Node: { StableID: "nALICE", Name: "alice.tailnet.ts.net.", Addresses: ["100.64.0.2/32"], Tags: [] },
    UserProfile: { ID: 7, LoginName: "alice@example.com", DisplayName: "Alice" },
    CapMap: { [CAP]: [WEB_RULE] },
  };
}

const SETTINGS: Record<string, ListenerSettings> = {
  web: { protocol: "http", acceptAppCaps: false, shadow: false, identityToken: { lifetime: 60_000 } },
  plain: { protocol: "http", acceptAppCaps: false, shadow: false },
  named: {
    protocol: "http",
    acceptAppCaps: false,
    shadow: true,
    identityToken: { audience: "https://app.example.com", lifetime: 60_000 },
  },
};

function input(listener: string, overrides: Partial<CheckInput> = {}): CheckInput {
  return {
    requestId: "r",
    listener,
    callerIp: "100.64.0.2",
    callerPort: 40000,
    method: "GET",
    host: "app.example.com",
    path: "/api/items",
    grpc: false,
    ...overrides,
  };
}

Deno.test("judge: an allowed request carries the token; a deny, none; without a signer it is a deny", async () => {
  const tokens = await configured();
  const resolver = new IdentityResolver({ whois: () => Promise.resolve(whois()) }, { ttlMs: 0 });
  const deps = { resolver, listeners: (name: string) => SETTINGS[name], tokens };
  const allowed = await judge(input("web"), deps);
  assert.equal(allowed.allow, true);
  const header = allowed.set.find((h) => h.header.key === "x-tailvoy-jwt-assertion");
  assert.ok(header, "the token header is set");
  const { payload } = await verify(tokens, header.header.value);
  assert.equal(payload.login, "alice@example.com");
  assert.deepEqual(payload.rule, { capability: CAP, index: 0, value: WEB_RULE });

  const denied = await judge(input("web", { path: "/admin" }), deps);
  assert.equal(denied.allow, false);
  assert.deepEqual(denied.set, []);
  assert.equal(tokens.stats.signed, 1, "no token is signed for a deny");

  const plain = await judge(input("plain"), deps);
  assert.equal(plain.set.some((h) => h.header.key === "x-tailvoy-jwt-assertion"), false);

  // A shadow listener with its own audience: the policy denies /admin, the token says so.
  const shadow = await judge(input("named", { path: "/admin" }), deps);
  assert.equal(shadow.allow, true);
  const shadowToken = shadow.set.find((h) => h.header.key === "x-tailvoy-jwt-assertion")!.header.value;
  const verified = await verify(tokens, shadowToken, "https://app.example.com");
  assert.equal(verified.payload.shadow, true);
  assert.equal(verified.payload.rule, undefined);

  const unsigned = await judge(input("web"), { resolver, listeners: (name: string) => SETTINGS[name] });
  assert.equal(unsigned.allow, false, "fail closed");
  assert.equal(unsigned.record.code, "internal_error");
});

Deno.test("judge: a client's X-Tailvoy-Jwt-Assertion is removed (Envoy Gateway checks carry every header)", async () => {
  const tokens = await configured();
  const resolver = new IdentityResolver({ whois: () => Promise.resolve(whois()) }, { ttlMs: 0 });
  const deps = { resolver, listeners: (name: string) => SETTINGS[name], tokens };
  const forged = { "x-tailvoy-jwt-assertion": "eyJhbGciOiJub25lIn0.e30.", "x-tailvoy-other": "1" };
  const plain = await judge(input("plain", { headers: forged }), deps);
  assert.deepEqual(plain.remove.sort(), ["x-tailvoy-jwt-assertion", "x-tailvoy-other"]);
  const web = await judge(input("web", { headers: forged }), deps);
  assert.deepEqual(web.remove, ["x-tailvoy-other"], "ours overwrites the client's copy");
  assert.notEqual(
    web.set.find((h) => h.header.key === "x-tailvoy-jwt-assertion")?.header.value,
    forged["x-tailvoy-jwt-assertion"],
  );
});
