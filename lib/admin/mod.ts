/**
 * The admin HTTP server (loopback by default): `/metrics` (Prometheus text), `/healthz` (the process
 * is alive), `/readyz` (every readiness check passes: LocalAPI reachable, listeners bound, Envoy
 * ready when L7 is used), each check named in the JSON body, and `/.well-known/jwks.json` (the public
 * keys of identity tokens, for backends to verify them; 404 while no listener sends tokens).
 *
 * @module
 */

import { formatAddr, splitAddr } from "../net/address.ts";
import { type JsonWebKeySet, JWKS_PATH } from "../identity_token/mod.ts";
import { getLogger } from "../log.ts";
import type { Telemetry } from "../telemetry/mod.ts";
import { errorMessage } from "../util/error.ts";

/** Readiness checks by name; each resolves true when ready. */
export type ReadinessChecks = Record<string, () => boolean | Promise<boolean>>;

/** A running admin server. */
export interface AdminServer {
  /** The bound address. */
  addr: Deno.NetAddr;
  /** Stops the server. */
  close(): Promise<void>;
}

async function readiness(checks: ReadinessChecks): Promise<Response> {
  const results = Object.fromEntries(
    await Promise.all(
      Object.entries(checks).map(async ([name, check]) => {
        try {
          return [name, await check()] as const;
        } catch {
          return [name, false] as const;
        }
      }),
    ),
  );
  const ready = Object.values(results).every(Boolean);
  return Response.json({ ready, checks: results }, { status: ready ? 200 : 503 });
}

/** Starts the admin server on `address` (`host:port`; an empty host means all interfaces). */
export function startAdminServer(
  address: string,
  options: {
    telemetry: Telemetry;
    checks: ReadinessChecks;
    /** The identity tokens' JWKS; `undefined` (404) while there is no signing key. */
    jwks?: () => JsonWebKeySet | undefined;
  },
): Promise<AdminServer> {
  const { ip, port } = splitAddr(address);
  return new Promise((resolve, reject) => {
    try {
      const server = Deno.serve({
        hostname: ip === "" ? "0.0.0.0" : ip,
        port: port ?? 9002,
        onListen: (addr) => {
          getLogger("admin").info("admin server on http://{addr} (/metrics, /healthz, /readyz)", {
            addr: formatAddr(addr),
          });
          resolve({ addr, close: () => server.shutdown() });
        },
      }, async (req) => {
        const path = new URL(req.url).pathname;
        if (req.method !== "GET" && req.method !== "HEAD") {
          return new Response("method not allowed\n", { status: 405 });
        }
        if (path === "/healthz") return new Response("ok\n");
        if (path === "/readyz") return await readiness(options.checks);
        if (path === JWKS_PATH) {
          const jwks = options.jwks?.();
          return jwks
            ? Response.json(jwks)
            : new Response("no identity tokens: no listener sets identityToken\n", { status: 404 });
        }
        if (path === "/metrics") {
          return new Response(await options.telemetry.metrics(), {
            headers: { "content-type": options.telemetry.registry.contentType },
          });
        }
        return new Response(`not found: try /metrics, /healthz, /readyz or ${JWKS_PATH}\n`, { status: 404 });
      });
    } catch (err) {
      const why = errorMessage(err);
      reject(new Error(`Cannot start the admin server on ${address}: ${why}; change tailvoy.adminAddress`));
    }
  });
}
