/**
 * A gRPC `grpc.health.v1.Health` server (h2c, `@grpc/grpc-js`) for tests and `deno task dev`: always
 * SERVING, and it remembers the `x-tailscale-ip` of the last call (what ext_authz let through).
 *
 * @module
 */

import { join } from "node:path";
import * as grpc from "@grpc/grpc-js";
import { loadSync } from "@grpc/proto-loader";
import { PROJECT_ROOT } from "./peers.ts";

const FIXTURES = join(PROJECT_ROOT, "tests", "fixtures", "l7");

// deno-lint-ignore no-explicit-any
export type GrpcConstructor = new (address: string, credentials: grpc.ChannelCredentials) => any;

/** The health service from tests/fixtures/l7/health.proto. */
export function healthService(): { service: grpc.ServiceDefinition; Client: GrpcConstructor } {
  const definition = loadSync("health.proto", { keepCase: true, enums: String, includeDirs: [FIXTURES] });
  // deno-lint-ignore no-explicit-any
  const pkg = grpc.loadPackageDefinition(definition) as any;
  const Client = pkg.grpc.health.v1.Health;
  return { service: Client.service, Client };
}

/** A gRPC health server (h2c) that records the identity headers of the last call. */
export async function grpcHealthBackend(
  options: { port?: number } = {},
): Promise<{ port: number; lastIp: () => string; close: () => void }> {
  const server = new grpc.Server();
  let lastIp = "";
  server.addService(healthService().service, {
    Check: (
      call: grpc.ServerUnaryCall<unknown, unknown>,
      callback: grpc.sendUnaryData<{ status: string }>,
    ) => {
      lastIp = String(call.metadata.get("x-tailscale-ip")[0] ?? "");
      callback(null, { status: "SERVING" });
    },
    Watch: (call: grpc.ServerWritableStream<unknown, unknown>) => call.end(),
  });
  const port = await new Promise<number>((resolve, reject) =>
    server.bindAsync(
      `127.0.0.1:${options.port ?? 0}`,
      grpc.ServerCredentials.createInsecure(),
      (e, p) => e ? reject(e) : resolve(p),
    )
  );
  return { port, lastIp: () => lastIp, close: () => server.forceShutdown() };
}
