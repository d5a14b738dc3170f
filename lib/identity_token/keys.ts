/**
 * Signing keys of identity tokens: read from a PKCS#8 PEM file or generated, each named by its kid
 * (the RFC 7638 thumbprint of its public key, so the same key always has the same kid). A
 * {@link KeyRing} holds the key that signs and the one before it; both are in the JWKS, so tokens
 * signed before a rotation still verify until they expire.
 *
 * Every problem with a key file is a {@link TokenKeyError} naming the file and the fix: missing,
 * unreadable, not PEM, not a private key, not PKCS#8, or a key that does not fit the algorithm.
 *
 * @module
 */

import {
  calculateJwkThumbprint,
  type CryptoKey,
  exportJWK,
  generateKeyPair,
  importPKCS8,
  type JWK,
} from "jose";
import type { TOKEN_ALGORITHMS } from "../config/mod.ts";
import { errorMessage } from "../util/error.ts";

/** A signature algorithm of identity tokens. */
export type TokenAlgorithm = typeof TOKEN_ALGORITHMS[number];

/** One signing key. */
export interface SigningKey {
  /** The JWS algorithm it signs with. */
  readonly alg: TokenAlgorithm;
  /** Its key id: the RFC 7638 thumbprint of the public key. */
  readonly kid: string;
  /** The private key (not extractable). */
  readonly privateKey: CryptoKey;
  /** The public key as published in the JWKS (`kid`, `alg`, `use: "sig"`). */
  readonly publicJwk: Readonly<JWK>;
  /** The file it was read from; absent for a generated key. */
  readonly file?: string;
}

/** A JSON Web Key Set, as served at `/.well-known/jwks.json`. */
export interface JsonWebKeySet {
  /** The public keys, the signing one first. */
  keys: JWK[];
}

/** A key file that cannot be used; the message names the file and the fix. */
export class TokenKeyError extends Error {
  /** The key file at fault. */
  readonly file: string;

  /** Builds the error for `file`. */
  constructor(file: string, message: string) {
    super(message);
    this.name = "TokenKeyError";
    this.file = file;
  }
}

/** What each algorithm needs, and the command that makes such a key. */
const NEEDS: Record<TokenAlgorithm, { kind: string; generate: string }> = {
  ES256: {
    kind: "a P-256 EC key",
    generate: "openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256",
  },
  EdDSA: { kind: "an Ed25519 key", generate: "openssl genpkey -algorithm ed25519" },
};

// Algorithm and curve OIDs (DER, hex) of a PKCS#8 PrivateKeyInfo's AlgorithmIdentifier, to name a key
// that does not fit; the curve OIDs come before the generic ones they would otherwise hide behind.
const KEY_KINDS: readonly [oid: string, kind: string][] = [
  ["06082a8648ce3d030107", "a P-256 EC key"],
  ["06052b81040022", "a P-384 EC key"],
  ["06052b81040023", "a P-521 EC key"],
  ["06052b8104000a", "a secp256k1 EC key"],
  ["06072a8648ce3d0201", "an EC key on another curve"],
  ["06032b6570", "an Ed25519 key"],
  ["06032b6571", "an Ed448 key"],
  ["06032b656e", "an X25519 key"],
  ["06032b656f", "an X448 key"],
  ["06092a864886f70d010101", "an RSA key"],
  ["06092a864886f70d01010a", "an RSA-PSS key"],
];

/** Which kind of key a PKCS#8 DER holds, from its algorithm identifier (the first bytes). */
function keyKind(der: Uint8Array): string {
  const head = Array.from(der.subarray(0, 48), (b) => b.toString(16).padStart(2, "0")).join("");
  return KEY_KINDS.find(([oid]) => head.includes(oid))?.[1] ?? "a key of an unknown type";
}

function pemBody(pem: string, label: string): Uint8Array | undefined {
  const m = new RegExp(`-----BEGIN ${label}-----([A-Za-z0-9+/=\\s]+)-----END ${label}-----`).exec(pem);
  if (!m) return undefined;
  try {
    return Uint8Array.from(atob(m[1].replace(/\s+/g, "")), (c) => c.charCodeAt(0));
  } catch {
    return undefined;
  }
}

async function readKeyFile(file: string, alg: TokenAlgorithm): Promise<string> {
  const generate = `${NEEDS[alg].generate} -out ${file}`;
  try {
    return await Deno.readTextFile(file);
  } catch (error) {
    if (error instanceof Deno.errors.NotFound) {
      throw new TokenKeyError(
        file,
        `Identity token key file ${JSON.stringify(file)} does not exist: create it with \`${generate}\`, ` +
          "or remove tailvoy.identityToken.keyFile to have a key generated at start",
      );
    }
    if (error instanceof Deno.errors.PermissionDenied || error instanceof Deno.errors.NotCapable) {
      throw new TokenKeyError(
        file,
        `Identity token key file ${JSON.stringify(file)} cannot be read (permission denied): ` +
          "make it readable by the user tailvoy runs as",
      );
    }
    const reason = errorMessage(error);
    throw new TokenKeyError(
      file,
      `Identity token key file ${
        JSON.stringify(file)
      } cannot be read (${reason}): give the path of a PEM file`,
    );
  }
}

