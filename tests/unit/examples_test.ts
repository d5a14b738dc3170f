/**
 * Every manifest under examples/kubernetes: Kubernetes shape (names, images, selectors, referenced ports,
 * volumes and ConfigMaps) and the tailvoy config in each ConfigMap, loaded with the real config parser.
 * Mutated copies show each check can fail.
 */
import assert from "node:assert/strict";
import { parseAllDocuments } from "yaml";
import { type Config, ConfigError, createServiceMatcher, parseConfig } from "../../lib/config/mod.ts";

const DIR = new URL("../../examples/kubernetes/", import.meta.url);
const FILES = [...Deno.readDirSync(DIR)].map((entry) => entry.name).filter((name) => name.endsWith(".yaml"))
  .sort();

interface Port {
  name?: string;
  containerPort?: number;
}
interface Probe {
  httpGet?: { port: string | number };
  tcpSocket?: { port: string | number };
  grpc?: { port: number };
}
interface Container {
  name?: string;
  image?: string;
  ports?: Port[];
  readinessProbe?: Probe;
  livenessProbe?: Probe;
  startupProbe?: Probe;
  volumeMounts?: { name: string }[];
  env?: { name: string; value?: string }[];
}
interface PodSpec {
  containers?: Container[];
  initContainers?: Container[];
  volumes?: { name: string; configMap?: { name: string } }[];
}
interface Manifest {
  apiVersion?: string;
  kind?: string;
  metadata?: { name?: string; namespace?: string; labels?: Record<string, string> };
  // deno-lint-ignore no-explicit-any
  spec?: any;
  data?: Record<string, string>;
}

const WORKLOADS = ["Deployment", "StatefulSet", "DaemonSet"];
// Pods Envoy Gateway creates from the EnvoyProxy (envoy-gateway.yaml): no workload in the file to match.
const managedElsewhere = (selector: Record<string, string>) =>
  Object.keys(selector).some((key) => key.startsWith("gateway.envoyproxy.io/"));

const namespaceOf = (doc: Manifest) => doc.metadata?.namespace ?? "default";
const nameOf = (doc: Manifest) => `${doc.kind}/${doc.metadata?.name}`;
const matches = (selector: Record<string, string>, labels: Record<string, string> = {}) =>
  Object.entries(selector).every(([key, value]) => labels[key] === value);
const podSpec = (doc: Manifest): PodSpec => doc.spec?.template?.spec ?? {};
const containersOf = (spec: PodSpec) => [...(spec.initContainers ?? []), ...(spec.containers ?? [])];
const hasPort = (containers: Container[], port: string | number) =>
  containers.some((container) =>
    (container.ports ?? []).some((p) => typeof port === "number" ? p.containerPort === port : p.name === port)
  );

