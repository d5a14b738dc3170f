import assert from "node:assert/strict";
import { ConfigError } from "../../lib/config/mod.ts";
import { EgressUsers, loadEgressUsers, parseEgressUsers } from "../../lib/egress/users.ts";

const PATH = ["egress", "listeners", "proxy", "credentials"];
// Every password in these tests contains this, so no message may.
const SECRET = "s3cret";

/** The error message for `text` read as a file; fails the test if it parses. */
function fileError(text: string): string {
  try {
    parseEgressUsers(text, { source: "/etc/users", path: [...PATH, "file"] });
  } catch (error) {
    if (error instanceof ConfigError) return error.message;
    throw error;
  }
  assert.fail(`expected a ConfigError for:\n${text}`);
}

Deno.test("egress users: a file of user:password lines, comments and blank lines skipped", () => {
  const users = parseEgressUsers(
    `# egress users\n\nalice:${SECRET}-a\r\n  bob:${SECRET}:with:colons  \n#carol:x\n`,
    { source: "/etc/users" },
  );
  assert.equal(users.size, 2);
  assert.ok(users.verify("alice", `${SECRET}-a`));
  assert.ok(users.verify("bob", `${SECRET}:with:colons`), "the user ends at the first colon");
  assert.ok(!users.verify("alice", `${SECRET}-b`));
  assert.ok(!users.verify("alice", ""));
  assert.ok(!users.verify("carol", "x"), "a commented-out user is not a user");
  assert.ok(!users.verify("Alice", `${SECRET}-a`), "user names are exact");
});

Deno.test("egress users: a variable separates entries by commas or lines", () => {
  const users = parseEgressUsers(`alice:${SECRET}-a, bob:${SECRET}-b\ncarol:${SECRET}-c`, {
    source: "USERS",
    commas: true,
  });
  assert.deepEqual(users.toJSON(), { users: ["alice", "bob", "carol"] });
  assert.ok(users.verify("bob", `${SECRET}-b`));
});

const INVALID: { name: string; text: string; error: string }[] = [
  {
    name: "a line without a colon (not shown: it may be a password)",
    text: `alice:${SECRET}\n${SECRET}\n`,
    error: 'egress.listeners.proxy.credentials.file: line 2 has no ":" between user and password ' +
      "(/etc/users:2:1) — write user:password",
  },
  {
    name: "no user",
    text: `:${SECRET}\n`,
    error: 'egress.listeners.proxy.credentials.file: line 1 has no user before ":" (/etc/users:1:1) — ' +
      "write user:password",
  },
  {
    name: "an empty password",
    text: "alice:\n",
    error: 'egress.listeners.proxy.credentials.file: user "alice" has an empty password (/etc/users:1:1) — ' +
      "give every user a password",
  },
  {
    name: "a space in a user name",
    text: `al ice:${SECRET}\n`,
    error:
      'egress.listeners.proxy.credentials.file: user "al ice" on line 1 contains whitespace or control ' +
      "characters (/etc/users:1:1) — use a user name without spaces",
  },
  {
    name: "a user SOCKS5 cannot carry",
    text: `${"u".repeat(256)}:${SECRET}\n`,
    error:
      "egress.listeners.proxy.credentials.file: user on line 1 is longer than 255 bytes (/etc/users:1:1) — " +
      "shorten it: SOCKS5 carries at most 255 bytes",
  },
  {
    name: "a password SOCKS5 cannot carry (counted in bytes)",
    text: `alice:${SECRET}${"é".repeat(125)}\n`,
    error: 'egress.listeners.proxy.credentials.file: password of user "alice" is longer than 255 bytes ' +
      "(/etc/users:1:1) — shorten it: SOCKS5 carries at most 255 bytes",
  },
  {
    name: "a user listed twice",
    text: `alice:${SECRET}-1\n\nalice:${SECRET}-2\n`,
    error: 'egress.listeners.proxy.credentials.file: user "alice" is listed twice (first on line 1) ' +
      "(/etc/users:3:1) — keep one entry per user",
  },
  {
    name: "no users at all",
    text: "# nobody yet\n",
    error: "egress.listeners.proxy.credentials.file: no users — add user:password entries; a listener with " +
      "credentials and no users would refuse everyone",
  },
];

for (const { name, text, error } of INVALID) {
  Deno.test(`egress users: ${name} is reported without the password`, () => {
    const message = fileError(text);
    assert.equal(message, error);
    assert.ok(!message.includes(SECRET));
  });
}

Deno.test("egress users: every bad line is reported at once, in line order", () => {
  assert.deepEqual(
    fileError(`${SECRET}\nbob:${SECRET}\nbob:\n`).split("\n").map((line) => line.split(" (")[0]),
    [
      'egress.listeners.proxy.credentials.file: line 1 has no ":" between user and password',
      'egress.listeners.proxy.credentials.file: user "bob" has an empty password',
    ],
  );
});

Deno.test("egress users: a variable's entries are numbered, not given lines", () => {
  try {
    parseEgressUsers(`alice:${SECRET},${SECRET}`, { source: "USERS", commas: true });
    assert.fail("expected a ConfigError");
  } catch (error) {
    assert.ok(error instanceof ConfigError);
    assert.equal(error.message, 'USERS: entry 2 has no ":" between user and password — write user:password');
  }
});

Deno.test("egress users: loaded from the file or variable the config names", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const file = `${dir}/users`;
    await Deno.writeTextFile(file, `alice:${SECRET}\n`);
    const fromFile = await loadEgressUsers({ file }, { path: PATH });
    assert.ok(fromFile.verify("alice", SECRET));
    const fromEnv = await loadEgressUsers({ env: "USERS" }, { env: { USERS: `bob:${SECRET}` } });
    assert.ok(fromEnv.verify("bob", SECRET));
    await assert.rejects(
      loadEgressUsers({ file: `${dir}/missing` }, { path: PATH }),
      (error: unknown) =>
        error instanceof ConfigError &&
        error.message === `egress.listeners.proxy.credentials.file: users file not found — ` +
            "check the path in credentials.file" &&
        error.issues[0].source === `${dir}/missing`,
    );
    await assert.rejects(
      loadEgressUsers({ env: "USERS" }, { path: PATH, env: {} }),
      (error: unknown) =>
        error instanceof ConfigError &&
        error.message === "egress.listeners.proxy.credentials.env: environment variable USERS is not set — " +
            "set it to user:password entries (one per line or comma-separated), or use credentials.file",
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("egress users: never shown with their passwords", () => {
  const users = new EgressUsers([["alice", SECRET]]);
  for (const shown of [Deno.inspect(users), String(users), JSON.stringify(users), `${users}`]) {
    assert.ok(!shown.includes(SECRET), shown);
  }
  assert.equal(Deno.inspect(users), "EgressUsers { 1 user }");
});
