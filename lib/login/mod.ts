/**
 * Logging tailscaled in from tailvoy: when tailscaled is not logged in, use `TS_AUTHKEY`, or exchange
 * `TS_CLIENT_ID`/`TS_CLIENT_SECRET` (an OAuth client, the Go tailvoy's way) for an ephemeral, pre-authorized,
 * tagged auth key through the Tailscale API, then `POST /start` with the key, hostname, tags and control
 * URL from the config. A node that is already logged in is left alone (with a warning if its tags
 * differ from the config). Secrets never reach a log line or an error message.
 *
 * @module
 */

import type { Credentials } from "../config/mod.ts";
import type { LocalApiClient, Status } from "../localapi/mod.ts";
import { getLogger } from "../log.ts";
import { delay } from "../util/async.ts";

/** Logging in failed; the message says why and what to do, without any secret. */
export class LoginError extends Error {
  override name = "LoginError";
}

/** Options of {@link mintAuthKey}. */
export interface MintOptions {
  /** Tailscale API base URL, e.g. `https://api.tailscale.com`. */
  baseUrl: string;
  /** Tags of the new node; required for OAuth-minted keys. */
  tags: readonly string[];
  /** Ephemeral node (default true, as the Go tailvoy and the CLI). */
  ephemeral?: boolean;
  /** Pre-authorized node (default true: a proxy cannot wait for approval). */
  preauthorized?: boolean;
  /** Per-request timeout in ms (default 10 s). */
  timeoutMs?: number;
}

function scrub(text: string, secrets: (string | undefined)[]): string {
  let out = text.slice(0, 300);
  for (const s of secrets) if (s) out = out.replaceAll(s, "[redacted]");
  return out.replace(/tskey-[A-Za-z0-9-]+/g, "tskey-[redacted]");
}

/** Exchanges OAuth client credentials for a one-off auth key (token endpoint, then keys endpoint). */
export async function mintAuthKey(credentials: Credentials, options: MintOptions): Promise<string> {
  if (!credentials.hasOAuthClient) throw new LoginError("Both TS_CLIENT_ID and TS_CLIENT_SECRET are needed");
  if (!options.tags.length) {
    throw new LoginError("An OAuth client can only create tagged nodes: set tailscale.tags in the config");
  }
  const base = options.baseUrl.replace(/\/+$/, "");
  const secrets = [credentials.clientSecret, credentials.clientId];
  const timeout = () => AbortSignal.timeout(options.timeoutMs ?? 10_000);
  let tokenRes: Response;
  try {
    tokenRes = await fetch(`${base}/api/v2/oauth/token`, {
      method: "POST",
      headers: { "content-type": "application/x-www-form-urlencoded" },
      body: new URLSearchParams({
        grant_type: "client_credentials",
        client_id: credentials.clientId!,
        client_secret: credentials.clientSecret!,
      }),
      signal: timeout(),
    });
  } catch (err) {
    throw new LoginError(`Cannot reach the Tailscale API at ${base}: ${scrub(String(err), secrets)}`);
  }
  const tokenText = await tokenRes.text();
  if (!tokenRes.ok) {
    throw new LoginError(
      `The OAuth client was rejected by ${base} (HTTP ${tokenRes.status}: ${
        scrub(tokenText, secrets)
      }); check TS_CLIENT_ID and TS_CLIENT_SECRET, and that the client has the auth_keys scope`,
    );
  }
  let token: string | undefined;
  try {
    token = JSON.parse(tokenText).access_token;
  } catch { /* reported below */ }
  if (!token) throw new LoginError(`The token endpoint of ${base} answered without an access_token`);
  let keyRes: Response;
  let keyText: string;
  try {
    keyRes = await fetch(`${base}/api/v2/tailnet/-/keys`, {
      method: "POST",
      headers: { authorization: `Bearer ${token}`, "content-type": "application/json" },
      body: JSON.stringify({
        capabilities: {
          devices: {
            create: {
              reusable: false,
              ephemeral: options.ephemeral ?? true,
              preauthorized: options.preauthorized ?? true,
              tags: options.tags,
            },
          },
        },
      }),
      signal: timeout(),
    });
    keyText = await keyRes.text();
  } catch (err) {
    throw new LoginError(
      `Cannot create an auth key: the Tailscale API at ${base} did not answer (${
        scrub(String(err), [...secrets, token])
      }); check that it is reachable, then restart`,
    );
  }
  if (!keyRes.ok) {
    throw new LoginError(
      `Creating an auth key at ${base} failed (HTTP ${keyRes.status}: ${
        scrub(keyText, [...secrets, token])
      }); the OAuth client must own the tags ${
        options.tags.join(",")
      } (tagOwners) and have the auth_keys scope`,
    );
  }
  let key: string | undefined;
  try {
    key = JSON.parse(keyText).key;
  } catch { /* reported below */ }
  if (!key) throw new LoginError(`The keys endpoint of ${base} answered without a key`);
  return key;
}

