/**
 * Lookups by text that comes from outside (config keys, listener names, header names, JSON from
 * tailscaled or Envoy): only a record's own properties count, so a name such as `constructor`,
 * `valueOf` or `__proto__` never finds a member of `Object.prototype`.
 *
 * @module
 */

/** `record[key]` when `key` is an own property of `record`; otherwise `undefined`. */
export function own<T>(record: Readonly<Record<string, T>> | null | undefined, key: string): T | undefined {
  return record != null && Object.hasOwn(record, key) ? record[key] : undefined;
}

/**
 * Sets `record[key]` as an own data property, even for `__proto__` (which plain assignment would take
 * as the object's prototype).
 */
export function setOwn<T>(record: Record<string, T>, key: string, value: T): void {
  Object.defineProperty(record, key, { value, enumerable: true, writable: true, configurable: true });
}
