/**
 * Loading the vendored ext_authz protos (`proto/`, trimmed copies of envoyproxy/data-plane-api and
 * googleapis) with `@grpc/proto-loader`.
 *
 * The directory is found relative to this module, never the working directory, so it works the same
 * from a checkout and from a `deno compile`d binary built with `--include proto`. The well-known
 * types (struct, any, timestamp, wrappers) come bundled with protobufjs and are never read from disk.
 *
 * Permissions: reading `proto/`, plus `--allow-sys=uid`. proto-loader checks each include path with
 * `fs.accessSync`, which Deno's `node:fs` implements with `Deno.uid()`; without that permission every
 * import looks missing. {@link loadAuthzProtos} checks up front and says so.
 *
 * @module
 */

import { Buffer } from "node:buffer";
import { join } from "node:path";
import type * as grpc from "@grpc/grpc-js";
import { loadSync, type Options, type PackageDefinition } from "@grpc/proto-loader";

/** The vendored proto tree (`<repo>/proto`), resolved from this module's location. */
export const PROTO_DIR: string = join(import.meta.dirname ?? ".", "..", "..", "proto");

/** The service file; every other file is reached through its imports. */
export const EXTERNAL_AUTH_PROTO = "envoy/service/auth/v3/external_auth.proto";

/** Fully-qualified name of the service; with the method it forms the gRPC path. */
export const AUTHORIZATION_SERVICE = "envoy.service.auth.v3.Authorization";

/** The gRPC path Envoy calls. */
export const CHECK_PATH = `/${AUTHORIZATION_SERVICE}/Check`;

/**
 * proto-loader options: field names as in the .proto (`context_extensions`), 64-bit integers and enums
 * as strings, no defaults filled in (absent stays absent, so "missing" is visible), oneof members
 * named in a virtual field.
 */
export const LOADER_OPTIONS: Readonly<Options> = Object.freeze({
  keepCase: true,
  longs: String,
  enums: String,
  defaults: false,
  oneofs: true,
});

/** The loaded protos: the package definition, the service, and raw codecs for Check messages. */
export interface AuthzProtos {
  /** Everything proto-loader produced, keyed by fully-qualified message or service name. */
  packageDefinition: PackageDefinition;
  /** The `envoy.service.auth.v3.Authorization` service, for `grpc.Server.addService`. */
  service: grpc.ServiceDefinition;
  /** Decodes CheckRequest bytes into a plain object (field names as in the .proto). */
  decodeCheckRequest(bytes: Uint8Array): unknown;
  /** Encodes a CheckRequest object. */
  encodeCheckRequest(value: unknown): Uint8Array;
  /** Decodes CheckResponse bytes. */
  decodeCheckResponse(bytes: Uint8Array): unknown;
  /** Encodes a CheckResponse object. */
  encodeCheckResponse(value: unknown): Uint8Array;
}

const cache = new Map<string, AuthzProtos>();

function sysUidGranted(): boolean {
  // Outside Deno (or with a permission API that cannot say), let proto-loader try.
  try {
    return Deno.permissions.querySync({ name: "sys", kind: "uid" }).state === "granted";
  } catch {
    return true;
  }
}

/**
 * Loads the ext_authz protos from `options.protoDir` (default {@link PROTO_DIR}). Loading is
 * synchronous and cached per directory. Throws when the directory or a file is missing or the
 * permission proto-loader needs is not granted.
 */
export function loadAuthzProtos(options: { protoDir?: string } = {}): AuthzProtos {
  const protoDir = options.protoDir ?? PROTO_DIR;
  const cached = cache.get(protoDir);
  if (cached) return cached;
  if (!sysUidGranted()) {
    throw new Error(
      `Loading the ext_authz protos from "${protoDir}" needs --allow-sys=uid: @grpc/proto-loader ` +
        "checks include paths with fs.accessSync, which Deno implements with Deno.uid()",
    );
  }
  try {
    Deno.statSync(join(protoDir, EXTERNAL_AUTH_PROTO));
  } catch (error) {
    throw new Error(
      `Proto file "${join(protoDir, EXTERNAL_AUTH_PROTO)}" cannot be read (${(error as Error).message}); ` +
        "a compiled binary needs --include proto",
    );
  }
  const packageDefinition = loadSync(EXTERNAL_AUTH_PROTO, { ...LOADER_OPTIONS, includeDirs: [protoDir] });
  const service = packageDefinition[AUTHORIZATION_SERVICE] as grpc.ServiceDefinition | undefined;
  const check = service?.Check;
  if (!service || !check || check.path !== CHECK_PATH) {
    throw new Error(`Proto directory "${protoDir}" does not define ${CHECK_PATH}`);
  }
  const protos: AuthzProtos = {
    packageDefinition,
    service,
    decodeCheckRequest: (bytes) => check.requestDeserialize(Buffer.from(bytes)),
    encodeCheckRequest: (value) => new Uint8Array(check.requestSerialize(value)),
    decodeCheckResponse: (bytes) => check.responseDeserialize(Buffer.from(bytes)),
    encodeCheckResponse: (value) => new Uint8Array(check.responseSerialize(value)),
  };
  cache.set(protoDir, protos);
  return protos;
}
