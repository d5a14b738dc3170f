/**
 * Rules that span several fields (per-protocol requirements, unique ports, service mappings,
 * listeners versus discovery). They read the data defensively so they can also run on input
 * that failed the schema, which lets one pass report every problem at once.
 *
 * @module
 */

import { L7_PROTOCOLS } from "./constants.ts";
import { checkEgress } from "./egress.ts";
import { jsonQuote, patternError } from "./formats.ts";
import { compileMappingEntry, type MappingEntry } from "./services.ts";
import { closest } from "./suggest.ts";

/** A problem found by {@linkcode checkCrossField}. */
export interface CrossFieldIssue {
  /** Path of the field at fault. */
  path: (string | number)[];
  /** Sentence-case description quoting the offending value. */
  message: string;
  /** Advice for fixing it. */
  hint?: string;
  /** Node to point at when it is not `path` itself (e.g. the `protocol` that makes a key required). */
  at?: (string | number)[];
}

type Data = Record<string, unknown>;
type Path = (string | number)[];

const isObject = (value: unknown): value is Data =>
  typeof value === "object" && value !== null && !Array.isArray(value);
const isString = (value: unknown): value is string => typeof value === "string";
const has = (object: Data, key: string) => object[key] !== undefined && object[key] !== null;

/** Reports every cross-field problem in `config` (parsed or raw) through `report`. */
export function checkCrossField(config: unknown, report: (issue: CrossFieldIssue) => void): void {
  if (!isObject(config)) return;
  const listeners = isObject(config.listeners) ? config.listeners : undefined;
  const listenerNames = listeners ? Object.keys(listeners) : [];
  const tailvoy = isObject(config.tailvoy) ? config.tailvoy : {};
  const defaultIngress = tailvoy.ingress === "direct" ? "direct" : "serve";

  if (has(config, "discovery") && listenerNames.length > 0) {
    report({
      path: ["discovery"],
      message: "cannot be used together with listeners",
      hint: "use listeners (standalone mode) or discovery (Envoy Gateway mode), not both",
    });
  }
  if (has(config, "discovery") && tailvoy.ingress === "direct") {
    report({
      path: ["tailvoy", "ingress"],
      message: "direct ingress cannot be used in discovery mode: Envoy already binds the discovered ports",
      hint: "remove tailvoy.ingress (tailscaled then forwards the tailnet ports to tailvoy with serve)",
    });
  }
  const listenersMistyped = has(config, "listeners") && !listeners; // reported by the schema
  // An egress-only proxy needs no tailnet listeners.
  const egressOnly = has(config, "egress");
  if (!has(config, "discovery") && listenerNames.length === 0 && !listenersMistyped && !egressOnly) {
    report({
      path: ["listeners"],
      message: "at least one listener is required",
      hint: "add listeners (see examples/config.yaml), or a discovery block to discover them from Envoy",
    });
  }

  const servedListeners: string[] = [];
  for (const name of listenerNames) {
    const listener = listeners![name];
    if (!isObject(listener)) continue;
    checkListener(["listeners", name], listener, report);
    const ingress = listener.ingress ?? (listener.protocol === "udp" ? "direct" : defaultIngress);
    if (ingress === "serve" && listener.protocol !== "udp") servedListeners.push(name);
  }
  checkPorts(listeners ?? {}, report);

  const tailscale = isObject(config.tailscale) ? config.tailscale : {};
  const discoveryMode = has(config, "discovery");
  checkServiceMappings(tailscale.serviceMappings, {
    discoveryMode,
    listenerNames,
    servedListeners,
    mappingsNeeded: discoveryMode ? defaultIngress === "serve" : servedListeners.length > 0,
    hasRemovedServiceKey: has(tailscale, "service"),
  }, report);
  checkEgress(config, report);
}

