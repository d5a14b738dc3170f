/**
 * A baseline for the L4 bench: our `relay()` (lib/l4/relay.ts) alone, in its own process — accept,
 * dial the backend, relay — without the PROXY header, identity, policy, flow table, telemetry and logs
 * of the real listener. What is left is the cost of the Deno runtime plus the relay loop; the gap to the
 * real proxy is the cost of everything else. Usage: `l4_bare_relay.ts BACKEND_PORT`; prints
 * `{"port":N}` once listening, then runs until killed.
 *
 * @module
 */

import { relay, type RelayConn } from "../../lib/l4/relay.ts";

if (import.meta.main) {
  const backendPort = Number(Deno.args[0]);
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  console.log(JSON.stringify({ port: listener.addr.port }));
  for await (const conn of listener) {
    conn.setNoDelay(true);
    Deno.connect({ hostname: "127.0.0.1", port: backendPort }).then((upstream) => {
      upstream.setNoDelay(true);
      void relay(conn as RelayConn, upstream as RelayConn).done;
    }, () => conn.close());
  }
}
