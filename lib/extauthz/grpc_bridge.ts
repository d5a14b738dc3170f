/**
 * The gRPC bridge: a child process (`tailvoy authz-bridge`) that serves Envoy Gateway's gRPC ext_authz
 * calls and has each one judged by the parent over its private unix socket (`POST /judge`). grpc-js runs
 * on Deno's `node:http2`, which a client can abort inside nghttp2 (denoland/deno#36788); here that ends
 * this process only. The parent restarts it (`grpc_process.ts`); while it is down Envoy cannot reach
 * ext_authz and denies.
 *
 * Protocol with the parent: the bridge prints one JSON line `{"listening":{"host","port"}}` on stdout
 * once bound, logs on stderr, and exits when its stdin closes (the parent is gone).
 *
 * @module
 */

import { getLogger } from "../log.ts";
import { type CheckAnswer, checkInputFromRequest, toCheckResponse } from "./evaluate.ts";
import { createAuthzServer } from "./grpc.ts";
import { JUDGE_PATH } from "./http.ts";

const log = getLogger("extauthz", "bridge");

/** How long a check may wait for the parent's answer before it is denied. */
const JUDGE_TIMEOUT_MS = 1000;

/**
 * Runs the bridge until stdin closes: gRPC on `listen`, judgement from the parent at unix socket
 * `judge`. Resolves with the exit code.
 */
export async function runGrpcBridge(listen: string, options: { judge: string }): Promise<number> {
  const client = Deno.createHttpClient({ proxy: { transport: "unix", path: options.judge } });
  const server = createAuthzServer({
    check: async (request) => {
      const input = checkInputFromRequest(request);
      let answer: CheckAnswer = { allow: false, set: [], remove: [], requestId: input.requestId };
      try {
        const response = await fetch(`http://tailvoy${JUDGE_PATH}`, {
          method: "POST",
          body: JSON.stringify(input),
          client,
          signal: AbortSignal.timeout(JUDGE_TIMEOUT_MS),
        });
        if (!response.ok) throw new Error(`HTTP ${response.status}: ${await response.text()}`);
        answer = await response.json();
      } catch (error) {
        // The parent is the only judge: without its answer, deny.
        log.error("deny: the proxy did not judge the check: {error}", { error, requestId: input.requestId });
      }
      return toCheckResponse(answer, input);
    },
  });
  const bound = await server.listen(listen);
  await Deno.stdout.write(new TextEncoder().encode(`${JSON.stringify({ listening: bound })}\n`));
  // Our stdin is the parent's pipe: EOF means the parent exited, and so do we.
  for await (const _ of Deno.stdin.readable) { /* nothing is sent */ }
  await server.close({ graceMs: 0 });
  client.close();
  return 0;
}