function checkListener(path: Path, listener: Data, report: (issue: CrossFieldIssue) => void): void {
  const protocol = listener.protocol;
  if (!isString(protocol)) return;
  const routes = Array.isArray(listener.routes) ? listener.routes : undefined;
  // Routes of the wrong type are the schema's to report; don't also call them missing.
  const routesMissing = !has(listener, "routes") || routes?.length === 0;
  const at = (...rest: Path) => [...path, ...rest];

  if (protocol === "tcp" || protocol === "udp") {
    if (!has(listener, "backend")) {
      report({
        path: at("backend"),
        at: at("protocol"),
        message: `required for protocol ${protocol}`,
        hint: "add backend: host:port, e.g. backend: 127.0.0.1:5432",
      });
    }
    if (has(listener, "routes")) {
      report({
        path: at("routes"),
        message: `not allowed for protocol ${protocol}`,
        hint: `${protocol} forwards every connection to backend; remove routes` +
          (protocol === "tcp" ? " (use protocol tls to route by SNI)" : ""),
      });
    }
    if (has(listener, "tls")) {
      report({
        path: at("tls"),
        message: `not allowed for protocol ${protocol}`,
        hint: protocol === "tcp" ? "remove tls, or use protocol https to terminate TLS" : "remove tls",
      });
    }
    if (protocol === "udp" && listener.ingress === "serve") {
      report({
        path: at("ingress"),
        message: 'udp listeners cannot use ingress "serve"',
        hint: "Tailscale Services carry TCP only; remove ingress or set ingress: direct",
      });
    }
  } else if (protocol === "tls") {
    if (has(listener, "backend")) {
      report({
        path: at("backend"),
        message: "not allowed for protocol tls",
        hint: "tls passthrough routes by SNI; move it into a route: routes: [{hostname: ..., backend: ...}]",
      });
    }
    if (has(listener, "tls")) {
      report({
        path: at("tls"),
        message: "not allowed for protocol tls",
        hint: "tls passthrough forwards encrypted bytes; remove tls, or use protocol https to terminate TLS",
      });
    }
    if (routesMissing) {
      report({
        path: at("routes"),
        at: routes ? undefined : at("protocol"),
        message: "required for protocol tls",
        hint: "add routes, each with hostname (the SNI name) and backend",
      });
    }
    checkTlsRoutes(at("routes"), routes ?? [], report);
  } else if (L7_PROTOCOLS.includes(protocol)) {
    if (!has(listener, "backend") && routesMissing) {
      report({
        path: at("routes"),
        at: routes ? undefined : at("protocol"),
        message: `required for protocol ${protocol}`,
        hint: "add routes, or backend: host:port for a single upstream",
      });
    }
    if (protocol === "http" && has(listener, "tls")) {
      report({
        path: at("tls"),
        message: "not allowed for protocol http",
        hint: "use protocol https to terminate TLS",
      });
    }
    if (protocol === "https" && !has(listener, "tls")) {
      const routeWithoutTls = (routes ?? []).findIndex((route) => !isObject(route) || !has(route, "tls"));
      if (routeWithoutTls >= 0 || routesMissing || has(listener, "backend")) {
        report({
          path: at("tls"),
          at: at("protocol"),
          message: "required for protocol https",
          hint: "add tls.cert and tls.key",
        });
      }
    }
    checkHttpRoutes(at("routes"), protocol, routes ?? [], report);
  }

  const acceptsCaps = listener.acceptAppCaps === true || Array.isArray(listener.acceptAppCaps);
  if (acceptsCaps && !L7_PROTOCOLS.includes(protocol)) {
    report({
      path: at("acceptAppCaps"),
      message: `only applies to http, https and grpc listeners, not ${protocol}`,
      hint: "remove acceptAppCaps; capabilities are passed to backends in an HTTP header",
    });
  }
  if (
    Array.isArray(listener.keepHeaders) && listener.keepHeaders.length && !L7_PROTOCOLS.includes(protocol)
  ) {
    report({
      path: at("keepHeaders"),
      message: `only applies to http, https and grpc listeners, not ${protocol}`,
      hint: "remove keepHeaders; a tcp, tls or udp listener passes bytes through unread",
    });
  }
  const sendsToken = has(listener, "identityToken") && listener.identityToken !== false;
  if (sendsToken && !L7_PROTOCOLS.includes(protocol)) {
    report({
      path: at("identityToken"),
      message: `only applies to http, https and grpc listeners, not ${protocol}`,
      hint: "remove identityToken; tokens travel in an HTTP header, which tcp, tls and udp lack",
    });
  }
  if (has(listener, "proxyProtocol") && protocol !== "tcp" && protocol !== "tls") {
    report({
      path: at("proxyProtocol"),
      message: `only applies to tcp and tls listeners, not ${protocol}`,
      hint: protocol === "udp"
        ? "remove proxyProtocol; udp datagrams are relayed without a PROXY header"
        : "remove proxyProtocol; http, https and grpc backends get the caller in X-Tailscale-* headers",
    });
  }
}

