/**
 * Per-file fixtures for the e2e tests: what a file's tests share (the tailnet, backends, a running proxy)
 * is started by the first test that asks for it and torn down after the file's last test. So each
 * behaviour is a test of its own (one failing does not hide the others), a filtered run starts only what
 * its tests use, and a fixture that fails to start fails each test that needs it, with its error.
 *
 * Test files run one after another in one process (`deno test` without `--parallel`): a file's
 * fixtures are gone before the next file starts.
 *
 * @module
 */

import { acquireTailnet, type Tailnet } from "./tailnet.ts";

/**
 * A fixture's set-up: builds the value, deferring each teardown on `cleanup` as soon as the thing it
 * undoes exists (so a set-up that fails half-way still tears down what it started).
 */
export type FixtureSetup<T> = (cleanup: AsyncDisposableStack) => Promise<T>;

/**
 * Declares a fixture of the calling test file: the returned function starts it on its first call and
 * hands every caller the same value (or the same set-up error). Its teardown runs after the file's tests
 * (`Deno.test.afterAll`), in the reverse order of the fixtures' declarations. Call at module level.
 */
export function fixture<T>(setup: FixtureSetup<T>): () => Promise<T> {
  const cleanup = new AsyncDisposableStack();
  let value: Promise<T> | undefined;
  Deno.test.afterAll(() => cleanup.disposeAsync());
  return () => value ??= setup(cleanup);
}

/** A fixture for the suite's tailnet (see {@link acquireTailnet}), released after the file's tests. */
export function tailnetFixture(): () => Promise<Tailnet> {
  return fixture(async (cleanup) => {
    const tailnet = await acquireTailnet();
    cleanup.defer(() => tailnet.release());
    return tailnet;
  });
}

/** A temporary directory, removed with everything in it when `cleanup` is disposed. */
export async function tempDir(cleanup: AsyncDisposableStack, prefix: string): Promise<string> {
  const dir = await Deno.makeTempDir({ prefix });
  cleanup.defer(() => Deno.remove(dir, { recursive: true }));
  return dir;
}
