import assert from "node:assert/strict";
import { type Config, ConfigError, parseConfig } from "../../lib/config/mod.ts";

/** Parses with an empty environment. */
const parse = (text: string): Config => parseConfig(text, { env: {} });

/** The error lines for `text`; fails the test if it parses. */
function errorLines(text: string): string[] {
  try {
    parse(text);
  } catch (error) {
    if (error instanceof ConfigError) return error.message.split("\n");
    throw error;
  }
  assert.fail(`expected a ConfigError for:\n${text}`);
}

const PROXY = `  listeners:\n    proxy: {address: "0.0.0.0:1055", protocols: [http]}\n`;
const RULES = `  rules: [{}]\n`;

// ---------------------------------------------------------------------------------------------
// Valid configs

Deno.test("egress: the design's example parses to this", () => {
  const config = parse(`
egress:
  aliases:
    db.corp.internal: pg-primary
    "api.corp.internal:443": "100.64.0.7:8443"
  rules:
    - name: databases
      listeners: [proxy]
      hosts: [pg-primary]
      tags: ["tag:db"]
      addresses: ["100.64.0.0/10"]
      routes: ["10.20.0.0/16"]
      ports: [5432, "8000-8100"]
    - external: ["198.51.100.0/24"]
  listeners:
    proxy:
      address: "0.0.0.0:1055"
      protocols: [http, socks5]
      sources: ["10.0.0.0/8"]
      credentials:
        file: /etc/tailvoy/egress-users
    postgres:
      address: "0.0.0.0:5432"
      target: "pg-primary:5432"
      sources: ["10.0.0.0/8"]
`);
  assert.deepEqual(config.egress, {
    aliases: {
      "db.corp.internal": { host: "pg-primary" },
      "api.corp.internal:443": { host: "100.64.0.7", port: 8443 },
    },
    rules: [
      {
        name: "databases",
        listeners: ["proxy"],
        hosts: ["pg-primary"],
        tags: ["tag:db"],
        addresses: ["100.64.0.0/10"],
        routes: ["10.20.0.0/16"],
        ports: [{ from: 5432, to: 5432 }, { from: 8000, to: 8100 }],
      },
      { external: ["198.51.100.0/24"] },
    ],
    listeners: {
      proxy: {
        address: "0.0.0.0:1055",
        protocols: ["http", "socks5"],
        sources: ["10.0.0.0/8"],
        credentials: { file: "/etc/tailvoy/egress-users" },
      },
      postgres: {
        address: "0.0.0.0:5432",
        target: { host: "pg-primary", port: 5432 },
        sources: ["10.0.0.0/8"],
      },
    },
    timeouts: { dial: 10_000, handshake: 10_000, idle: 3_600_000, lifetime: 0 },
  });
  assert.deepEqual(config.listeners, {}, "an egress-only config needs no tailnet listeners");
});

Deno.test("egress: defaults — loopback sources, no aliases, dial from tailvoy.timeouts.dial", () => {
  const config = parse(`tailvoy: {timeouts: {dial: 3s}}\negress:\n${RULES}${PROXY}`);
  assert.deepEqual(config.egress, {
    aliases: {},
    rules: [{}],
    listeners: {
      proxy: { address: "0.0.0.0:1055", protocols: ["http"], sources: ["127.0.0.0/8", "::1/128"] },
    },
    timeouts: { dial: 3000, handshake: 10_000, idle: 3_600_000, lifetime: 0 },
  });
  const own = parse(
    `tailvoy: {timeouts: {dial: 3s}}\negress:\n${RULES}${PROXY}  timeouts: {dial: 500ms, lifetime: 8h}\n`,
  );
  assert.equal(own.egress?.timeouts.dial, 500);
  assert.equal(own.egress?.timeouts.lifetime, 8 * 3_600_000);
});