function checkTlsRoutes(path: Path, routes: unknown[], report: (issue: CrossFieldIssue) => void): void {
  const seen = new Map<string, number>();
  routes.forEach((route, index) => {
    if (!isObject(route)) return;
    const at = (...rest: Path) => [...path, index, ...rest];
    if (!has(route, "hostname")) {
      report({
        path: at("hostname"),
        at: at(),
        message: "required for protocol tls",
        hint: "tls routes are chosen by SNI; add hostname, e.g. hostname: app.example.com",
      });
    } else if (isString(route.hostname)) {
      const first = seen.get(route.hostname.toLowerCase());
      if (first !== undefined) {
        report({
          path: at("hostname"),
          message: `${jsonQuote(route.hostname)} is already routed by routes[${first}]`,
          hint: "remove the duplicate route",
        });
      } else seen.set(route.hostname.toLowerCase(), index);
    }
    if (!has(route, "backend")) {
      report({
        path: at("backend"),
        at: at(),
        message: "required for protocol tls",
        hint: "add backend: host:port",
      });
    }
    if (has(route, "paths")) {
      report({
        path: at("paths"),
        message: "not allowed for protocol tls",
        hint: "paths need HTTP; use protocol https to terminate TLS and route by path",
      });
    }
    if (has(route, "tls")) {
      report({
        path: at("tls"),
        message: "not allowed for protocol tls",
        hint: "tls passthrough does not terminate TLS; remove tls",
      });
    }
  });
}

function checkHttpRoutes(
  path: Path,
  protocol: string,
  routes: unknown[],
  report: (issue: CrossFieldIssue) => void,
): void {
  routes.forEach((route, index) => {
    if (!isObject(route)) return;
    const at = (...rest: Path) => [...path, index, ...rest];
    const hasBackend = has(route, "backend");
    const hasPaths = has(route, "paths");
    if (hasBackend && hasPaths) {
      report({
        path: at("paths"),
        message: "cannot be combined with backend in the same route",
        hint: 'remove backend, or add it to paths as "/*": <backend>',
      });
    } else if (!hasBackend && !hasPaths) {
      report({
        path: at("backend"),
        at: at(),
        message: "route needs a backend or paths",
        hint: 'add backend: host:port, or paths: {"/api/*": host:port}',
      });
    }
    if (has(route, "proxyProtocol")) {
      report({
        path: at("proxyProtocol"),
        message: `not allowed for protocol ${protocol}`,
        hint: "remove proxyProtocol; http, https and grpc backends get the caller in X-Tailscale-* headers",
      });
    }
    if (has(route, "tls")) {
      if (protocol === "http") {
        report({
          path: at("tls"),
          message: "not allowed for protocol http",
          hint: "use protocol https (or grpc) for per-route certificates",
        });
      } else if (!has(route, "hostname")) {
        report({
          path: at("tls"),
          message: "per-route tls needs a hostname",
          hint: "the certificate is chosen by SNI; add hostname, or move tls to the listener",
        });
      }
    }
  });
}