/** Every problem in one manifest file's text, and the tailvoy configs found in its ConfigMaps. */
function check(file: string, text: string): { problems: string[]; configs: Config[]; docs: Manifest[] } {
  const problems: string[] = [];
  const configs: Config[] = [];
  const parsed = parseAllDocuments(text);
  if (!Array.isArray(parsed)) return { problems: [`${file}: no YAML documents`], configs, docs: [] };
  for (const doc of parsed) {
    for (const error of [...doc.errors, ...doc.warnings]) problems.push(`${file}: YAML: ${error.message}`);
  }
  const docs: Manifest[] = parsed.map((doc) => doc.toJS()).filter((doc) => doc !== null);
  const workloads = docs.filter((doc) => WORKLOADS.includes(doc.kind ?? ""));
  const selected = (doc: Manifest, selector: Record<string, string>) =>
    workloads.filter((w) =>
      namespaceOf(w) === namespaceOf(doc) && matches(selector, w.spec?.template?.metadata?.labels)
    );
  const podsFor = (doc: Manifest, selector: Record<string, string> | undefined, what: string) => {
    if (!selector || managedElsewhere(selector)) return undefined;
    const pods = selected(doc, selector);
    if (pods.length === 0) problems.push(`${file}: ${nameOf(doc)}: ${what} matches no workload`);
    return pods.length ? pods.flatMap((w) => containersOf(podSpec(w))) : undefined;
  };

  docs.forEach((doc, index) => {
    for (const key of ["apiVersion", "kind"] as const) {
      if (typeof doc[key] !== "string" || doc[key] === "") {
        problems.push(`${file}: document ${index}: no ${key}`);
      }
    }
    if (typeof doc.metadata?.name !== "string") problems.push(`${file}: document ${index}: no metadata.name`);
    const where = `${file}: ${nameOf(doc)}`;

    if (WORKLOADS.includes(doc.kind ?? "")) {
      const labels = doc.spec?.template?.metadata?.labels;
      if (!doc.spec?.selector?.matchLabels || !matches(doc.spec.selector.matchLabels, labels)) {
        problems.push(`${where}: selector does not match the pod template's labels`);
      }
      const spec = podSpec(doc);
      const volumes = new Map((spec.volumes ?? []).map((volume) => [volume.name, volume]));
      for (const container of containersOf(spec)) {
        const at = `${where}: container ${container.name}`;
        if (!container.name) problems.push(`${where}: a container has no name`);
        if (!container.image) problems.push(`${at}: no image`);
        for (const probe of [container.readinessProbe, container.livenessProbe, container.startupProbe]) {
          const port = probe?.httpGet?.port ?? probe?.tcpSocket?.port ?? probe?.grpc?.port;
          if (port !== undefined && !hasPort([container], port)) {
            problems.push(`${at}: probe port ${port} not declared`);
          }
        }
        for (const mount of container.volumeMounts ?? []) {
          if (!volumes.has(mount.name)) problems.push(`${at}: mounts unknown volume ${mount.name}`);
        }
      }
      for (const volume of volumes.values()) {
        const name = volume.configMap?.name;
        const defined = docs.some((d) =>
          d.kind === "ConfigMap" && d.metadata?.name === name && namespaceOf(d) === namespaceOf(doc)
        );
        if (name !== undefined && !defined) {
          problems.push(`${where}: volume ${volume.name}: no ConfigMap ${name}`);
        }
      }
    }

    if (doc.kind === "Service") {
      const containers = podsFor(doc, doc.spec?.selector, "selector");
      for (const port of doc.spec?.ports ?? []) {
        const target = port.targetPort ?? port.port;
        if (containers && !hasPort(containers, target)) {
          problems.push(`${where}: targetPort ${target} not declared`);
        }
      }
    }
    if (doc.kind === "NetworkPolicy") {
      const containers = podsFor(doc, doc.spec?.podSelector?.matchLabels, "podSelector");
      for (const rule of doc.spec?.ingress ?? []) {
        for (const { port } of rule.ports ?? []) {
          if (containers && !hasPort(containers, port)) problems.push(`${where}: port ${port} not declared`);
        }
      }
    }
    if (doc.kind === "PodDisruptionBudget") podsFor(doc, doc.spec?.selector?.matchLabels, "selector");

    const configText = doc.kind === "ConfigMap" ? doc.data?.["config.yaml"] : undefined;
    if (configText !== undefined) {
      try {
        // Positions are within the config, so the source names the ConfigMap holding it.
        const source = `${file}#${nameOf(doc)}`;
        configs.push(parseConfig(configText, { source, env: {} }));
      } catch (error) {
        if (!(error instanceof ConfigError)) throw error;
        problems.push(...error.message.split("\n"));
      }
    }
  });
  return { problems, configs, docs };
}

const read = (file: string) => Deno.readTextFileSync(new URL(file, DIR));

Deno.test("examples/kubernetes: the directory holds the four examples", () => {
  assert.deepEqual(FILES, ["egress.yaml", "envoy-gateway.yaml", "ingress.yaml", "standalone.yaml"]);
});

for (const file of FILES) {
  Deno.test(`examples/kubernetes/${file}: well-formed manifests and a valid tailvoy config`, () => {
    const { problems, configs } = check(file, read(file));
    assert.deepEqual(problems, []);
    assert.equal(configs.length, 1, "one tailvoy config per example");
  });
}

Deno.test("examples/kubernetes: the checks fail on broken manifests", () => {
  const egress = read("egress.yaml");
  const broken = (from: string, to: string) => {
    assert.ok(egress.includes(from), from);
    return check("egress.yaml", egress.replace(from, to)).problems;
  };
  assert.deepEqual(broken("protocols: [http, socks5]", "protocols: [http, sock5]"), [
    'egress.listeners.proxy.protocols[1]: must be one of http, socks5; got "sock5" ' +
    '(egress.yaml#ConfigMap/tailvoy-egress:17:25) — did you mean "socks5"?',
  ]);
  assert.deepEqual(broken("targetPort: postgres", "targetPort: pg"), [
    "egress.yaml: Service/pg-primary: targetPort pg not declared",
  ]);
  assert.deepEqual(broken("image: postgres:17-alpine", "imag: postgres:17-alpine"), [
    "egress.yaml: Deployment/orders-db-check: container check: no image",
  ]);
  assert.deepEqual(
    broken("selector: { app.kubernetes.io/name: tailvoy-egress }", "selector: { app: egress }"),
    [
      "egress.yaml: Service/tailvoy-egress: selector matches no workload",
    ],
  );
  assert.deepEqual(
    broken("httpGet: { path: /readyz, port: admin }", "httpGet: { path: /readyz, port: 9003 }"),
    [
      "egress.yaml: Deployment/tailvoy-egress: container tailvoy: probe port 9003 not declared",
    ],
  );
  assert.deepEqual(broken("configMap: { name: tailvoy-egress }", "configMap: { name: tailvoy }"), [
    "egress.yaml: Deployment/tailvoy-egress: volume config: no ConfigMap tailvoy",
  ]);
  assert.deepEqual(
    broken("\nkind: Namespace\nmetadata:\n  name: shop", "\nkind: Namespace\nmetadata:\n  nam: shop"),
    [
      "egress.yaml: document 7: no metadata.name",
    ],
  );
});