/** Why `pem` is not a PKCS#8 private key, by its PEM label, or `undefined` when it has one. */
function labelProblem(pem: string, file: string, alg: TokenAlgorithm): string | undefined {
  const name = JSON.stringify(file);
  const label = /-----BEGIN ([A-Z0-9 ]+)-----/.exec(pem)?.[1];
  if (label === "PRIVATE KEY") return undefined;
  const generate = `${NEEDS[alg].generate} -out ${file}`;
  if (label === undefined) {
    return `Identity token key file ${name} is not PEM: give a PKCS#8 private key ("BEGIN PRIVATE KEY"), ` +
      `e.g. made with \`${generate}\``;
  }
  if (label === "EC PRIVATE KEY") {
    return `Identity token key file ${name} holds a SEC1 "EC PRIVATE KEY", not PKCS#8: convert it with ` +
      `\`openssl pkcs8 -topk8 -nocrypt -in ${file} -out ${file}.pk8\` and use that file`;
  }
  if (label === "ENCRYPTED PRIVATE KEY") {
    return `Identity token key file ${name} is encrypted: decrypt it with ` +
      `\`openssl pkcs8 -in ${file} -out ${file}.plain\` and use that file (keep it readable only by tailvoy)`;
  }
  if (label.endsWith("PRIVATE KEY")) {
    return `Identity token key file ${name} holds a "${label}", not ${NEEDS[alg].kind} for ${alg}: ` +
      `generate one with \`${generate}\``;
  }
  return `Identity token key file ${name} is not a private key (PEM "${label}"): give the private key ` +
    `(PKCS#8, "BEGIN PRIVATE KEY"), e.g. made with \`${generate}\``;
}

function mismatch(file: string, alg: TokenAlgorithm, kind: string): string {
  const other = (Object.keys(NEEDS) as TokenAlgorithm[]).find((a) => a !== alg && NEEDS[a].kind === kind);
  const fix = other
    ? `set tailvoy.identityToken.algorithm: ${other}, or generate ${NEEDS[alg].kind} with ` +
      `\`${NEEDS[alg].generate} -out ${file}\``
    : `generate one with \`${NEEDS[alg].generate} -out ${file}\``;
  return `Identity token key file ${JSON.stringify(file)} holds ${kind}, but ${alg} needs ${
    NEEDS[alg].kind
  }: ${fix}`;
}

// `exportable` is the public key, or an exportable copy of the private one (whose `d` is dropped).
async function signingKey(privateKey: CryptoKey, exportable: CryptoKey, alg: TokenAlgorithm) {
  const { d: _d, ...jwk } = await exportJWK(exportable);
  const kid = await calculateJwkThumbprint(jwk);
  return { alg, kid, privateKey, publicJwk: Object.freeze({ ...jwk, kid, alg, use: "sig" }) };
}

/**
 * Reads the PKCS#8 PEM private key in `file` for `alg` (P-256 for ES256, Ed25519 for EdDSA). Rejects
 * with a {@link TokenKeyError} naming the file and the fix when it cannot be used.
 */
export async function loadSigningKey(file: string, alg: TokenAlgorithm): Promise<SigningKey> {
  const pem = await readKeyFile(file, alg);
  const problem = labelProblem(pem, file, alg);
  if (problem) throw new TokenKeyError(file, problem);
  const der = pemBody(pem, "PRIVATE KEY");
  if (!der) {
    throw new TokenKeyError(
      file,
      `Identity token key file ${JSON.stringify(file)} has a damaged PEM body: generate it again with ` +
        `\`${NEEDS[alg].generate} -out ${file}\``,
    );
  }
  const kind = keyKind(der);
  if (kind !== NEEDS[alg].kind) throw new TokenKeyError(file, mismatch(file, alg, kind));
  let exportable: CryptoKey;
  let privateKey: CryptoKey;
  try {
    // Exportable once, to publish the public half; the key that signs is not.
    exportable = await importPKCS8(pem, alg, { extractable: true });
    privateKey = await importPKCS8(pem, alg);
  } catch (error) {
    const reason = errorMessage(error);
    throw new TokenKeyError(
      file,
      `Identity token key file ${JSON.stringify(file)} holds ${kind} that cannot be imported (${reason}): ` +
        `generate it again with \`${NEEDS[alg].generate} -out ${file}\``,
    );
  }
  return { ...await signingKey(privateKey, exportable, alg), file };
}

/** A fresh key pair for `alg`, held in memory only. */
export async function generateSigningKey(alg: TokenAlgorithm): Promise<SigningKey> {
  const { privateKey, publicKey } = await generateKeyPair(alg);
  return await signingKey(privateKey, publicKey, alg);
}

/** The signing key and the one before it. */
export class KeyRing {
  #current?: SigningKey;
  #previous?: SigningKey;

  /** The key that signs; `undefined` until the first {@link rotate}. */
  get current(): SigningKey | undefined {
    return this.#current;
  }

  /** The key that signed before the last rotation, still published. */
  get previous(): SigningKey | undefined {
    return this.#previous;
  }

  /**
   * Makes `key` the signing key; the current one becomes the previous (the one before is dropped).
   * False, and nothing changes, when `key` is the current key already (same kid).
   */
  rotate(key: SigningKey): boolean {
    if (this.#current?.kid === key.kid) return false;
    this.#previous = this.#current;
    this.#current = key;
    return true;
  }

  /** The public keys, current first; `undefined` before there is a key. */
  jwks(): JsonWebKeySet | undefined {
    if (!this.#current) return undefined;
    const keys = [this.#current, this.#previous].filter((k) => k !== undefined);
    return { keys: keys.map((k) => ({ ...k.publicJwk })) };
  }
}
