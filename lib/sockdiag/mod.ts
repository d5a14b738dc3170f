import { errorMessage } from "../util/error.ts";
/**
 * Who owns the other end of a loopback TCP connection: the kernel's socket diagnostics (netlink
 * `NETLINK_SOCK_DIAG`, `inet_diag_req_v2`) asked for exactly one socket by its 4-tuple, through libc
 * with Deno's FFI. One request and one answer per lookup, whatever the number of open sockets (a read
 * of `/proc/net/tcp` would scan them all).
 *
 * Used to accept a serve-ingress connection only from tailscaled: the PROXY header it sends names the
 * caller, so any other local process must not be able to send one.
 *
 * Linux only; needs `--allow-ffi`. {@link SockDiag.open} says why when it cannot work.
 *
 * @module
 */

const AF_INET = 2;
const AF_INET6 = 10;
const AF_NETLINK = 16;
const SOCK_DGRAM = 2;
const SOCK_CLOEXEC = 0o2000000;
const NETLINK_SOCK_DIAG = 4;
const SOCK_DIAG_BY_FAMILY = 20;
const NLM_F_REQUEST = 1;
const NLMSG_ERROR = 2;
const IPPROTO_TCP = 6;
const MSG_DONTWAIT = 0x40;
const SOL_SOCKET = 1;
const SO_RCVTIMEO = 20;
// nlmsghdr (16) + inet_diag_req_v2: family, protocol, ext, pad (4), states (4), inet_diag_sockid (48).
const REQUEST_BYTES = 16 + 8 + 48;
// The answer: nlmsghdr (16) + inet_diag_msg: family, state, timer, retrans (4), sockid (48), expires,
// rqueue, wqueue, uid, inode (5 × 4).
const UID_OFFSET = 16 + 4 + 48 + 12;
const INODE_OFFSET = UID_OFFSET + 4;

/** The owner of a socket. */
export interface SocketOwner {
  /** The user id of the socket's owner. */
  uid: number;
  /** The socket's inode (`socket:[inode]` among its process's fds). */
  inode: number;
}

/** Socket diagnostics are not available; the message says why and what to do. */
export class SockDiagError extends Error {
  override name = "SockDiagError";
}

const SYMBOLS = {
  socket: { parameters: ["i32", "i32", "i32"], result: "i32" },
  sendto: { parameters: ["i32", "buffer", "usize", "i32", "pointer", "u32"], result: "isize" },
  recv: { parameters: ["i32", "buffer", "usize", "i32"], result: "isize" },
  setsockopt: { parameters: ["i32", "i32", "i32", "buffer", "u32"], result: "i32" },
  close: { parameters: ["i32"], result: "i32" },
} as const;

type Libc = Deno.DynamicLibrary<typeof SYMBOLS>;

/** Writes an IPv4 or IPv6 address into a 16-byte `__be32[4]` field. */
function putAddress(view: DataView, offset: number, ip: string): number {
  if (!ip.includes(":")) {
    const parts = ip.split(".").map(Number);
    if (parts.length !== 4 || parts.some((p) => !(p >= 0 && p <= 255))) {
      throw new SockDiagError(`Address "${ip}" is not an IPv4 or IPv6 address`);
    }
    parts.forEach((p, i) => view.setUint8(offset + i, p));
    return AF_INET;
  }
  const [head, tail = ""] = ip.replace(/^\[|\]$/g, "").split("::");
  const h = head ? head.split(":") : [];
  const t = tail ? tail.split(":") : [];
  const groups = [...h, ...Array(8 - h.length - t.length).fill("0"), ...t].map((g) => parseInt(g, 16));
  if (groups.length !== 8 || groups.some((g) => !(g >= 0 && g <= 0xffff))) {
    throw new SockDiagError(`Address "${ip}" is not an IPv4 or IPv6 address`);
  }
  groups.forEach((g, i) => view.setUint16(offset + 2 * i, g));
  return AF_INET6;
}

/** A netlink socket for socket-diagnostics lookups. */
export class SockDiag {
  readonly #libc: Libc;
  readonly #fd: number;
  readonly #request = new Uint8Array(REQUEST_BYTES);
  readonly #answer = new Uint8Array(8192);
  #seq = 0;