Deno.test("examples/kubernetes/egress.yaml: ports, Services and client settings agree with the config", () => {
  const { configs, docs } = check("egress.yaml", read("egress.yaml"));
  const egress = configs[0].egress;
  assert.ok(egress, "the config has an egress block");
  const proxy = docs.find((doc) => doc.kind === "Deployment" && doc.metadata?.name === "tailvoy-egress")!;
  assert.equal(proxy.spec.replicas, 2);
  const [sidecar] = podSpec(proxy).initContainers ?? [];
  assert.deepEqual([sidecar.name, (sidecar as { restartPolicy?: string }).restartPolicy], [
    "tailscale",
    "Always",
  ]);
  assert.ok(sidecar.env?.some((env) => env.name === "TS_USERSPACE" && env.value === "true"));
  // Each listener's port is a declared container port, and some Service sends traffic to it.
  const tailvoy = podSpec(proxy).containers?.find((container) => container.name === "tailvoy");
  const services = docs.filter((doc) => doc.kind === "Service");
  for (const [name, listener] of Object.entries(egress.listeners)) {
    const port = Number(listener.address.slice(listener.address.lastIndexOf(":") + 1));
    const declared = tailvoy?.ports?.find((p) => p.containerPort === port);
    assert.ok(declared, `listener ${name}: port ${port} declared`);
    assert.ok(
      services.some((service) =>
        service.spec.ports.some((p: { targetPort: string }) => p.targetPort === declared.name)
      ),
      `listener ${name}: a Service targets port ${declared.name}`,
    );
  }
  // The proxy client points at the proxy Service and keeps cluster traffic off it.
  const client = docs.find((doc) => doc.metadata?.name === "dashboard-poller")!;
  const env = Object.fromEntries((podSpec(client).containers?.[0].env ?? []).map((e) => [e.name, e.value]));
  for (const variable of ["HTTP_PROXY", "HTTPS_PROXY"]) {
    const url = new URL(env[variable]!.replaceAll(/\$\((\w+)\)/g, "$1"));
    const [service, namespace] = url.hostname.split(".");
    const target = services.find((s) => s.metadata?.name === service && namespaceOf(s) === namespace);
    assert.ok(target, `${variable}: Service ${service}.${namespace} exists`);
    assert.ok(
      target.spec.ports.some((p: { port: number }) => p.port === Number(url.port)),
      `${variable}: port`,
    );
  }
  const noProxy = env.NO_PROXY!.split(",");
  for (const entry of [".svc", ".cluster.local", "10.96.0.0/12"]) assert.ok(noProxy.includes(entry), entry);
  // Clients carry the label the NetworkPolicy admits.
  for (const name of ["dashboard-poller", "orders-db-check"]) {
    const labels = docs.find((doc) => doc.metadata?.name === name)?.spec.template.metadata.labels;
    assert.equal(labels["tailvoy.io/egress-client"], "true", name);
  }
});

Deno.test("examples/kubernetes/ingress-policy.json: grants name the Services and listeners the config maps", () => {
  const { configs } = check("ingress.yaml", read("ingress.yaml"));
  const config = configs[0];
  const services = createServiceMatcher(config);
  const listenersOf = (service: string) =>
    Object.keys(config.listeners).filter((name) => services(name).includes(service));
  const policy = JSON.parse(read("ingress-policy.json"));
  const mapped = Object.keys(config.tailscale.serviceMappings).map((name) => `svc:${name}`).sort();
  assert.deepEqual(mapped, ["svc:grafana", "svc:orders-api", "svc:postgres"]);
  assert.deepEqual(Object.keys(policy.autoApprovers.services).sort(), mapped);
  const granted = new Set<string>();
  for (const grant of policy.grants) {
    for (const service of grant.dst) {
      granted.add(service);
      const listeners = listenersOf(service);
      assert.ok(listeners.length > 0, `${service} is mapped`);
      assert.deepEqual(
        grant.ip,
        listeners.map((name) => `tcp:${config.listeners[name].port}`),
        `${service} ports`,
      );
      for (const rule of grant.app["rajsingh.info/cap/tailvoy"]) {
        for (const name of rule.listeners) {
          assert.ok(listeners.includes(name), `${service}: listener ${name}`);
        }
      }
    }
  }
  assert.deepEqual([...granted].sort(), mapped, "every Service has a grant");
});
