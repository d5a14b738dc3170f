/**
 * Throwaway certificates for TLS tests, made with openssl: a CA and a server certificate for
 * app.example.com and admin.example.com signed by it (Deno's TLS client refuses a self-signed CA
 * certificate used as a server certificate).
 *
 * @module
 */

import { join } from "node:path";

const dec = new TextDecoder();

async function openssl(args: string[]): Promise<void> {
  const out = await new Deno.Command("openssl", { args, stdout: "null", stderr: "piped" }).output();
  if (!out.success) throw new Error(`openssl ${args[0]} failed: ${dec.decode(out.stderr)}`);
}

/** A throwaway CA and a server certificate for app.example.com and admin.example.com signed by it. */
export async function makeCert(dir: string): Promise<{ ca: string; cert: string; key: string }> {
  const p = (f: string) => join(dir, f);
  const ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"];
  await openssl([
    "req",
    "-x509",
    ...ec,
    "-days",
    "1",
    "-subj",
    "/CN=test CA",
    "-keyout",
    p("ca.key"),
    "-out",
    p("ca.pem"),
  ]);
  await openssl([
    "req",
    ...ec,
    "-subj",
    "/CN=app.example.com",
    "-keyout",
    p("key.pem"),
    "-out",
    p("req.pem"),
  ]);
  await Deno.writeTextFile(p("ext.cnf"), "subjectAltName=DNS:app.example.com,DNS:admin.example.com\n");
  await openssl([
    "x509",
    "-req",
    "-in",
    p("req.pem"),
    "-CA",
    p("ca.pem"),
    "-CAkey",
    p("ca.key"),
    "-CAcreateserial",
    "-days",
    "1",
    "-extfile",
    p("ext.cnf"),
    "-out",
    p("cert.pem"),
  ]);
  const read = (f: string) => Deno.readTextFile(p(f));
  return { ca: await read("ca.pem"), cert: await read("cert.pem"), key: await read("key.pem") };
}
