/**
 * The LocalAPI client against real tailscaled: status, WhoIs of known peers and of an unknown address,
 * and, on a tailscaled this test starts (not logged in, so nothing else depends on it), prefs and serve
 * config round trips, the ETag conflict, the IPN bus, and what a node that is not logged in answers.
 * Failures no real tailscaled can be made to produce (a hang, garbage, a huge answer) are in
 * tests/unit/localapi_test.ts.
 */

import assert from "node:assert/strict";
import { LocalApiClient, LocalApiError, NOTIFY } from "../../lib/localapi/mod.ts";
import { acquireTailnet, waitFor } from "../../scripts/harness/tailnet.ts";

function isKind(kind: string, status?: number) {
  return (err: unknown) => {
    assert.ok(err instanceof LocalApiError, String(err));
    assert.equal(err.kind, kind, err.message);
    if (status !== undefined) assert.equal(err.status, status);
    return true;
  };
}

Deno.test({
  name: "LocalAPI client against real tailscaled",
  sanitizeResources: false,
  sanitizeOps: false,
  fn: async (t) => {
    const tailnet = await acquireTailnet();
    const gw = tailnet.node("gw");
    const api = new LocalApiClient(gw.socket, { timeoutMs: 5000 });
    try {
      await t.step("status: this node, its IPs and tags; peers only when asked", async () => {
        const status = await api.status();
        assert.equal(status.BackendState, "Running");
        assert.deepEqual([...status.TailscaleIPs].sort(), [gw.ipv4, gw.ipv6].sort());
        assert.deepEqual(status.Self?.Tags, ["tag:gw"]);
        assert.equal(status.Self?.DNSName, `${gw.fqdn}.`);
        assert.equal(status.Self?.HostName, "gw");
        assert.match(status.Version, /^\d+\.\d+\.\d+/);
        assert.equal(status.TUN, false);
        assert.deepEqual(status.Peer, {});

        const withPeers = await api.status({ peers: true });
        const peerIps = Object.values(withPeers.Peer).flatMap((p) => p.TailscaleIPs);
        for (const name of ["alice", "bob", "ci"]) {
          assert.ok(peerIps.includes(tailnet.node(name).ipv4), `${name} among the peers`);
        }
        assert.ok(!peerIps.includes(gw.ipv4), "the node itself is not a peer");
      });

      await t.step("whois of a known peer by IPv4, IPv6 and IP:port", async () => {
        const alice = tailnet.node("alice");
        for (const addr of [alice.ipv4, alice.ipv6, `${alice.ipv4}:12345`, `[${alice.ipv6}]:443`]) {
          const who = await api.whois(addr);
          assert.equal(who.UserProfile?.LoginName, "alice", addr);
          assert.equal(who.Node.Name, `${alice.fqdn}.`);
          assert.deepEqual(who.Node.Tags, []);
          assert.ok(who.Node.StableID.length > 0);
          assert.ok(who.Node.Addresses.includes(`${alice.ipv4}/32`));
        }
        const ci = await api.whois(tailnet.node("ci").ipv4);
        assert.deepEqual(ci.Node.Tags, ["tag:ci"]);
      });

      await t.step("whois of an address no peer has is a typed not-found error", async () => {
        for (const addr of ["100.100.100.100", "100.64.99.99:80", "127.0.0.1:1"]) {
          await assert.rejects(api.whois(addr), (err: unknown) => {
            isKind("not-found", 404)(err);
            assert.match((err as Error).message, /^GET \/localapi\/v0\/whois: tailscaled knows no peer/);
            return true;
          });
        }
      });

      await t.step("whois of text that is not an address is an HTTP error, not a peer", async () => {
        await assert.rejects(api.whois("not-an-ip"), (err: unknown) => {
          isKind("http", 400)(err);
          assert.match((err as Error).message, /^GET \/localapi\/v0\/whois: tailscaled answered HTTP 400: /);
          return true;
        });
      });

      await t.step("a tailscaled this test owns, before and after login", async (t) => {
        const bare = await tailnet.startBareNode("lapi");
        const own = new LocalApiClient(bare.socket, { timeoutMs: 5000 });
        const forward = { TCP: { "7443": { TCPForward: "127.0.0.1:7444" } } };
        try {
          await t.step("status says NeedsLogin and has no IPs", async () => {
            const status = await own.status();
            assert.equal(status.BackendState, "NeedsLogin");
            assert.deepEqual(status.TailscaleIPs, []);
          });

          await t.step("whois before login: no peer is known, a typed not-found error", async () => {
            await assert.rejects(own.whois(tailnet.node("alice").ipv4), isKind("not-found", 404));
          });

          await t.step(
            "a write that needs a netmap is refused as needs-login, saying what to do",
            async () => {
              await assert.rejects(own.setServeConfig(forward), (err: unknown) => {
                isKind("needs-login", 500)(err);
                assert.match(
                  (err as Error).message,
                  /^POST \/localapi\/v0\/serve-config: tailscaled is not logged in \(.*netMap is nil.*\); run `tailscale up` or set TS_AUTHKEY$/,
                );
                return true;
              });
            },
          );

          await t.step("prefs: an edit is answered with, and then read back as, the new prefs", async () => {
            const before = await own.getPrefs();
            assert.equal(before.WantRunning, false);
            const edited = await own.editPrefs({ Hostname: "lapi-renamed", AdvertiseTags: ["tag:gw"] });
            assert.equal(edited.Hostname, "lapi-renamed");
            assert.deepEqual(edited.AdvertiseTags, ["tag:gw"]);
            const after = await own.getPrefs();
            assert.equal(after.Hostname, "lapi-renamed");
            assert.deepEqual(after.AdvertiseTags, ["tag:gw"]);
            // Fields not in the edit are left alone.
            assert.equal(after.WantRunning, before.WantRunning);
            assert.equal(after.ControlURL, before.ControlURL);
            const back = await own.editPrefs({ Hostname: before.Hostname, AdvertiseTags: [] });
            assert.equal(back.Hostname, before.Hostname);
            assert.deepEqual(back.AdvertiseTags, []);
          });

          await t.step("IPN bus: the first notification carries the session and the state", async () => {
            const abort = new AbortController();
            try {
              const bus = own.watchIpnBus(NOTIFY.initialState | NOTIFY.initialPrefs, {
                signal: abort.signal,
              });
              const first = await bus.next();
              assert.equal(first.done, false);
              const notify = first.value!;
              assert.ok(notify.SessionID, "a session ID");
              // ipn.State 2 is NeedsLogin.
              assert.equal(notify.State, 2);
              await bus.return(undefined);
            } finally {
              abort.abort();
            }
          });

          await t.step("start with an auth key, then login: the node comes up Running", async () => {
            const prefs = await own.getPrefs();
            const authKey = await tailnet.preauthKey({ user: "bob" });
            await own.start({ ...prefs, WantRunning: true, ControlURL: bare.serverUrl, Hostname: "lapi" }, {
              authKey,
            });
            if ((await own.status()).BackendState !== "Running") await own.startLogin();
            const status = await waitFor(async () => {
              const s = await own.status();
              return s.BackendState === "Running" ? s : undefined;
            }, { what: "the node this test logged in to be Running", timeoutMs: 30_000 });
            assert.equal(status.Self?.HostName, "lapi");
            assert.equal(status.TailscaleIPs.length, 2);
            const after = await own.getPrefs();
            assert.equal(after.ControlURL, bare.serverUrl);
            assert.equal(after.WantRunning, true);
          });

          await t.step(
            "serve config: written with its ETag and read back; a stale ETag is refused",
            async () => {
              const empty = await own.getServeConfig();
              assert.deepEqual(empty.config, {});
              assert.ok(empty.etag, "an ETag comes with the config");
              await own.setServeConfig(forward, { etag: empty.etag });
              const read = await own.getServeConfig();
              assert.deepEqual(read.config.TCP, forward.TCP);
              assert.notEqual(read.etag, empty.etag);
              await assert.rejects(
                own.setServeConfig({}, { etag: empty.etag }),
                isKind("precondition-failed", 412),
              );
              assert.deepEqual(
                (await own.getServeConfig()).config.TCP,
                forward.TCP,
                "the refused write changed nothing",
              );
              await own.setServeConfig({}, { etag: read.etag });
              assert.deepEqual((await own.getServeConfig()).config.TCP ?? {}, {});
            },
          );
        } finally {
          own.close();
        }
      });
    } finally {
      api.close();
      await tailnet.release();
    }
  },
});
