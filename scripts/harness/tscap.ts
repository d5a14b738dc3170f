/**
 * A backend built like the Goa `tscap` plugin (a fake of an application, not of a peer we run: the
 * plugin is Go middleware inside someone's service). It reads `Tailscale-App-Capabilities`, parses
 * `{"<cap>":[{"action":[...],"resources":[...]}]}` and answers `GET /<action>/<resource>`:
 * 401 without the header, 403 when no grant of `cap` covers the action and resource, 200 otherwise.
 *
 * Matching as the plugin documents: an action or resource of `*` in the grant matches anything;
 * otherwise strings must be equal (a grant `items/*` matches the required `items/*` exactly, and
 * `items/123` is not `items/456`).
 *
 * @module
 */

interface Grant {
  action?: string[];
  resources?: string[];
}

const covers = (granted: string[] | undefined, required: string) =>
  (granted ?? []).some((g) => g === "*" || g === required);

/** Whether any grant of `cap` in the header value allows `action` on `resource`; `undefined` without a header. */
export function tscapDecide(
  header: string | null,
  cap: string,
  required: { action: string; resource: string },
): 200 | 401 | 403 {
  if (header === null) return 401;
  let caps: Record<string, Grant[]>;
  try {
    caps = JSON.parse(header);
  } catch {
    return 401;
  }
  const grants = Object.hasOwn(caps, cap) && Array.isArray(caps[cap]) ? caps[cap] : [];
  return grants.some((g) => covers(g.action, required.action) && covers(g.resources, required.resource))
    ? 200
    : 403;
}

/** The tscap-style backend for `cap` on 127.0.0.1. */
export function tscapBackend(cap: string): { port: number; close: () => Promise<void> } {
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen: () => {} }, (req) => {
    const [, action = "", ...rest] = decodeURIComponent(new URL(req.url).pathname).split("/");
    const status = tscapDecide(req.headers.get("tailscale-app-capabilities"), cap, {
      action,
      resource: rest.join("/"),
    });
    return Response.json({ status, user: req.headers.get("x-tailscale-user") }, { status });
  });
  return { port: server.addr.port, close: () => server.shutdown() };
}
