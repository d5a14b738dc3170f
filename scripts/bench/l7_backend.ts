/**
 * The L7 bench's backend: a small HTTP/1.1 server (Deno.serve) answering every request with a short
 * JSON body, in its own process. Prints `{"port": N}` once listening; exits on SIGTERM.
 *
 * @module
 */

const body = JSON.stringify({ ok: true, service: "bench" });
const server = Deno.serve(
  { hostname: "127.0.0.1", port: 0, onListen: ({ port }) => console.log(JSON.stringify({ port })) },
  () => new Response(body, { headers: { "content-type": "application/json" } }),
);
Deno.addSignalListener("SIGTERM", () => void server.shutdown().finally(() => Deno.exit(0)));
await server.finished;
