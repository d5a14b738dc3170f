/**
 * A fake tailscaled LocalAPI on a unix socket, for the one feature no real peer here can play:
 * Tailscale Services (headscale does not implement them, so a real tailscaled never becomes a Service
 * host). It speaks the shapes of the fact sheet: `status`, `serve-config` with an ETag and 412 on a stale
 * `If-Match`, `prefs` GET/PATCH (MaskedPrefs), `whois` whose caps depend on `svc_name`, and
 * `watch-ipn-bus` whose end drops the session's foreground entries, as tailscaled does.
 *
 * @module
 */

/** One recorded write, for ordering assertions. */
export interface FakeEvent {
  at: number;
  what: "serve-config" | "prefs";
  body: unknown;
}

/** Options of {@link FakeLocalApi.start}. */
export interface FakeOptions {
  serveConfig?: Record<string, unknown>;
  prefs?: Record<string, unknown>;
  tags?: string[];
  /** WhoIs answer for an address and Service; `undefined` means 404. */
  whois: (addr: string, svcName?: string) => Record<string, unknown> | undefined;
}

async function etagOf(value: unknown): Promise<string> {
  const digest = await crypto.subtle.digest("SHA-256", new TextEncoder().encode(JSON.stringify(value)));
  return [...new Uint8Array(digest)].map((b) => b.toString(16).padStart(2, "0")).join("");
}

/** A running fake LocalAPI. */
export class FakeLocalApi {
  readonly socket: string;
  serveConfig: Record<string, unknown>;
  prefs: Record<string, unknown>;
  readonly events: FakeEvent[] = [];
  /** When set, the next serve-config POST meets a concurrent writer: this change lands first (412). */
  raceOnce?: (config: Record<string, unknown>) => void;
  /** 412 answers given. */
  conflicts = 0;
  readonly #server: Deno.HttpServer;
  readonly #dir: string;
  #sessions = 0;

  private constructor(dir: string, options: FakeOptions) {
    this.#dir = dir;
    this.socket = `${dir}/tailscaled.sock`;
    this.serveConfig = options.serveConfig ?? {};
    this.prefs = {
      ControlURL: "",
      WantRunning: true,
      Hostname: "gw",
      AdvertiseServices: [],
      ...options.prefs,
    };
    const tags = options.tags ?? ["tag:gw"];
    this.#server = Deno.serve(
      { path: this.socket, onListen: () => {} },
      (req) => this.#handle(req, options, tags),
    );
  }

  /** Starts a fake on a socket in a new temp dir. */
  static async start(options: FakeOptions): Promise<FakeLocalApi> {
    return new FakeLocalApi(await Deno.makeTempDir({ prefix: "tailvoy-fake-localapi-" }), options);
  }

  async #handle(req: Request, options: FakeOptions, tags: string[]): Promise<Response> {
    const url = new URL(req.url);
    const path = url.pathname.replace("/localapi/v0/", "");
    if (req.headers.get("origin") || req.headers.get("referer")) {
      return new Response("invalid localapi request\n", { status: 403 });
    }
    switch (`${req.method} ${path}`) {
      case "GET status":
        return Response.json({
          Version: "1.102.3-fake",
          TUN: false,
          BackendState: "Running",
          TailscaleIPs: ["100.64.0.1", "fd7a:115c:a1e0::1"],
          Self: {
            HostName: "gw",
            DNSName: "gw.fake.test.",
            TailscaleIPs: ["100.64.0.1", "fd7a:115c:a1e0::1"],
            Tags: tags,
            CapMap: {
              "service-host": [
                Object.fromEntries(
                  ((this.prefs.AdvertiseServices as string[]) ?? []).map((s) => [s, ["100.100.0.1"]]),
                ),
              ],
            },
          },
        });
      case "GET serve-config":
        return Response.json(this.serveConfig, { headers: { etag: await etagOf(this.serveConfig) } });
      case "POST serve-config": {
        if (this.raceOnce) {
          this.raceOnce(this.serveConfig);
          this.raceOnce = undefined;
        }
        const ifMatch = req.headers.get("if-match");
        if (ifMatch && ifMatch !== await etagOf(this.serveConfig)) {
          this.conflicts++;
          return new Response("etag mismatch\n", { status: 412 });
        }
        this.serveConfig = await req.json() ?? {};
        this.events.push({
          at: performance.now(),
          what: "serve-config",
          body: structuredClone(this.serveConfig),
        });
        return new Response(null, { status: 200 });
      }
      case "GET prefs":
        return Response.json(this.prefs);
      case "PATCH prefs": {
        const masked = await req.json() as Record<string, unknown>;
        for (const [k, v] of Object.entries(masked)) {
          if (!k.endsWith("Set") && masked[`${k}Set`]) this.prefs[k] = v;
        }
        this.events.push({ at: performance.now(), what: "prefs", body: structuredClone(this.prefs) });
        return Response.json(this.prefs);
      }
      case "GET whois": {
        const answer = options.whois(
          url.searchParams.get("addr") ?? "",
          url.searchParams.get("svc_name") ?? undefined,
        );
        return answer ? Response.json(answer) : new Response("no match for IP:port\n", { status: 404 });
      }
      case "GET watch-ipn-bus": {
        const sid = `session-${++this.#sessions}`;
        const first = new TextEncoder().encode(
          JSON.stringify({ Version: "1.102.3-fake", SessionID: sid, State: 6 }) + "\n",
        );
        let timer: ReturnType<typeof setInterval>;
        const body = new ReadableStream<Uint8Array>({
          start: (controller) => {
            controller.enqueue(first);
            timer = setInterval(() => controller.enqueue(new TextEncoder().encode("{}\n")), 5000);
          },
          cancel: () => {
            clearInterval(timer);
            // As tailscaled: the session's foreground entries go with its bus connection.
            const fg = this.serveConfig.Foreground as Record<string, unknown> | undefined;
            if (fg) delete fg[sid];
          },
        });
        return new Response(body, { headers: { "content-type": "application/json" } });
      }
    }
    return new Response("not found\n", { status: 404 });
  }

  /** Stops the fake and removes its socket. */
  async close(): Promise<void> {
    await this.#server.shutdown();
    await Deno.remove(this.#dir, { recursive: true }).catch(() => {});
  }
}
