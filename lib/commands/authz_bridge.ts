/**
 * `tailvoy authz-bridge` (internal): the child process that serves Envoy Gateway's gRPC ext_authz and
 * asks the parent to judge each check. Only this process loads grpc-js (see `lib/extauthz/grpc_bridge.ts`).
 *
 * @module
 */

import { type CliArgs, UsageError } from "../cli.ts";

/** Serves until stopped; resolves with the exit code. */
export async function authzBridgeCommand(args: CliArgs): Promise<number> {
  const v = args.values;
  if (!v["authz-addr"] || !v.judge) throw new UsageError("authz-bridge needs --authz-addr and --judge");
  const { runGrpcBridge } = await import("../extauthz/grpc_bridge.ts");
  return await runGrpcBridge(v["authz-addr"], { judge: v.judge });
}
