/**
 * Smoke test of the tailnet in a box against real headscale + tailscaled: connections between nodes,
 * WhoIs through the LocalAPI client, app-capability grants, tags, UDP, and a policy change at run time.
 */

import assert from "node:assert/strict";
import { LocalApiClient } from "../../lib/localapi/mod.ts";
import { fixture, tailnetFixture } from "../../scripts/harness/fixture.ts";
import { CAP, defaultPolicy, waitFor } from "../../scripts/harness/tailnet.ts";

async function readAll(conn: Deno.Conn): Promise<string> {
  const chunks: Uint8Array[] = [];
  const buf = new Uint8Array(1024);
  while (true) {
    const n = await conn.read(buf);
    if (n === null) break;
    chunks.push(buf.slice(0, n));
  }
  return new TextDecoder().decode(new Uint8Array(chunks.flatMap((c) => [...c])));
}

Deno.test.sanitizer({ ops: false, resources: false });

const tailnetOnce = tailnetFixture();

/** A LocalAPI client of the gateway's tailscaled. */
const apiOnce = fixture(async (cleanup) => {
  const tailnet = await tailnetOnce();
  const api = new LocalApiClient(tailnet.node("gw").socket, { timeoutMs: 2000 });
  cleanup.defer(() => api.close());
  return api;
});

/** The tailnet with the default policy (whose grants these tests look for), and the gateway's API. */
async function smoke() {
  const tailnet = await tailnetOnce();
  await tailnet.usePolicy(defaultPolicy());
  return { tailnet, gw: tailnet.node("gw"), api: await apiOnce() };
}

Deno.test("tailnet in a box: alice reaches the gateway; WhoIs of the forwarded connection is alice with her grants", async () => {
  const { tailnet, gw, api } = await smoke();
  // Userspace tailscaled forwards gw:PORT to 127.0.0.1:PORT, the address WhoIs maps back to alice.
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (listener.addr as Deno.NetAddr).port;
  try {
    const accepted = listener.accept();
    const client = await tailnet.dial("alice", gw.ipv4, port);
    const server = await accepted;
    const remote = server.remoteAddr as Deno.NetAddr;
    assert.equal(remote.hostname, "127.0.0.1");
    // tailscaled registers the mapping just after dialing us (so the first lookup can 404) and
    // drops it when the connection closes: look up while it is open, as the proxy does.
    const who = await waitFor(() => api.whois(`127.0.0.1:${remote.port}`, { proto: "tcp" }), {
      what: "WhoIs of the forwarded connection",
      timeoutMs: 2000,
    });
    await server.write(new TextEncoder().encode("hello alice"));
    server.close();
    assert.equal(await readAll(client), "hello alice");
    client.close();
    const alice = tailnet.node("alice");
    assert.equal(who.UserProfile?.LoginName, "alice");
    assert.equal(who.Node.Name, `${alice.fqdn}.`);
    assert.deepEqual(who.Node.Tags, []);
    assert.ok(who.Node.Addresses.includes(`${alice.ipv4}/32`));
    assert.deepEqual(who.CapMap[CAP], [{ listeners: ["web"], routes: ["/api/*"] }, {
      listeners: ["db"],
    }]);
  } finally {
    listener.close();
  }
});

Deno.test("tailnet in a box: bob has no tailvoy grant; the tagged ci node shows its tags and its own rule", async () => {
  const { tailnet, api } = await smoke();
  const bob = await api.whois(tailnet.node("bob").ipv4);
  assert.equal(bob.UserProfile?.LoginName, "bob");
  assert.equal(bob.CapMap[CAP], undefined);
  const ci = await api.whois(tailnet.node("ci").ipv6);
  assert.deepEqual(ci.Node.Tags, ["tag:ci"]);
  assert.deepEqual(ci.CapMap[CAP], [{ listeners: ["db"], methods: ["GET"] }]);
});

Deno.test("tailnet in a box: an unknown address is a typed not-found error", async () => {
  const { api } = await smoke();
  await assert.rejects(api.whois("100.100.100.100"), (err: Error & { kind?: string }) => {
    assert.equal(err.kind, "not-found");
    return true;
  });
});

Deno.test("tailnet in a box: UDP from bob reaches a listener behind the gateway", async () => {
  const { tailnet, gw } = await smoke();
  const dgram = await import("node:dgram");
  const server = dgram.createSocket("udp4");
  await new Promise<void>((resolve) => server.bind(0, "127.0.0.1", resolve));
  server.on("message", (msg: Uint8Array, rinfo: { port: number; address: string }) => {
    server.send(
      new Uint8Array([...new TextEncoder().encode("echo:"), ...msg]),
      rinfo.port,
      rinfo.address,
    );
  });
  const udp = await tailnet.udp("bob");
  try {
    // The first datagrams can be lost while the path between the nodes is set up.
    const reply = await waitFor(async () => {
      await udp.send(gw.ipv4, server.address().port, new TextEncoder().encode("ping"));
      return await udp.receive(500);
    }, { what: "a UDP echo through the tailnet", timeoutMs: 10_000 });
    assert.equal(new TextDecoder().decode(reply), "echo:ping");
  } finally {
    udp.close();
    server.close();
  }
});

Deno.test("tailnet in a box: a policy change at run time reaches WhoIs; restoring it brings the grant back", async () => {
  const { tailnet, api } = await smoke();
  const alice = tailnet.node("alice");
  const revoked = defaultPolicy();
  revoked.grants = (revoked.grants as { app?: unknown }[]).filter((g) => !g.app);
  await tailnet.setPolicy(revoked);
  try {
    await waitFor(
      async () => (await api.whois(alice.ipv4)).CapMap[CAP] === undefined ? true : undefined,
      {
        what: "alice's grant to disappear after the policy change",
        timeoutMs: 15_000,
        intervalMs: 200,
      },
    );
  } finally {
    await tailnet.setPolicy(defaultPolicy());
  }
  await waitFor(async () => (await api.whois(alice.ipv4)).CapMap[CAP] ? true : undefined, {
    what: "alice's grant to come back",
    timeoutMs: 15_000,
    intervalMs: 200,
  });
});
