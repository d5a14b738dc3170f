/**
 * The kernel's socket diagnostics through FFI: the owner of the other end of a loopback connection,
 * found by its exact 4-tuple.
 */

import assert from "node:assert/strict";
import { SockDiag, SockDiagError } from "../../lib/sockdiag/mod.ts";

Deno.test("tcpOwner: the other end of a loopback connection is ours (uid and inode); unknown ends are undefined", async () => {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const client = await Deno.connect({ hostname: "127.0.0.1", port: listener.addr.port });
  const server = await listener.accept();
  const diag = SockDiag.open();
  try {
    const peer = server.remoteAddr as Deno.NetAddr;
    const owner = diag.tcpOwner({ ip: peer.hostname, port: peer.port }, {
      ip: "127.0.0.1",
      port: listener.addr.port,
    });
    assert.equal(owner?.uid, Deno.uid());
    // The inode is the client socket's: one of this process's fds.
    const links: string[] = [];
    for await (const fd of Deno.readDir("/proc/self/fd")) {
      links.push(await Deno.readLink(`/proc/self/fd/${fd.name}`).catch(() => ""));
    }
    assert.ok(links.includes(`socket:[${owner?.inode}]`), "the inode of a socket of ours");
    // The server's own end, seen the other way round, is ours too; a 4-tuple nobody has is not found.
    assert.equal(
      diag.tcpOwner({ ip: "127.0.0.1", port: listener.addr.port }, { ip: peer.hostname, port: peer.port })
        ?.uid,
      Deno.uid(),
    );
    assert.equal(
      diag.tcpOwner({ ip: "127.0.0.1", port: 1 }, { ip: "127.0.0.1", port: listener.addr.port }),
      undefined,
    );
    assert.throws(
      () => diag.tcpOwner({ ip: "not-an-ip", port: 1 }, { ip: "127.0.0.1", port: 2 }),
      SockDiagError,
    );
    assert.throws(
      () => diag.tcpOwner({ ip: "::1", port: 1 }, { ip: "127.0.0.1", port: 2 }),
      /different families/,
    );
  } finally {
    diag.close();
    client.close();
    server.close();
    listener.close();
  }
});

Deno.test("tcpOwner: IPv6 loopback", async () => {
  const listener = Deno.listen({ hostname: "::1", port: 0 });
  const client = await Deno.connect({ hostname: "::1", port: listener.addr.port });
  const server = await listener.accept();
  const diag = SockDiag.open();
  try {
    const peer = server.remoteAddr as Deno.NetAddr;
    assert.equal(
      diag.tcpOwner({ ip: peer.hostname, port: peer.port }, { ip: "::1", port: listener.addr.port })?.uid,
      Deno.uid(),
    );
  } finally {
    diag.close();
    client.close();
    server.close();
    listener.close();
  }
});
