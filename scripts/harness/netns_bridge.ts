/**
 * A TCP-to-unix-socket bridge, the half of {@link ../tun_node.ts} that runs inside the TUN node's network
 * namespace (`ip netns exec NS deno run … netns_bridge.ts HOST:PORT SOCKET`): it listens on `HOST:PORT`
 * there (headscale's address as every node knows it, 127.0.0.1) and carries each connection to a unix
 * socket, whose other end, in the suite's namespace, connects to the real headscale. A unix socket is a
 * file, not part of a network namespace, so no TCP crosses the veth (the suite's leak check stays clean).
 * Prints `ready` once listening; runs until killed.
 *
 * @module
 */

import { relay, type RelayConn } from "../../lib/l4/relay.ts";

/** Carries every connection `listener` accepts to a new connection made by `connect`, until it closes. */
export async function bridge(
  listener: Deno.Listener,
  connect: () => Promise<Deno.Conn>,
): Promise<void> {
  for await (const conn of listener) {
    connect().then(
      (upstream) => relay(conn as RelayConn, upstream as RelayConn),
      () => conn.close(),
    );
  }
}

if (import.meta.main) {
  const [listen, socket] = Deno.args;
  const colon = listen?.lastIndexOf(":") ?? -1;
  if (!socket || colon < 0) {
    console.error("Usage: netns_bridge.ts HOST:PORT UNIX_SOCKET_PATH");
    Deno.exit(2);
  }
  const listener = Deno.listen({ hostname: listen.slice(0, colon), port: Number(listen.slice(colon + 1)) });
  console.log("ready");
  await bridge(listener, () => Deno.connect({ transport: "unix", path: socket }));
}
