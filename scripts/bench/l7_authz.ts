/**
 * The L7 bench's stand-alone ext_authz servers, each alone in its process, on a unix socket in a private
 * 0700 temp dir as the proxy runs its own (`lib/l7/mod.ts`):
 *
 * - `l7_authz.ts TAILSCALED_SOCKET`: ours, `serveHttpAuthz` with the proxy's identity resolver (real
 *   WhoIs over the tailscaled socket, the proxy's default 1 s cache) and telemetry, wired as
 *   `lib/l7/mod.ts` wires them, for one http listener named `web` (the tailnet's policy allows alice);
 * - `l7_authz.ts --zero`: the floor, `Deno.serve({ path })` answering 200 to every check with no work.
 *   It prints the first check it gets (method, target, headers) as one JSON line, so the bench can send
 *   the checks-alone rows exactly what Envoy sent.
 *
 * Prints `{"socket": "/tmp/…/authz.sock"}` once listening (stdout goes only to the bench); exits on
 * SIGTERM, removing its directory.
 *
 * @module
 */

import { listenersFromConfig, serveHttpAuthz } from "../../lib/extauthz/mod.ts";
import { IdentityResolver } from "../../lib/identity/mod.ts";
import { decisionEvent } from "../../lib/extauthz/mod.ts";
import { LocalApiClient } from "../../lib/localapi/mod.ts";
import { setupLogging } from "../../lib/log.ts";
import { Telemetry } from "../../lib/telemetry/mod.ts";
import { ServiceIndex } from "../../lib/wire.ts";

/** What the zero-work server prints about the first check it got. */
export interface CapturedCheck {
  method: string;
  /** The request target (`/check/api/users`). */
  target: string;
  /** Header names (lowercase) and values, in the order Deno gives them. */
  headers: [string, string][];
}

const arg = Deno.args[0];
if (!arg) {
  console.error("usage: l7_authz.ts TAILSCALED_SOCKET | --zero");
  Deno.exit(2);
}
// Whoever can connect to the socket can name any caller: only this user may reach it.
const dir = await Deno.makeTempDir({ prefix: "tailvoy-bench-authz-" });
await Deno.chmod(dir, 0o700);
const path = `${dir}/authz.sock`;
let close: () => Promise<void>;

if (arg === "--zero") {
  let captured = false;
  const listening = Promise.withResolvers<void>();
  const server = Deno.serve({ path, onListen: () => listening.resolve() }, (request) => {
    if (!captured) {
      captured = true;
      const url = request.url;
      const check: CapturedCheck = {
        method: request.method,
        target: url.slice(url.indexOf("/", url.indexOf("//") + 2)),
        headers: [...request.headers],
      };
      console.log(JSON.stringify(check));
    }
    return new Response(null, { status: 200 });
  });
  await listening.promise;
  close = () => server.shutdown();
} else {
  // As the bench runs the proxy: warnings only (no per-request decision lines).
  setupLogging("warning", { format: "json" });
  const api = new LocalApiClient(arg);
  const telemetry = new Telemetry();
  const resolver = new IdentityResolver(api, { ttlMs: 1000, observer: telemetry.resolverObserver() });
  const server = await serveHttpAuthz(path, {
    resolver,
    listeners: listenersFromConfig({
      listeners: { web: { protocol: "http", acceptAppCaps: false, shadow: false } },
    }),
    services: new ServiceIndex(),
    onDecision: (record) => telemetry.decision(decisionEvent(record)),
  });
  close = async () => {
    await server.close();
    api[Symbol.dispose]?.();
  };
}

console.log(JSON.stringify({ socket: path }));
Deno.addSignalListener("SIGTERM", () => {
  void close().finally(async () => {
    await Deno.remove(dir, { recursive: true }).catch(() => {});
    Deno.exit(0);
  });
});