function checkPorts(listeners: Data, report: (issue: CrossFieldIssue) => void): void {
  // UDP and TCP ports are separate namespaces (DNS wants both on 53); the Go tailvoy rejected that.
  const used = new Map<string, string>();
  for (const [name, listener] of Object.entries(listeners)) {
    if (!isObject(listener) || typeof listener.port !== "number") continue;
    const transport = listener.protocol === "udp" ? "udp" : "tcp";
    const key = `${transport}/${listener.port}`;
    const owner = used.get(key);
    if (owner === undefined) used.set(key, name);
    else {
      report({
        path: ["listeners", name, "port"],
        message: `${transport} port ${listener.port} is already used by listener ${jsonQuote(owner)}`,
        hint: "give each listener its own port",
      });
    }
  }
}

interface MappingContext {
  discoveryMode: boolean;
  listenerNames: string[];
  /** Listeners reached through Tailscale Services, which therefore need a mapping. */
  servedListeners: string[];
  mappingsNeeded: boolean;
  hasRemovedServiceKey: boolean;
}

function checkServiceMappings(
  mappings: unknown,
  context: MappingContext,
  report: (issue: CrossFieldIssue) => void,
): void {
  const path: Path = ["tailscale", "serviceMappings"];
  const services = isObject(mappings) ? Object.keys(mappings) : [];
  if (services.length === 0) {
    // A leftover `service:` key of the Go tailvoy gets its own migration message; don't pile on.
    if (context.mappingsNeeded && !context.hasRemovedServiceKey) {
      const example = context.discoveryMode
        ? 'web: [".*http.*"]'
        : `${context.servedListeners[0]}: [${context.servedListeners[0]}]`;
      report({
        path,
        message: context.discoveryMode
          ? "required in discovery mode"
          : `required: listeners ${context.servedListeners.map(jsonQuote).join(", ")} use serve ingress`,
        hint: `map each Tailscale Service to its listeners, e.g. serviceMappings: {${example}}` +
          (context.discoveryMode ? "" : ", or set tailvoy.ingress: direct"),
      });
    }
    return;
  }

  const staticListeners = context.discoveryMode ? undefined : new Set(context.listenerNames);
  const entries: MappingEntry[] = [];
  for (const service of services) {
    const patterns = mappings && (mappings as Data)[service];
    if (!Array.isArray(patterns)) continue;
    patterns.forEach((pattern, index) => {
      if (!isString(pattern)) return;
      let entry: MappingEntry;
      try {
        entry = compileMappingEntry(service, pattern, { staticListeners });
      } catch (error) {
        const reason = patternError(error);
        report({
          path: [...path, service, index],
          message: staticListeners
            ? `${jsonQuote(pattern)} is neither a listener name nor a valid regex (${reason})`
            : `invalid regex ${jsonQuote(pattern)}: ${reason}`,
          hint: staticListeners
            ? listenerHint(pattern, context.listenerNames)
            : "in discovery mode entries are regexes; escape special characters with \\",
        });
        return;
      }
      entries.push(entry);
      if (staticListeners && !context.listenerNames.some((name) => entry.matches(name))) {
        report({
          path: [...path, service, index],
          message: `${jsonQuote(pattern)} matches no listener`,
          hint: listenerHint(pattern, context.listenerNames),
        });
      }
    });
  }

  if (!staticListeners) return;
  for (const name of context.servedListeners) {
    if (entries.some((entry) => entry.matches(name))) continue;
    report({
      path: ["listeners", name],
      message: `listener ${jsonQuote(name)} is not in any tailscale.serviceMappings entry`,
      hint: `add it to a service, e.g. serviceMappings: {${
        services[0]
      }: [..., ${name}]}, or set ingress: direct`,
    });
  }
}

function listenerHint(pattern: string, listenerNames: string[]): string {
  const suggestion = closest(pattern, listenerNames);
  if (suggestion) return `did you mean ${jsonQuote(suggestion)}?`;
  return listenerNames.length > 0
    ? `listeners are ${listenerNames.map(jsonQuote).join(", ")}`
    : "define the listener under listeners first";
}