Deno.test("egress: alias keys are canonical; targets are names or IPs, IPv6 without brackets", () => {
  const config = parse(`egress:
  aliases:
    DB.Corp.Internal.: pg-primary.tail1234.ts.net.
    "db.corp.internal:80": "[fd7a:115c:a1e0::7]:8080"
    v6.corp.internal: "fd7a:115c:a1e0::7"
    v6b.corp.internal: "[fd7a:115c:a1e0::8]"
    "web.corp.internal.:443": web
${RULES}${PROXY}`);
  assert.deepEqual(config.egress?.aliases, {
    "db.corp.internal": { host: "pg-primary.tail1234.ts.net" },
    "db.corp.internal:80": { host: "fd7a:115c:a1e0::7", port: 8080 },
    "v6.corp.internal": { host: "fd7a:115c:a1e0::7" },
    "v6b.corp.internal": { host: "fd7a:115c:a1e0::8" },
    "web.corp.internal:443": { host: "web" },
  });
});

Deno.test("egress: an empty rule list (allows nothing) and egress beside tailnet listeners", () => {
  const config = parse(
    `listeners:\n  web: {port: 80, protocol: http, backend: "127.0.0.1:8080", ingress: direct}\n` +
      `egress:\n  rules: []\n${PROXY}`,
  );
  assert.deepEqual(config.egress?.rules, []);
  assert.deepEqual(Object.keys(config.listeners), ["web"]);
  assert.deepEqual(Object.keys(config.egress?.listeners ?? {}), ["proxy"]);
});

Deno.test("egress: a config without egress has no egress key", () => {
  const config = parse(
    `listeners:\n  web: {port: 80, protocol: http, backend: "127.0.0.1:8080", ingress: direct}\n`,
  );
  assert.equal(Object.hasOwn(config, "egress"), false);
});

// ---------------------------------------------------------------------------------------------
// Invalid configs: every message, exactly

