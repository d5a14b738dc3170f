/**
 * Shapes of the ext_authz messages as proto-loader hands them over (see `protos.ts` for the loader
 * options): the parts of a CheckRequest tailvoy reads, and the CheckResponse it writes. Field names
 * and numbers are the upstream ones (envoy.md §1.3); everything else in a CheckRequest passes through
 * unread (`looseObject`).
 *
 * @module
 */

import { z } from "zod";

/** `envoy.config.core.v3.SocketAddress`, as far as read. */
const SocketAddressSchema = z.looseObject({
  /** IP address; after the PROXY listener filter, the PROXY header's source. */
  address: z.string().optional(),
  /** Port (oneof `port_specifier`). */
  port_value: z.number().int().optional(),
});

/** `AttributeContext.Peer`, as far as read. */
const PeerSchema = z.looseObject({
  /** `core.v3.Address`: only the `socket_address` member is meaningful here. */
  address: z.looseObject({ socket_address: SocketAddressSchema.optional() }).optional(),
});

/** `google.protobuf.Struct` holding string values (how the PROXY listener filter stores TLVs). */
const StringStructSchema = z.looseObject({
  /** Struct fields; only the `stringValue` kind is read. */
  fields: z.record(z.string(), z.looseObject({ stringValue: z.string().optional() })).optional(),
});

/** `AttributeContext.HttpRequest`, as far as read. */
const HttpRequestSchema = z.looseObject({
  /** Envoy's internal stream id (not `x-request-id`). */
  id: z.string().optional(),
  /** HTTP method. */
  method: z.string().optional(),
  /** Request headers (lower-case keys, pseudo-headers included, repeats joined with ","). */
  headers: z.record(z.string(), z.string()).optional(),
  /** Request target after Envoy's path normalisation, query included. */
  path: z.string().optional(),
  /** Host or `:authority`. */
  host: z.string().optional(),
  /** URL scheme. */
  scheme: z.string().optional(),
  /** "HTTP/1.1", "HTTP/2", ... */
  protocol: z.string().optional(),
});

/** `envoy.service.auth.v3.CheckRequest`: the fields tailvoy reads. */
export const CheckRequestSchema = z.looseObject({
  /** `AttributeContext`. */
  attributes: z.looseObject({
    /** The connection's peer: the caller, as the PROXY header said. */
    source: PeerSchema.optional(),
    /** The connection's local end: the PROXY header's destination. */
    destination: PeerSchema.optional(),
    /** The request. */
    request: z.looseObject({ http: HttpRequestSchema.optional() }).optional(),
    /** Per-route `check_settings.context_extensions` (tailvoy: `listener`). */
    context_extensions: z.record(z.string(), z.string()).optional(),
    /** Connection and request dynamic metadata of the `metadata_context_namespaces`. */
    metadata_context: z.looseObject({
      /** Namespace → Struct. */
      filter_metadata: z.record(z.string(), StringStructSchema).optional(),
    }).optional(),
  }).optional(),
});

/** A decoded CheckRequest (the parts tailvoy reads). */
export type CheckRequest = z.infer<typeof CheckRequestSchema>;

/** `core.v3.HeaderValueOption.HeaderAppendAction` names. */
export const HEADER_APPEND_ACTIONS = [
  "APPEND_IF_EXISTS_OR_ADD",
  "ADD_IF_ABSENT",
  "OVERWRITE_IF_EXISTS_OR_ADD",
  "OVERWRITE_IF_EXISTS",
] as const;

/** `core.v3.HeaderValueOption` as tailvoy writes it. */
export const HeaderValueOptionSchema = z.object({
  /** Header name and value. */
  header: z.object({ key: z.string().min(1), value: z.string() }),
  /** Deprecated BoolValue; its presence decides overwrite vs append on older Envoys. */
  append: z.object({ value: z.boolean() }).optional(),
  /** What to do with an existing header of that name. */
  append_action: z.enum(HEADER_APPEND_ACTIONS).optional(),
  /** Keep the header when its value is empty. */
  keep_empty_value: z.boolean().optional(),
});

/** One header mutation. */
export type HeaderValueOption = z.infer<typeof HeaderValueOptionSchema>;

/** `envoy.service.auth.v3.CheckResponse` as tailvoy writes it (set exactly one of the two responses). */
export const CheckResponseSchema = z.object({
  /** `google.rpc.Status`: 0 allows, anything else denies. */
  status: z.object({ code: z.number().int(), message: z.string().optional() }),
  /** Allow: request header mutations. */
  ok_response: z.object({
    /** Headers set on the request sent upstream. */
    headers: z.array(HeaderValueOptionSchema).optional(),
    /** Headers removed from the request sent upstream. */
    headers_to_remove: z.array(z.string()).optional(),
  }).optional(),
  /** Deny: the local reply Envoy sends. */
  denied_response: z.object({
    /** `type.v3.HttpStatus`; the code is a `StatusCode` enum name such as "Forbidden". */
    status: z.object({ code: z.string() }),
    /** Response headers. */
    headers: z.array(HeaderValueOptionSchema).optional(),
    /** Response body. */
    body: z.string().optional(),
  }).optional(),
  /** Set by the decoder only: which oneof member is present. */
  http_response: z.enum(["ok_response", "denied_response", "error_response"]).optional(),
});

/** A CheckResponse. */
export type CheckResponse = z.infer<typeof CheckResponseSchema>;