/** Options of {@link ensureLoggedIn}. */
export interface LoginOptions {
  credentials: Credentials;
  /** ACL tags the node should have (`tailscale.tags`). */
  tags: readonly string[];
  /** Node hostname (`tailscale.hostname`). */
  hostname?: string;
  /** Control server URL (`tailvoy.controlUrl`), e.g. a headscale. */
  controlUrl?: string;
  /** Tailscale API base URL for the OAuth exchange. */
  apiBaseUrl: string;
  /** How long to wait for tailscaled to reach Running, in ms (default 30 s). */
  timeoutMs?: number;
}

const NOT_LOGGED_IN = new Set(["NeedsLogin", "NoState", "Stopped"]);

function warnOnTags(status: Status, tags: readonly string[], what: string): void {
  const have = [...(status.Self?.Tags ?? [])].sort().join(",");
  const want = [...tags].sort().join(",");
  if (tags.length && have !== want) {
    getLogger("login").warn(
      "tailscaled {what} with tags [{have}], not the configured tailscale.tags [{want}]",
      {
        what,
        have,
        want,
      },
    );
  }
}

/**
 * Makes sure tailscaled is logged in, logging it in with the credentials if it is not. Resolves with
 * the Running status. Throws {@link LoginError} when it is not logged in and no credentials are set.
 */
export async function ensureLoggedIn(api: LocalApiClient, options: LoginOptions): Promise<Status> {
  const log = getLogger("login");
  const status = await api.status();
  if (status.BackendState === "Running") {
    warnOnTags(status, options.tags, "is already logged in");
    return status;
  }
  if (!NOT_LOGGED_IN.has(status.BackendState)) return status; // Starting: let the caller wait
  const { credentials } = options;
  if (!credentials.authKey && !credentials.hasOAuthClient) {
    throw new LoginError(
      `tailscaled is not logged in (${status.BackendState}); run \`tailscale up\`, or set TS_AUTHKEY (or TS_CLIENT_ID and TS_CLIENT_SECRET) for tailvoy to log it in`,
    );
  }
  const authKey = credentials.authKey ??
    await mintAuthKey(credentials, { baseUrl: options.apiBaseUrl, tags: options.tags });
  const prefs = await api.getPrefs();
  await api.start({
    ...prefs,
    WantRunning: true,
    ...(options.controlUrl ? { ControlURL: options.controlUrl } : {}),
    ...(options.hostname ? { Hostname: options.hostname } : {}),
    // The key carries the node's tags (an OAuth-minted key gets the configured ones). Advertising them
    // as well is refused by headscale for pre-auth keys, and adds nothing with Tailscale.
  }, { authKey });
  // As `tailscale up`: after Start, ask for a login, which uses the key instead of a browser.
  if ((await api.status()).BackendState !== "Running") await api.startLogin();
  log.info("logging tailscaled in ({how}) to {control} as {hostname}, expecting tags [{tags}]", {
    how: credentials.authKey ? "TS_AUTHKEY" : "OAuth client",
    control: options.controlUrl ?? (prefs.ControlURL || "the default control server"),
    hostname: options.hostname ?? (prefs.Hostname || "(tailscaled's default)"),
    tags: options.tags.join(","),
  });
  const deadline = Date.now() + (options.timeoutMs ?? 30_000);
  let last = "";
  while (Date.now() < deadline) {
    const s = await api.status();
    if (s.BackendState === "Running") {
      warnOnTags(s, options.tags, "logged in");
      return s;
    }
    last = s.BackendState;
    await delay(200);
  }
  throw new LoginError(
    `tailscaled did not come up after login (state ${last}); check the key (expired? used? tags allowed?) and the control server`,
  );
}