const INVALID: { name: string; text: string; errors: string[] }[] = [
  {
    name: "a listener with both protocols and target",
    text:
      `egress:\n${RULES}  listeners:\n    pg: {address: "0.0.0.0:5432", protocols: [socks5], target: "pg-primary:5432"}\n`,
    errors: [
      "egress.listeners.pg.target: cannot be used together with protocols (line 4:64) — a listener is a proxy (protocols) or port-mapped (target); make two listeners",
    ],
  },
  {
    name: "a listener with neither protocols nor target",
    text: `egress:\n${RULES}  listeners:\n    pg: {address: "0.0.0.0:5432"}\n`,
    errors: [
      "egress.listeners.pg: needs protocols or target (line 4:5) — add protocols: [http, socks5] for a proxy, or target: host:port to send every connection there",
    ],
  },
  {
    name: "empty protocols",
    text: `egress:\n${RULES}  listeners:\n    proxy: {address: "0.0.0.0:1055", protocols: []}\n`,
    errors: [
      "egress.listeners.proxy.protocols: must not be empty (line 4:38) — add at least one entry",
    ],
  },
  {
    name: "a protocol listed twice",
    text: `egress:\n${RULES}  listeners:\n    proxy: {address: "0.0.0.0:1055", protocols: [http, http]}\n`,
    errors: [
      "egress.listeners.proxy.protocols: lists a protocol more than once (line 4:38) — name http and socks5 at most once each",
    ],
  },
  {
    name: "an unknown protocol, with a did-you-mean",
    text: `egress:\n${RULES}  listeners:\n    proxy: {address: "0.0.0.0:1055", protocols: [sock5]}\n`,
    errors: [
      'egress.listeners.proxy.protocols[0]: must be one of http, socks5; got "sock5" (line 4:50) — did you mean "socks5"?',
    ],
  },
  {
    name: "an address without a port",
    text: `egress:\n${RULES}  listeners:\n    proxy: {address: "0.0.0.0", protocols: [http]}\n`,
    errors: [
      'egress.listeners.proxy.address: expected host:port, got "0.0.0.0" (line 4:22) — add the port, e.g. 127.0.0.1:8080, or [::1]:8080 for IPv6',
    ],
  },
  {
    name: "a target without a port",
    text: `egress:\n${RULES}  listeners:\n    pg: {address: "0.0.0.0:5432", target: pg-primary}\n`,
    errors: [
      'egress.listeners.pg.target: expected host:port, got "pg-primary" (line 4:43) — add the port, e.g. 127.0.0.1:8080, or [::1]:8080 for IPv6',
    ],
  },
  {
    name: "a source prefix longer than the address",
    text:
      `egress:\n${RULES}  listeners:\n    proxy: {address: ":1055", protocols: [http], sources: [10.0.0.0/33]}\n`,
    errors: [
      'egress.listeners.proxy.sources[0]: invalid CIDR "10.0.0.0/33" (line 4:60) — use an IP address or a prefix, e.g. 10.0.0.0/8, 100.64.0.7 or fd7a:115c:a1e0::/48',
    ],
  },
  {
    name: "a source CIDR with host bits set",
    text:
      `egress:\n${RULES}  listeners:\n    proxy: {address: ":1055", protocols: [http], sources: ["fd7a:115c::1/32"]}\n`,
    errors: [
      'egress.listeners.proxy.sources[0]: CIDR "fd7a:115c::1/32" has host bits set (line 4:60) — write "fd7a:115c::/32" for the network, or a bare address for one host',
    ],
  },
  {
    name: "empty sources (nobody could connect)",
    text: `egress:\n${RULES}  listeners:\n    proxy: {address: ":1055", protocols: [http], sources: []}\n`,
    errors: [
      "egress.listeners.proxy.sources: must not be empty (line 4:50) — add at least one entry",
    ],
  },
  {
    name: "credentials with both file and env",
    text:
      `egress:\n${RULES}  listeners:\n    proxy:\n      address: ":1055"\n      protocols: [http]\n      credentials: {file: /etc/users, env: USERS}\n`,
    errors: [
      "egress.listeners.proxy.credentials: cannot set both file and env (line 7:7) — read the users from one place: remove file or env",
    ],
  },
  {
    name: "credentials with neither file nor env",
    text:
      `egress:\n${RULES}  listeners:\n    proxy:\n      address: ":1055"\n      protocols: [http]\n      credentials: {}\n`,
    errors: [
      "egress.listeners.proxy.credentials: needs file or env (line 7:7) — add file: /path/to/users (user:password lines), or env: VARIABLE",
    ],
  },
  {
    name: "credentials on a port-mapped listener",
    text:
      `egress:\n${RULES}  listeners:\n    pg:\n      address: ":5432"\n      target: pg:5432\n      credentials: {env: USERS}\n`,
    errors: [
      "egress.listeners.pg.credentials: only applies to listeners with protocols (line 7:7) — a port-mapped listener has no handshake to carry credentials; limit its clients with sources",
    ],
  },
  {
    name: "an invalid credentials variable name",
    text:
      `egress:\n${RULES}  listeners:\n    proxy:\n      address: ":1055"\n      protocols: [http]\n      credentials: {env: 1USERS}\n`,
    errors: [
      'egress.listeners.proxy.credentials.env: invalid environment variable name "1USERS" (line 7:26) — use letters, digits and underscores, not starting with a digit, e.g. TAILVOY_EGRESS_USERS',
    ],
  },
  {
    name: "no rules",
    text: `egress:\n${PROXY}`,
    errors: [
      "egress.rules: required (line 1:1) — add rules: `- {}` allows every tailnet destination, an empty list allows nothing",
    ],
  },
  {
    name: "a rule naming an unknown listener: the known ones are named",
    text: `egress:\n  rules:\n    - listeners: [proxi]\n${PROXY}`,
    errors: [
      'egress.rules[0].listeners[0]: unknown egress listener "proxi" (line 3:19) — did you mean "proxy"? egress listeners are "proxy"',
    ],
  },
  {
    name: "a rule naming a tailnet listener",
    text:
      `listeners:\n  web: {port: 80, protocol: http, backend: "127.0.0.1:8080", ingress: direct}\negress:\n  rules:\n    - listeners: [web]\n${PROXY}`,
    errors: [
      'egress.rules[0].listeners[0]: "web" is a tailnet listener (listeners:), not an egress listener (line 5:19) — egress listeners are "proxy"',
    ],
  },
  {
    name: "an egress listener named like a tailnet listener",
    text:
      `listeners:\n  proxy: {port: 80, protocol: http, backend: "127.0.0.1:8080", ingress: direct}\negress:\n${RULES}${PROXY}`,
    errors: [
      'egress.listeners.proxy: name "proxy" is also used by listeners.proxy (line 6:5) — egress and tailnet listeners share one namespace (logs and metrics name them); rename one',
    ],
  },
  {
    name: "ports out of range, a reversed range, a half range, a fraction",
    text: `egress:\n  rules:\n    - ports: [0, 70000, "9-3", "80-", 1.5]\n${PROXY}`,
    errors: [
      'egress.rules[0].ports[0]: invalid port or port range 0 (line 3:15) — use ports from 1 to 65535: a port (5432) or a range ("8000-8100")',
      'egress.rules[0].ports[1]: invalid port or port range 70000 (line 3:18) — use ports from 1 to 65535: a port (5432) or a range ("8000-8100")',
      'egress.rules[0].ports[2]: port range "9-3" ends before it starts (line 3:25) — write "3-9"',
      'egress.rules[0].ports[3]: invalid port or port range "80-" (line 3:32) — use ports from 1 to 65535: a port (5432) or a range ("8000-8100")',
      'egress.rules[0].ports[4]: invalid port or port range 1.5 (line 3:39) — use ports from 1 to 65535: a port (5432) or a range ("8000-8100")',
    ],
  },
  {
    name: "a tag without tag:",
    text: `egress:\n  rules:\n    - tags: [db]\n${PROXY}`,
    errors: [
      'egress.rules[0].tags[0]: tag "db" must start with "tag:" (line 3:14) — write "tag:db"',
    ],
  },
  {
    name: "an IP address under hosts",
    text: `egress:\n  rules:\n    - hosts: [100.64.0.7]\n${PROXY}`,
    errors: [
      'egress.rules[0].hosts[0]: expected a DNS name, got IP address "100.64.0.7" (line 3:15) — list tailnet IPs under addresses',
    ],
  },
  {
    name: "a host that is not a DNS name",
    text: `egress:\n  rules:\n    - hosts: ["pg primary"]\n${PROXY}`,
    errors: [
      'egress.rules[0].hosts[0]: invalid DNS name "pg primary" (line 3:15) — use letters, digits and dashes in dot-separated labels, e.g. pg-primary or db.corp.internal',
    ],
  },
  {
    name: "external in a rule with tailnet keys",
    text:
      `egress:\n  rules:\n    - tags: ["tag:db"]\n      routes: [10.20.0.0/16]\n      external: [198.51.100.0/24]\n${PROXY}`,
    errors: [
      "egress.rules[0].external: cannot be combined with tags and routes in one rule (line 5:7) — external matches destinations off the tailnet, the others tailnet ones; put external in a rule of its own",
    ],
  },
  {
    name: "two rules with one name",
    text: `egress:\n  rules:\n    - name: db\n    - name: db\n${PROXY}`,
    errors: [
      'egress.rules[1].name: rule name "db" is already used by egress.rules[0] (line 4:13) — give each rule its own name, so logs say which one decided',
    ],
  },
  {
    name: "an empty list in a rule (it would match nothing)",
    text: `egress:\n  rules:\n    - addresses: []\n${PROXY}`,
    errors: [
      "egress.rules[0].addresses: must not be empty (line 3:7) — add at least one entry",
    ],
  },
  {
    name: "an alias key that is an IP address",
    text: `egress:\n  aliases:\n    "100.64.0.7:80": pg\n${RULES}${PROXY}`,
    errors: [
      'egress.aliases["100.64.0.7:80"]: expected a DNS name, got IP address "100.64.0.7" (line 3:5) — aliases rename names; an IP address is dialed as it is',
    ],
  },
  {
    name: "an alias for every port whose target names a port",
    text: `egress:\n  aliases:\n    db.corp.internal: "pg-primary:5432"\n${RULES}${PROXY}`,
    errors: [
      'egress.aliases["db.corp.internal"]: alias "db.corp.internal" maps every port, so its target "pg-primary:5432" cannot name one (line 3:23) — write the key as "db.corp.internal:5432", or drop the port from the target',
    ],
  },
  {
    name: "two alias keys that are one name",
    text: `egress:\n  aliases:\n    db.corp.internal: pg\n    DB.Corp.Internal.: pg2\n${RULES}${PROXY}`,
    errors: [
      'egress.aliases["DB.Corp.Internal."]: alias "DB.Corp.Internal." is the same name as "db.corp.internal" (line 4:5) — names are case-insensitive and a trailing dot changes nothing; keep one',
    ],
  },
  {
    name: "an alias target with a port out of range",
    text: `egress:\n  aliases:\n    db.corp.internal: "pg:99999"\n${RULES}${PROXY}`,
    errors: [
      'egress.aliases["db.corp.internal"]: invalid port "99999" in "pg:99999" (line 3:23) — use a port number from 1 to 65535',
    ],
  },
  {
    name: "an alias key with a port that is not a number",
    text: `egress:\n  aliases:\n    "db:x": pg\n${RULES}${PROXY}`,
    errors: [
      'egress.aliases["db:x"]: invalid port "x" in "db:x" (line 3:5) — use a port number from 1 to 65535',
    ],
  },
  {
    name: "a misspelt listener key",
    text: `egress:\n${RULES}  listeners:\n    proxy: {adress: ":1055", protocols: [http]}\n`,
    errors: [
      'egress.listeners.proxy.adress: unknown key (line 4:13) — did you mean "address"?',
    ],
  },
  {
    name: "a misspelt egress key",
    text: `egress:\n  alias: {}\n${RULES}${PROXY}`,
    errors: [
      'egress.alias: unknown key (line 2:3) — did you mean "aliases"?',
    ],
  },
  {
    name: "a misspelt rule key",
    text: `egress:\n  rules:\n    - host: [pg]\n${PROXY}`,
    errors: [
      'egress.rules[0].host: unknown key (line 3:7) — did you mean "hosts"?',
    ],
  },
  {
    name: "a __proto__ listener name",
    text: `egress:\n${RULES}  listeners:\n    __proto__: {address: ":1055", protocols: [http]}\n`,
    errors: [
      "egress.listeners.__proto__: unknown key (line 4:5) — __proto__ is not a name tailvoy accepts anywhere; rename it",
    ],
  },
  {
    name: "zero, unitless and unknown-unit timeouts",
    text: `egress:\n${RULES}${PROXY}  timeouts: {handshake: "0", idle: 5, lifetime: 1d}\n`,
    errors: [
      'egress.timeouts.handshake: must be greater than 0 (line 5:25) — e.g. "10s"',
      'egress.timeouts.idle: invalid duration "5" (line 5:36) — add a unit, e.g. "5s" or "5ms"',
      'egress.timeouts.lifetime: invalid duration "1d" (line 5:49) — use a number with a unit (ms, s, m, h), e.g. "500ms", "1s", "2m" or "1h30m"',
    ],
  },
  {
    name: "two listeners on one address",
    text:
      `egress:\n${RULES}  listeners:\n    a: {address: "0.0.0.0:1055", protocols: [http]}\n    b: {address: "0.0.0.0:1055", protocols: [socks5]}\n`,
    errors: [
      'egress.listeners.b.address: address "0.0.0.0:1055" is already used by egress.listeners.a (line 5:18) — give each listener its own address',
    ],
  },
  {
    name: "a listener on the admin address",
    text:
      `tailvoy: {adminAddress: "0.0.0.0:9002"}\negress:\n${RULES}  listeners:\n    a: {address: "0.0.0.0:9002", protocols: [http]}\n`,
    errors: [
      'egress.listeners.a.address: address "0.0.0.0:9002" is already used by tailvoy.adminAddress (line 5:18) — give each listener its own address',
    ],
  },
  {
    name: "no listeners",
    text: `egress:\n${RULES}  listeners: {}\n`,
    errors: [
      'egress.listeners: must not be empty (line 3:3) — add a listener, e.g. proxy: {address: "0.0.0.0:1055", protocols: [http, socks5]}',
    ],
  },
  {
    name: "listeners missing",
    text: `egress:\n${RULES}`,
    errors: [
      "egress.listeners: required (line 1:1) — add listeners",
    ],
  },
  {
    name: "an invalid listener name",
    text: `egress:\n${RULES}  listeners:\n    "-x": {address: ":1", protocols: [http]}\n`,
    errors: [
      'egress.listeners["-x"]: invalid listener name "-x" (line 4:5) — use letters, digits, dots, dashes and underscores, starting with a letter or digit',
    ],
  },
  {
    name: "egress that is not a mapping",
    text: `egress: [a]\n`,
    errors: [
      "egress: expected a mapping, got a list (line 1:1) — write key: value lines indented under this key",
    ],
  },
];

for (const { name, text, errors } of INVALID) {
  Deno.test(`egress: ${name} is reported`, () => {
    assert.deepEqual(errorLines(text), errors);
  });
}
