/**
 * Identity tokens end to end: the real proxy with the real Envoy beside the gateway's tailscaled, callers
 * on real tailnet nodes. The backend here verifies `X-Tailvoy-Jwt-Assertion` the way the README tells
 * backends to (jose's `createRemoteJWKSet` on the admin server's JWKS, `jwtVerify` with issuer and
 * audience), and is shown refusing an expired, a re-signed, an `alg: none` and a wrong-audience token.
 * Also: a client's own header never reaches it, a caller the policy refuses gets no token, SIGHUP
 * rotates the key (the previous one stays in the JWKS), and a bad key file stops the proxy (exit 2) or
 * is refused on reload.
 */

import assert from "node:assert/strict";
import { join } from "node:path";
import {
  base64url,
  createRemoteJWKSet,
  decodeJwt,
  decodeProtectedHeader,
  importPKCS8,
  type JWTPayload,
  jwtVerify,
  SignJWT,
} from "jose";
import { LocalApiClient } from "../../lib/localapi/mod.ts";
import { http } from "../../scripts/harness/clients.ts";
import { fixture, tailnetFixture, tempDir } from "../../scripts/harness/fixture.ts";
import { Proxy } from "../../scripts/harness/proxy.ts";
import { CAP, defaultPolicy, type Policy, waitFor } from "../../scripts/harness/tailnet.ts";

const WEB = 17820;
const OTHER = 17821;
const PLAIN = 17822;
const HEADER = "x-tailvoy-jwt-assertion";

function policy(): Policy {
  const p = defaultPolicy();
  // alice (group:eng): every listener here; ci: web; bob: nothing.
  p.grants = [
    { src: ["*"], dst: ["*"], ip: ["*"] },
    { src: ["group:eng"], dst: ["tag:gw"], app: { [CAP]: [{ listeners: ["web", "other", "plain"] }] } },
    { src: ["tag:ci"], dst: ["tag:gw"], app: { [CAP]: [{ listeners: ["web"], methods: ["GET"] }] } },
  ];
  return p;
}

/** A P-256 PKCS#8 PEM private key, made with WebCrypto. */
async function p256Pem(): Promise<string> {
  const pair = await crypto.subtle.generateKey({ name: "ECDSA", namedCurve: "P-256" }, true, ["sign"]);
  const der = new Uint8Array(await crypto.subtle.exportKey("pkcs8", pair.privateKey));
  const b64 = btoa(String.fromCharCode(...der)).match(/.{1,64}/g)!.join("\n");
  return `-----BEGIN PRIVATE KEY-----\n${b64}\n-----END PRIVATE KEY-----\n`;
}

interface Seen {
  /** The token header each request arrived with (`null`: none). */
  tokens: (string | null)[];
}

/**
 * The backend of the README: verifies the token against our JWKS with jose, for audience `web`; answers
 * 200 with the claims, or 401 with jose's error code.
 */
function verifyingBackend(options: { issuer: () => string; jwksUrl: () => URL }) {
  const seen: Seen = { tokens: [] };
  let jwks: ReturnType<typeof createRemoteJWKSet> | undefined;
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen: () => {} }, async (req) => {
    const token = req.headers.get(HEADER);
    seen.tokens.push(token);
    if (!token) return Response.json({ error: "no token" }, { status: 401 });
    // The test rotates the key seconds after the first fetch: no 30 s cooldown before jose refetches.
    jwks ??= createRemoteJWKSet(options.jwksUrl(), { cooldownDuration: 0 });
    try {
      const { payload, protectedHeader } = await jwtVerify(token, jwks, {
        issuer: options.issuer(),
        audience: "web",
        algorithms: ["ES256", "EdDSA"],
      });
      return Response.json({ claims: payload, kid: protectedHeader.kid });
    } catch (error) {
      const code = (error as { code?: string }).code ?? String(error);
      return Response.json({ error: code }, { status: 401 });
    }
  });
  return { port: server.addr.port, seen, close: () => server.shutdown() };
}

/** The backend's answer to `token` sent to it directly (not through tailvoy, which would strip it). */
async function direct(
  port: number,
  token: string,
): Promise<{ status: number; body: Record<string, unknown> }> {
  const r = await fetch(`http://127.0.0.1:${port}/`, { headers: { [HEADER]: token } });
  return { status: r.status, body: await r.json() };
}

