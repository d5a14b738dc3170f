/**
 * The L7 bench's stand-alone ext_authz server: the proxy's own `createAuthzServer`, identity resolver
 * (real WhoIs over the tailscaled socket given as the first argument, the proxy's default 1 s cache)
 * and telemetry, wired as `lib/l7/mod.ts` wires them, for one http listener named `web`. Its secret is
 * ours to know, so the bench can call `Check` directly and put it in PROXY headers to an Envoy.
 *
 * Prints `{"port": N, "secret": "..."}` once listening (stdout goes only to the bench); exits on SIGTERM.
 *
 * @module
 */

import { createAuthzServer, generateSecret, listenersFromConfig } from "../../lib/extauthz/mod.ts";
import { IdentityResolver } from "../../lib/identity/mod.ts";
import { LocalApiClient } from "../../lib/localapi/mod.ts";
import { setupLogging } from "../../lib/log.ts";
import { decisionEvent } from "../../lib/l7/mod.ts";
import { Telemetry } from "../../lib/telemetry/mod.ts";

const socket = Deno.args[0];
if (!socket) {
  console.error("usage: l7_authz.ts TAILSCALED_SOCKET");
  Deno.exit(2);
}
// As the bench runs the proxy: warnings only (no per-request decision lines).
setupLogging("warning", { format: "json" });
const api = new LocalApiClient(socket);
const telemetry = new Telemetry();
const resolver = new IdentityResolver(api, { ttlMs: 1000, observer: telemetry.resolverObserver() });
const secret = generateSecret();
const server = createAuthzServer({
  resolver,
  listeners: listenersFromConfig({
    listeners: { web: { protocol: "http", acceptAppCaps: false, shadow: false } },
  }),
  secret,
  onDecision: (record) => telemetry.decision(decisionEvent(record)),
});
const { port } = await server.listen("127.0.0.1:0");
console.log(JSON.stringify({ port, secret }));
Deno.addSignalListener("SIGTERM", () => {
  void server.close({ graceMs: 200 }).finally(() => {
    api[Symbol.dispose]?.();
    Deno.exit(0);
  });
});
