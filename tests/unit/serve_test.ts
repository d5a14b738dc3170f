/** The serve-config merge: our entries in, our old entries out, nobody else's touched; conflicts named. */

import assert from "node:assert/strict";
import type { ServeConfig } from "../../lib/localapi/mod.ts";
import { conflicts, withEntries } from "../../lib/serve/mod.ts";

const OTHERS: ServeConfig = {
  TCP: { "443": { HTTPS: true } },
  Services: { "svc:other": { TCP: { "22": { TCPForward: "127.0.0.1:2222" } } } },
  Foreground: { "someone-else": { TCP: { "8080": { TCPForward: "127.0.0.1:8081" } } } },
};

Deno.test("our node entries go under our session, Service entries at top level, others kept", () => {
  const out = withEntries(OTHERS, "me", {
    node: [{ port: 5432, target: "127.0.0.1:40001" }],
    services: { "svc:web": [{ port: 5432, target: "127.0.0.1:40002" }] },
  });
  assert.deepEqual(out.TCP, OTHERS.TCP);
  assert.deepEqual(out.Foreground?.["someone-else"], OTHERS.Foreground!["someone-else"]);
  assert.deepEqual(out.Foreground?.me, {
    TCP: { "5432": { TCPForward: "127.0.0.1:40001", ProxyProtocol: 2 } },
  });
  assert.deepEqual(out.Services?.["svc:other"], OTHERS.Services!["svc:other"]);
  assert.deepEqual(out.Services?.["svc:web"], {
    TCP: { "5432": { TCPForward: "127.0.0.1:40002", ProxyProtocol: 2 } },
  });
});

Deno.test("removing our entries restores the config exactly, and leaves entries we did not write", () => {
  const ours = {
    node: [{ port: 5432, target: "127.0.0.1:40001" }],
    services: { "svc:web": [{ port: 5432, target: "127.0.0.1:40002" }] },
  };
  const written = withEntries(OTHERS, "me", ours);
  // Someone re-pointed svc:web:5432 after us: that entry is theirs now and must survive our cleanup.
  const taken = structuredClone(written);
  taken.Services!["svc:web"].TCP!["5432"] = { TCPForward: "127.0.0.1:9999" };
  assert.deepEqual(withEntries(written, "me", { node: [], services: {} }, ours), OTHERS);
  assert.deepEqual(
    withEntries(taken, "me", { node: [], services: {} }, ours).Services?.["svc:web"],
    { TCP: { "5432": { TCPForward: "127.0.0.1:9999" } } },
  );
});

Deno.test("conflicts name the port and who holds it; our own previous entries are no conflict", () => {
  const ours = {
    node: [{ port: 443, target: "127.0.0.1:1" }, { port: 8080, target: "127.0.0.1:2" }],
    services: { "svc:other": [{ port: 22, target: "127.0.0.1:3" }] },
  };
  assert.deepEqual(conflicts(OTHERS, "me", ours), [
    "port 443 is served by a background entry (`tailscale serve status`)",
    "port 8080 is served by another foreground session",
    "port 22 of svc:other is served by an entry tailvoy did not write",
  ]);
  const previous = { node: [], services: { "svc:other": [{ port: 22, target: "127.0.0.1:2222" }] } };
  assert.deepEqual(conflicts(OTHERS, "me", { node: [], services: ours.services }, previous), []);
});