Deno.test.sanitizer({ ops: false, resources: false });

Deno.test({
  name: "identity token: a bad key file stops the proxy at start (exit 2), naming the file and the fix",
  fn: async () => {
    const dir = await Deno.makeTempDir({ prefix: "tailvoy-token-bad-" });
    try {
      const key = join(dir, "missing.pem");
      const file = join(dir, "bad.yaml");
      await Deno.writeTextFile(
        file,
        [
          "listeners:",
          "  web: {port: 17823, protocol: http, backend: '127.0.0.1:1', identityToken: true}",
          "tailvoy:",
          "  ingress: direct",
          `  adminAddress: "127.0.0.1:0"`,
          `  identityToken: {keyFile: ${key}}`,
          "",
        ].join("\n"),
      );
      const proxy = new Proxy(file, join(dir, "no-tailscaled.sock"));
      assert.equal(await proxy.exited(), 2);
      assert.match(
        proxy.output,
        new RegExp(`key file \\\\"${key.replaceAll("/", "\\/")}\\\\" does not exist`),
      );
      assert.match(proxy.output, /openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256/);
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});

const tailnetOnce = tailnetFixture();

/** The verifying backend, the key file, and the proxy signing tokens for its listeners. */
const gatewayOnce = fixture(async (cleanup) => {
  const tailnet = await tokenTailnet();
  const gw = tailnet.node("gw");
  using api = new LocalApiClient(gw.socket);
  const issuer = `https://${(await api.status()).Self!.DNSName.replace(/\.$/, "").toLowerCase()}/`;
  let admin = "";
  const backend = verifyingBackend({
    issuer: () => issuer,
    jwksUrl: () => new URL(`http://${admin}/.well-known/jwks.json`),
  });
  cleanup.defer(() => backend.close());
  const dir = await tempDir(cleanup, "tailvoy-token-");
  const keyFile = join(dir, "token.pem");
  // The key the proxy signs with now (a test that rotates it says so here).
  const key = { pem: await p256Pem() };
  await Deno.writeTextFile(keyFile, key.pem);
  const file = join(dir, "token.yaml");
  const to = `127.0.0.1:${backend.port}`;
  await Deno.writeTextFile(
    file,
    [
      "tailscale:",
      "  serviceMappings: {gw: [web, other, plain]}",
      "listeners:",
      `  web: {port: ${WEB}, protocol: http, backend: "${to}", identityToken: true}`,
      `  other: {port: ${OTHER}, protocol: http, backend: "${to}", identityToken: {audience: other-app, lifetime: 1m}}`,
      `  plain: {port: ${PLAIN}, protocol: http, backend: "${to}"}`,
      "tailvoy:",
      `  adminAddress: "127.0.0.1:0"`,
      `  envoyBinary: ${join(Deno.cwd(), ".peers", "bin", "envoy")}`,
      `  identityToken: {keyFile: ${keyFile}}`,
      "",
    ].join("\n"),
  );
  const proxy = new Proxy(file, gw.socket);
  cleanup.defer(async () => void await proxy.stop());
  admin = JSON.parse(await proxy.waitLog(/"logger":"tailvoy.admin"/, "admin")).addr;
  await proxy.waitLog(/"message":"ready:/, "ready");
  const jwks = async () => (await (await fetch(`http://${admin}/.well-known/jwks.json`)).json()).keys;
  return { proxy, backend, issuer, keyFile, key, jwks };
});

/** The tailnet with this file's policy, seen by the gateway. */
async function tokenTailnet() {
  const tailnet = await tailnetOnce();
  await tailnet.usePolicy(policy());
  using api = new LocalApiClient(tailnet.node("gw").socket);
  await waitFor(async () => {
    const caps = (await api.whois(tailnet.node("ci").ipv4)).CapMap[CAP];
    return JSON.stringify(caps) === JSON.stringify([{ listeners: ["web"], methods: ["GET"] }])
      ? true
      : undefined;
  }, { what: "the identity token test policy", timeoutMs: 15_000 });
  return tailnet;
}

/** The running gateway with this file's policy in place, and a request from a node. */
async function gateway() {
  const g = await gatewayOnce();
  const tailnet = await tokenTailnet();
  const gw = tailnet.node("gw");
  const get = (who: string, port: number, headers: Record<string, string> = {}) =>
    tailnet.dial(who, gw.ipv4, port).then((c) => http(c, "/whoami", { headers }));
  /** The token alice's request to web carries to the backend (signed by the current key). */
  const aliceToken = async () => {
    assert.equal((await get("alice", WEB)).status, 200);
    return g.backend.seen.tokens.at(-1)!;
  };
  /** The key ids in the JWKS, the current key first. */
  const kids = async () => (await g.jwks()).map((k: { kid: string }) => k.kid) as string[];
  return { ...g, tailnet, gw, get, aliceToken, kids };
}

Deno.test(
  "identity token: alice: the backend verifies her token; it names her, her node and the rule",
  async () => {
    const { tailnet, gw, get, backend, issuer, kids } = await gateway();
    using api = new LocalApiClient(gw.socket);
    const alice = await api.whois(tailnet.node("alice").ipv4);
    const r = await get("alice", WEB);
    assert.equal(r.status, 200, r.body);
    const { claims, kid } = JSON.parse(r.body) as { claims: JWTPayload; kid: string };
    assert.equal(kid, (await kids())[0]);
    assert.equal(claims.iss, issuer);
    assert.equal(claims.aud, "web", "the listener's name by default");
    assert.equal(claims.login, alice.UserProfile!.LoginName);
    assert.equal(claims.sub, `user:${alice.UserProfile!.LoginName}`);
    assert.equal(claims.node, alice.Node.Name.replace(/\.$/, ""));
    assert.deepEqual(claims.tags, []);
    assert.ok((claims.addresses as string[]).includes(tailnet.node("alice").ipv4));
    assert.deepEqual(claims.rule, {
      capability: CAP,
      index: 0,
      value: { listeners: ["web", "other", "plain"] },
    });
    assert.equal(claims.exp! - claims.iat!, 300, "5 minutes by default");
    const aliceToken = backend.seen.tokens.at(-1)!;
    assert.equal((await get("alice", WEB)).status, 200);
    assert.equal(backend.seen.tokens.at(-1), aliceToken, "reused, not signed per request");
  },
);

Deno.test("identity token: ci (tagged): node:<stable id>, its tags, no login", async () => {
  const { tailnet, gw, get } = await gateway();
  using api = new LocalApiClient(gw.socket);
  const ci = await api.whois(tailnet.node("ci").ipv4);
  const r = await get("ci", WEB);
  assert.equal(r.status, 200, r.body);
  const { claims } = JSON.parse(r.body) as { claims: JWTPayload };
  assert.equal(claims.sub, `node:${ci.Node.StableID}`);
  assert.deepEqual(claims.tags, ["tag:ci"]);
  assert.equal(claims.login, undefined);
});

Deno.test("identity token: bob is refused by policy before any token: the backend never sees him", async () => {
  const { get, backend } = await gateway();
  const before = backend.seen.tokens.length;
  const r = await get("bob", WEB);
  assert.equal(r.status, 403);
  assert.equal(JSON.parse(r.body).error, "forbidden", "tailvoy's deny");
  assert.equal(backend.seen.tokens.length, before);
});

Deno.test("identity token: a client's own X-Tailvoy-Jwt-Assertion never reaches the backend", async () => {
  const { get, backend, issuer, kids, aliceToken } = await gateway();
  const ours = await aliceToken();
  const forged = await new SignJWT({ login: "admin@example.com" })
    .setProtectedHeader({ alg: "ES256", kid: (await kids())[0] })
    .setIssuer(issuer).setAudience("web").setSubject("user:admin@example.com").setExpirationTime("5m")
    .sign(await importPKCS8(await p256Pem(), "ES256"));
  const r = await get("alice", WEB, { "X-Tailvoy-Jwt-Assertion": forged });
  assert.equal(r.status, 200, r.body);
  assert.equal(backend.seen.tokens.at(-1), ours, "ours, not the client's");
  const plain = await get("alice", PLAIN, { "X-Tailvoy-Jwt-Assertion": forged });
  assert.equal(plain.status, 401);
  assert.equal(backend.seen.tokens.at(-1), null, "a listener without tokens passes none on");
  assert.ok(!backend.seen.tokens.includes(forged));
});

Deno.test(
  "identity token: the backend refuses a wrong-audience, an expired, a re-signed and an alg:none token",
  async () => {
    const { get, backend, key, kids, aliceToken } = await gateway();
    const other = await get("alice", OTHER);
    assert.equal(other.status, 401);
    assert.equal(JSON.parse(other.body).error, "ERR_JWT_CLAIM_VALIDATION_FAILED", "aud is other-app");
    const otherToken = backend.seen.tokens.at(-1)!;
    assert.equal(decodeJwt(otherToken).aud, "other-app");
    assert.equal(decodeJwt(otherToken).exp! - decodeJwt(otherToken).iat!, 60);

    const token = await aliceToken();
    const kid = (await kids())[0];
    assert.equal((await direct(backend.port, token)).status, 200, "the real token, sent directly");
    const claims = decodeJwt(token);
    const now = Math.floor(Date.now() / 1000);
    // Signed with the real key (the test wrote the key file): only the expiry is wrong.
    const expired = await new SignJWT({ ...claims, iat: now - 600, nbf: now - 600, exp: now - 300 })
      .setProtectedHeader({ alg: "ES256", kid })
      .sign(await importPKCS8(key.pem, "ES256"));
    assert.deepEqual(await direct(backend.port, expired), {
      status: 401,
      body: { error: "ERR_JWT_EXPIRED" },
    });
    const resigned = await new SignJWT(claims)
      .setProtectedHeader({ alg: "ES256", kid })
      .sign(await importPKCS8(await p256Pem(), "ES256"));
    assert.deepEqual(await direct(backend.port, resigned), {
      status: 401,
      body: { error: "ERR_JWS_SIGNATURE_VERIFICATION_FAILED" },
    });
    const enc = (value: unknown) => base64url.encode(JSON.stringify(value));
    const none = `${enc({ alg: "none", kid })}.${enc(claims)}.`;
    assert.equal((await direct(backend.port, none)).status, 401);
    const unsigned = `${token.split(".").slice(0, 2).join(".")}.`;
    assert.equal((await direct(backend.port, unsigned)).status, 401, "signature stripped");
  },
);

Deno.test(
  "identity token: SIGHUP re-reads the key file: the new key signs, the previous stays in the JWKS",
  async () => {
    const { proxy, get, backend, keyFile, key, kids, aliceToken } = await gateway();
    const previous = await aliceToken();
    const previousKid = (await kids())[0];
    const rotations = () => proxy.lines.filter((l) => /identity tokens: rotated/.test(l));
    const seen = rotations().length;
    key.pem = await p256Pem();
    await Deno.writeTextFile(keyFile, key.pem);
    proxy.child.kill("SIGHUP");
    await waitFor(() => rotations()[seen], { what: "proxy log: rotation", timeoutMs: 20_000 });
    const now = await kids();
    assert.equal(now.length, 2);
    assert.equal(now[1], previousKid);
    const r = await get("alice", WEB);
    assert.equal(r.status, 200, r.body);
    assert.equal(JSON.parse(r.body).kid, now[0], "the new key signs at once");
    assert.equal(decodeProtectedHeader(backend.seen.tokens.at(-1)!).kid, now[0]);
    assert.equal((await direct(backend.port, previous)).status, 200, "a token of the previous key verifies");
  },
);

Deno.test("identity token: a bad key file on SIGHUP is refused; the running key stays", async () => {
  const { proxy, get, keyFile, key, kids } = await gateway();
  const before = await kids();
  await Deno.writeTextFile(keyFile, "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n");
  try {
    const rejected = () => proxy.lines.filter((l) => /reload rejected/.test(l));
    const seen = rejected().length;
    proxy.child.kill("SIGHUP");
    const line = await waitFor(() => rejected()[seen], { what: "reload rejected", timeoutMs: 20_000 });
    assert.match(line, /is not a private key/);
    assert.ok(line.includes(keyFile), "names the file");
    assert.deepEqual(await kids(), before);
    const r = await get("alice", WEB);
    assert.equal(r.status, 200, r.body);
    assert.equal(JSON.parse(r.body).kid, before[0]);
  } finally {
    // The running key's file again, for whatever reads it next.
    await Deno.writeTextFile(keyFile, key.pem);
  }
});
