/**
 * The ext_authz server our Envoy calls over HTTP/1.1 on a unix socket in a private 0700 directory
 * (`Deno.serve({ path })`: no HTTP/2 stack, so no client can crash us through it; see `lib/wire.ts` for
 * what Envoy sends). Also serves `/judge` for the gRPC bridge of Envoy Gateway mode (`grpc_bridge.ts`),
 * so every check is judged here, in one place.
 *
 * - `GET|POST|… /check<path>`: Envoy's check of one request: the original method, `:path` after
 *   `/check`, the Host, `x-request-id`, and {@link AUTHZ_HEADERS}. 200 with the identity
 *   headers allows; 403 with our JSON body (a plain message for gRPC) denies.
 * - `POST /judge`: a {@link CheckInput} as JSON; answers a {@link CheckAnswer} as JSON.
 *
 * @module
 */

import { getLogger } from "../log.ts";
import { AUTHZ_HEADERS, CHECK_PATH_PREFIX, type ServiceIndex } from "../wire.ts";
import { splitAddr } from "../net/address.ts";
import {
  type AuthzDeps,
  type CheckAnswer,
  type CheckInput,
  CheckInputSchema,
  DENY_BODY,
  DENY_MESSAGE,
  denyHeaders,
  judge,
  type Verdict,
} from "./evaluate.ts";

/** Path of the gRPC bridge's JSON checks. */
export const JUDGE_PATH = "/judge";

/** Options of {@link serveHttpAuthz}. */
export interface HttpAuthzOptions extends AuthzDeps {
  /** The Services our relay names by PROXY destination port. */
  services: ServiceIndex;
}

/** A running HTTP ext_authz server. */
export interface HttpAuthzServer {
  /** The unix socket path. */
  readonly path: string;
  /** Stops accepting; in-flight checks finish. */
  close(): Promise<void>;
}

const log = getLogger("extauthz");

// The request target of `url` (Deno gives `http://<Host><target>`; Envoy sends the request's own Host).
function target(url: string): string {
  const slash = url.indexOf("/", url.indexOf("//") + 2);
  return slash < 0 ? "" : url.slice(slash);
}

function checkPath(url: string): string | undefined {
  const t = target(url);
  if (!t.startsWith(CHECK_PATH_PREFIX)) return undefined;
  const path = t.slice(CHECK_PATH_PREFIX.length);
  return path.startsWith("/") ? path : undefined;
}

/** Envoy's HTTP check as a {@link CheckInput}; anything missing or odd makes it a deny. */
export function httpCheckInput(request: Request, services: ServiceIndex): CheckInput {
  const headers = request.headers;
  const path = checkPath(request.url);
  const peer = headers.get(AUTHZ_HEADERS.peer) ?? "";
  const local = headers.get(AUTHZ_HEADERS.local);
  const { ip, port } = splitAddr(peer);
  const input: CheckInput = {
    requestId: headers.get("x-request-id") || crypto.randomUUID(),
    listener: headers.get(AUTHZ_HEADERS.listener) ?? "",
    callerIp: ip,
    method: request.method,
    host: headers.get("host") ?? "",
    path: path ?? "",
    grpc: (headers.get(AUTHZ_HEADERS.contentType) ?? "").startsWith("application/grpc"),
  };
  if (port !== undefined) input.callerPort = port;
  const localPort = local === null ? undefined : splitAddr(local).port;
  const svcName = localPort === undefined ? undefined : services.serviceAt(localPort);
  if (path === undefined) {
    input.refuse = { code: "malformed", reason: `check path ${JSON.stringify(request.url)} lacks /check` };
  } else if (svcName === undefined) {
    // Only our relay opens connections to our Envoy, and it sends only ports it indexed.
    input.refuse = {
      code: "bad_service",
      reason: `connection's PROXY destination ${JSON.stringify(local)} names no Service of ours`,
    };
  } else if (svcName !== "") {
    input.svcName = svcName;
  }
  return input;
}

/** A {@link CheckAnswer} as Envoy's HTTP check answer. */
export function verdictResponse(verdict: CheckAnswer, input: Pick<CheckInput, "grpc">): Response {
  if (verdict.allow) {
    const headers = new Headers();
    for (const h of verdict.set) headers.set(h.header.key, h.header.value);
    if (verdict.remove.length) headers.set("x-envoy-auth-headers-to-remove", verdict.remove.join(","));
    return new Response(null, { status: 200, headers });
  }
  return new Response(input.grpc ? DENY_MESSAGE : DENY_BODY, {
    status: 403,
    headers: denyHeaders(verdict.requestId, input.grpc),
  });
}

async function judgeJson(request: Request, deps: AuthzDeps): Promise<Response> {
  let input: CheckInput;
  try {
    const parsed = CheckInputSchema.parse(await request.json());
    // A refusal code from the bridge is its own adapter's; judge it as a malformed check.
    input = { ...parsed, refuse: parsed.refuse && { code: "malformed", reason: parsed.refuse.reason } };
  } catch {
    return new Response("body is not a JSON CheckInput", { status: 400 });
  }
  const { record: _, ...answer }: Verdict = await judge(input, deps);
  return Response.json(answer satisfies CheckAnswer);
}

/**
 * Serves checks on the unix socket `path` (its directory must be private: whoever can connect can
 * name any caller). Resolves once listening.
 */
export async function serveHttpAuthz(path: string, options: HttpAuthzOptions): Promise<HttpAuthzServer> {
  const { services, ...deps } = options;
  await Deno.remove(path).catch(() => {});
  const listening = Promise.withResolvers<void>();
  const server = Deno.serve({
    path,
    onListen: () => listening.resolve(),
    // A 5xx is an authz error to Envoy, which then denies (failure_mode_allow: false).
    onError: (error) => {
      log.error("ext_authz check failed unexpectedly: {error}", { error });
      return new Response("authorization failed", { status: 500 });
    },
  }, async (request) => {
    if (request.method === "POST" && target(request.url) === JUDGE_PATH) {
      return await judgeJson(request, deps);
    }
    const input = httpCheckInput(request, services);
    return verdictResponse(await judge(input, deps), input);
  });
  server.finished.catch((error) => log.error("ext_authz server stopped: {error}", { error }));
  await listening.promise;
  log.info("ext_authz listening on unix:{path}", { path });
  return {
    path,
    close: () => server.shutdown(),
  };
}