  private constructor(libc: Libc, fd: number) {
    this.#libc = libc;
    this.#fd = fd;
  }

  /** Opens the netlink socket. Throws a {@link SockDiagError} naming the fix when it cannot. */
  static open(): SockDiag {
    if (Deno.build.os !== "linux") {
      throw new SockDiagError(`Socket diagnostics need Linux (this is ${Deno.build.os})`);
    }
    let libc: Libc;
    try {
      libc = Deno.dlopen("libc.so.6", SYMBOLS);
    } catch (error) {
      const why = error instanceof Deno.errors.NotCapable || error instanceof Deno.errors.PermissionDenied
        ? "run with --allow-ffi (the compiled binary has it)"
        : `libc.so.6 could not be loaded: ${errorMessage(error)}`;
      throw new SockDiagError(`Socket diagnostics are unavailable: ${why}`);
    }
    const fd = libc.symbols.socket(AF_NETLINK, SOCK_DGRAM | SOCK_CLOEXEC, NETLINK_SOCK_DIAG);
    if (fd < 0) {
      libc.close();
      throw new SockDiagError(
        "Socket diagnostics are unavailable: the kernel refused a NETLINK_SOCK_DIAG socket (a seccomp or LSM policy?)",
      );
    }
    // A lookup never blocks for long: an unanswered request is a failed lookup.
    const timeout = new Uint8Array(16);
    new DataView(timeout.buffer).setBigInt64(8, 200_000n, true); // 200 ms
    libc.symbols.setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, timeout, 16);
    return new SockDiag(libc, fd);
  }

  /**
   * The owner of the TCP socket whose local end is `local` and remote end `remote` (`{ ip, port }`), or
   * `undefined` when there is none (it closed meanwhile). Synchronous: one send, one receive.
   */
  tcpOwner(
    local: { ip: string; port: number },
    remote: { ip: string; port: number },
  ): SocketOwner | undefined {
    const req = this.#request;
    req.fill(0);
    const view = new DataView(req.buffer);
    const seq = ++this.#seq;
    view.setUint32(0, REQUEST_BYTES, true);
    view.setUint16(4, SOCK_DIAG_BY_FAMILY, true);
    view.setUint16(6, NLM_F_REQUEST, true);
    view.setUint32(8, seq, true);
    const family = putAddress(view, 16 + 8 + 4, local.ip);
    if (putAddress(view, 16 + 8 + 20, remote.ip) !== family) {
      throw new SockDiagError(`Addresses ${local.ip} and ${remote.ip} are of different families`);
    }
    view.setUint8(16, family);
    view.setUint8(17, IPPROTO_TCP);
    view.setUint32(20, 0xffffffff, true); // every state
    view.setUint16(24, local.port); // big-endian ports
    view.setUint16(26, remote.port);
    // inet_diag_sockid: sport, dport, src[4], dst[4], then the interface (0: any) at +36 and the
    // cookie at +40: INET_DIAG_NOCOOKIE, as we do not know it.
    view.setUint32(16 + 8 + 40, 0xffffffff, true);
    view.setUint32(16 + 8 + 44, 0xffffffff, true);
    const { sendto, recv } = this.#libc.symbols;
    if (Number(sendto(this.#fd, req, BigInt(REQUEST_BYTES), 0, null, 0)) !== REQUEST_BYTES) {
      throw new SockDiagError("Socket diagnostics request could not be sent");
    }
    for (let attempt = 0; attempt < 4; attempt++) {
      const n = Number(recv(this.#fd, this.#answer, BigInt(this.#answer.length), attempt ? MSG_DONTWAIT : 0));
      if (n < 16) return undefined;
      const answer = new DataView(this.#answer.buffer, 0, n);
      if (answer.getUint32(8, true) !== seq) continue; // a late answer to an earlier request
      if (answer.getUint16(4, true) === NLMSG_ERROR || n < INODE_OFFSET + 4) return undefined;
      return { uid: answer.getUint32(UID_OFFSET, true), inode: answer.getUint32(INODE_OFFSET, true) };
    }
    return undefined;
  }

  /** Closes the netlink socket and unloads libc. */
  close(): void {
    this.#libc.symbols.close(this.#fd);
    this.#libc.close();
  }
}
