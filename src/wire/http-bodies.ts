import { isReleaseId, MAX_UNITS } from './manifest';

/**
 * Request bodies of the control-plane HTTP API (docs/protocol.md, "HTTP API").
 * Each parser takes untrusted bytes and returns a typed value or an error that
 * names the offending field. Unknown fields are rejected, so typos surface.
 */
export const MAX_ID_CHARS = 128;
/**
 * Every body but a heartbeat's `have` is small: ids, an address, at most 1024
 * `fetching` units and as many `fetchingBytes`, 10 digits each (22.5 KiB with the
 * field names and commas). A heartbeat may add the base64 of the release's
 * bitmap. Caps are computed from these, not picked large (issue 13: a 4 MiB cap let
 * one request cost 1.4 s of parsing).
 */
export const BODY_BASE_BYTES = 32 * 1024;
/** Nesting allowed in a body: an object holding arrays of numbers is depth 2. */
export const MAX_JSON_DEPTH = 4;

/** The largest body a request may carry for a release of `unitCount` units. */
export function maxBodyBytes(unitCount: number): number {
  return BODY_BASE_BYTES + 4 * Math.ceil(Math.ceil(unitCount / 8) / 3);
}
/** The absolute cap, before the release is known: a body for the largest release allowed. */
export const MAX_BODY_BYTES = maxBodyBytes(MAX_UNITS);

/**
 * Depth of the deepest `[` / `{` nesting, outside strings, stopping once it passes
 * `limit`: a linear scan that runs before JSON.parse, so `[[[[…` costs one pass and
 * no recursion.
 */
export function jsonDepthExceeds(bytes: Uint8Array, limit: number): boolean {
  let depth = 0;
  let inString = false;
  for (let i = 0; i < bytes.length; i++) {
    const c = bytes[i];
    if (inString) {
      if (c === 0x5c) i++; // backslash: skip the escaped byte
      else if (c === 0x22) inString = false;
    } else if (c === 0x22) inString = true;
    else if (c === 0x5b || c === 0x7b) {
      if (++depth > limit) return true;
    } else if (c === 0x5d || c === 0x7d) depth--;
  }
  return false;
}
const ID_RE = /^[A-Za-z0-9._:@-]+$/;

export type Parsed<T> = { ok: true; value: T } | { ok: false; error: string };

export interface MemberRef {
  release: string;
  group: string;
  member: string;
}
export interface HeartbeatBody extends MemberRef {
  /** Base64 of the verified-units bitmap (MSB first). */
  have?: string;
  address?: string;
  fetching?: number[];
  /** Bytes received so far of each unit in `fetching`, same order (progress for hedging). */
  fetchingBytes?: number[];
  /** Its downloads wait for its own copies to other groups to leave (it is sending, not straggling). */
  copying?: boolean;
  /** Release bytes the member took from its LAN peers (copies and repairs), since it started on the release. */
  lanBytes?: number;
  /** Fragments the member re-multicast as its LAN group's gateway, since it started. */
  forwarded?: number;
  /** The wide-area group the member's LAN group belongs to. */
  wideGroup?: string;
  /** UDP port of the member's unicast socket (cross-group copies and NACKs). */
  dataPort?: number;
  /** 1.4: the map the member last saw (`mapEpoch`, `mapVersion` of an answer); its presence asks for 1.4 answers. */
  mapEpoch?: number;
  mapVersion?: number;
  /** 1.4: receipt notices folded in: units it verified, and how many ms ago each (same order). */
  receipts?: number[];
  receiptAgesMs?: number[];
  /** 1.4: lease up to this many more units; the answer's `lease` grants them. */
  lease?: number;
  /** 1.5: the member takes copy trees (docs/protocol.md section 17): derives its copy destinations and forwards down the tree. */
  copyTree?: boolean;
}
export interface LeaseBody extends MemberRef {
  /** Units the member's LAN group needs and the wide-area group could not deliver (relay fallback). */
  want?: number[];
  /** Why `want` is asked: `relayed` (a forwarded NACK went unanswered, the default) or `stalled` (no progress at all). */
  reason?: string;
}
export interface ReceiptBody extends MemberRef {
  unit: number;
}
export interface CompleteBody extends MemberRef {
  sha256: string;
}
/** A unit from the server failed verification `failures` times in a row (protocol v1.1). */
export interface BadUnitBody extends MemberRef {
  unit: number;
  failures: number;
}
/** What an agent's on_complete hook did with a release. */
export interface HookBody extends MemberRef {
  /** Exit status, absent when the hook was killed by a signal or could not start. */
  exitCode?: number;
  signal?: string;
  durationMs: number;
  /** Why the hook could not run or was killed (timeout), short. */
  error?: string;
}

// ---------------------------------------------------------------- answers

/**
 * One member as the server describes it: in the split map of every join and heartbeat
 * answer, and (with more fields, FleetMemberRecord) in GET /v1/fleet. Fields marked
 * "wide-area" came with protocol 1.0's wide-area groups; a reader of older servers should
 * treat them as possibly absent.
 */
export interface MemberRecord {
  id: string;
  /** 1 = lowest overhead. Members without a sample rank after those with one. */
  rank: number;
  /** Smoothed overhead in ms per MiB; null until the first receipt notice. */
  overheadMsPerMiB: number | null;
  verifiedUnits: number;
  leases: number;
  complete: boolean;
  lastSeenMsAgo: number;
  address: string | null;
  /** The member's LAN group (several in a wide-area group). */
  group: string;
  /** UDP port of its unicast socket (cross-group copies and NACKs), when it has one. */
  dataPort: number | null;
  /** `gateway`: the member of its LAN group that receives and re-multicasts other groups' copies. */
  role: 'gateway' | 'member';
  /** Fragments it re-multicast as a gateway (its own count, from heartbeats). */
  forwarded: number;
  /** Release bytes it took from its LAN peers (its own count, from heartbeats). */
  lanBytes: number;
  /** Times it lost the gateway role for forwarding nothing while its group lacked units held elsewhere. */
  gatewayDemotions: number;
  /** Units it claimed to hold that its LAN group kept asking for: claims that did not deliver. */
  undeliveredClaims: number;
}

/** The split-download map (004 claim 11): who leases or holds each unit, and the ranking. */
export interface SplitMap {
  members: MemberRecord[];
  /** holders[u]: index into `members` of the member leased or holding unit u, -1 for none. */
  holders: number[];
  groupComplete: boolean;
  /** Every unit is held by some member (the `all-fetched` start policy waits for this). */
  allHeld: boolean;
}

/** A gateway of another LAN group, where a member of a wide-area group sends copies besides its LAN. */
export interface CopyDestination {
  group: string;
  member: string;
  address: string;
  port: number;
}

/** The answer to POST /v1/join and /v1/heartbeat. */
export interface HeartbeatAnswer extends SplitMap {
  /** Heartbeat at this interval from now on (1.3: chosen per member by phase). */
  heartbeatMs: number;
  /** Base64 of this release's group key: MACs on NACK and ANNOUNCE packets. */
  groupKey?: string;
  policy?: 'wide' | 'group' | 'representative';
  start?: 'immediate' | 'all-fetched';
  /** false under the `all-fetched` start policy until every unit is held somewhere. */
  lanStart?: boolean;
  copyTo?: CopyDestination[];
  /** 1.5: copies go down copy trees of this degree (section 17); `copyTo` is then empty. Absent: no tree. */
  copyTree?: number;
}

/** Receipts one 1.4 heartbeat may carry. */
export const MAX_FOLDED_RECEIPTS = 256;
/**
 * 1.8 (docs/protocol.md section 20): the longest a follower's channel poll is held, and the
 * longest heartbeat interval an idle member holding one is asked for, and what a 1.8 agent
 * takes of either (a day; 1.7 takes an hour of both and clamps what is over). The held poll
 * shows the server the member lives, so its beats need not.
 */
export const FOLLOWING_MAX_MS = 86_400_000;

/**
 * A member in a 1.4 answer (section 14): the 1.3 record without `rank` and
 * `lastSeenMsAgo`, plus `slot`, its number in this allocator (holders name slots).
 */
export interface MemberRecord14 {
  slot: number;
  id: string;
  group: string;
  address: string | null;
  dataPort: number | null;
  role: 'gateway' | 'member';
  overheadMsPerMiB: number | null;
  verifiedUnits: number;
  leases: number;
  complete: boolean;
  forwarded: number;
  lanBytes: number;
  gatewayDemotions: number;
  undeliveredClaims: number;
}

/** The map part of a 1.4 join or heartbeat answer: all of it (`full`), or what changed since the member's version. */
export interface MapDelta {
  mapEpoch: number;
  mapVersion: number;
  full: boolean;
  /** full: every member; else the members whose records changed (or joined). */
  members: MemberRecord14[];
  /** Slots of members that left since. */
  gone?: number[];
  /** full: the slot named for each unit (-1: none). */
  holderSlots?: number[];
  /** Not full: pairs [unit, slot] whose named holder changed (-1: none any more). */
  holderChanges?: number[];
  groupComplete: boolean;
  allHeld: boolean;
}

/** The answer to a 1.4 join or heartbeat. */
export interface HeartbeatAnswer14 extends MapDelta {
  heartbeatMs: number;
  /** Only in full answers (they do not change for an allocator). */
  groupKey?: string;
  policy?: 'wide' | 'group' | 'representative';
  start?: 'immediate' | 'all-fetched';
  lanStart: boolean;
  /** Present when copy destinations changed since the member's version (and in full answers under `wide`). */
  copyTo?: CopyDestination[];
  /** 1.5: with `copyTo`, the copy trees' degree (section 17); absent with `copyTo`: no tree. */
  copyTree?: number;
  /** The grant for the body's `lease` (absent when it asked for none). */
  lease?: { units: number[]; hedged?: number[]; retryAfterMs: number; exhausted: boolean; origin?: string };
}

/** A member in GET /v1/fleet: its split-map record and what the server keeps about it. */
export interface FleetMemberRecord extends MemberRecord {
  /** Unit bytes the server wrote to it for this release. */
  originBytes: number;
  /** The overhead was measured before the server restarted (not measured again yet). */
  overheadBeforeRestart?: boolean;
  /** Units that kept failing verification from the server (1.1). */
  badUnits: { unit: number; failures: number }[];
  /** What its on_complete hook did, as it reported it. */
  hook: { exitCode: number | null; signal: string | null; error: string | null; durationMs: number; msAgo: number } | null;
}

type FieldSpec = { kind: 'id' | 'release' | 'string' | 'base64' | 'uint' | 'uintArray' | 'sha256' | 'bool' | 'count'; optional?: boolean; max?: number };

const REF: Record<string, FieldSpec> = {
  release: { kind: 'release' },
  group: { kind: 'id' },
  member: { kind: 'id' },
};

export const SCHEMAS = {
  heartbeat: {
    ...REF,
    mapEpoch: { kind: 'uint', optional: true },
    mapVersion: { kind: 'count', optional: true },
    receipts: { kind: 'uintArray', optional: true, max: MAX_FOLDED_RECEIPTS },
    receiptAgesMs: { kind: 'uintArray', optional: true, max: MAX_FOLDED_RECEIPTS },
    lease: { kind: 'uint', optional: true },
    have: { kind: 'base64', optional: true, max: 4 * Math.ceil(Math.ceil(MAX_UNITS / 8) / 3) },
    address: { kind: 'string', optional: true, max: 256 },
    fetching: { kind: 'uintArray', optional: true, max: 1024 },
    fetchingBytes: { kind: 'uintArray', optional: true, max: 1024 },
    forwarded: { kind: 'uint', optional: true },
    lanBytes: { kind: 'count', optional: true },
    copying: { kind: 'bool', optional: true },
    wideGroup: { kind: 'id', optional: true },
    dataPort: { kind: 'uint', optional: true },
    copyTree: { kind: 'bool', optional: true },
  },
  lease: { ...REF, want: { kind: 'uintArray', optional: true, max: 64 }, reason: { kind: 'string', optional: true, max: 16 } },
  leave: REF,
  receipt: { ...REF, unit: { kind: 'uint' } },
  complete: { ...REF, sha256: { kind: 'sha256' } },
  badUnit: { ...REF, unit: { kind: 'uint' }, failures: { kind: 'uint' } },
  hook: { ...REF, exitCode: { kind: 'uint', optional: true }, signal: { kind: 'string', optional: true, max: 32 }, durationMs: { kind: 'uint' }, error: { kind: 'string', optional: true, max: 512 } },
} satisfies Record<string, Record<string, FieldSpec>>;

function checkField(name: string, v: unknown, spec: FieldSpec): string | null {
  switch (spec.kind) {
    case 'release':
      return typeof v === 'string' && isReleaseId(v) ? null : `${name} must be a release id (32 hex characters)`;
    case 'id':
      return typeof v === 'string' && v.length > 0 && v.length <= MAX_ID_CHARS && ID_RE.test(v)
        ? null
        : `${name} must be 1–${MAX_ID_CHARS} characters of letters, digits and . _ : @ -`;
    case 'string':
      return typeof v === 'string' && v.length <= (spec.max ?? 1024) ? null : `${name} must be a string of at most ${spec.max ?? 1024} characters`;
    case 'base64':
      return typeof v === 'string' && v.length <= (spec.max ?? 1 << 20) && /^[A-Za-z0-9+/]*={0,2}$/.test(v) ? null : `${name} must be base64`;
    case 'uint':
      return Number.isSafeInteger(v) && (v as number) >= 0 && (v as number) <= 0xffffffff ? null : `${name} must be a non-negative integer`;
    case 'uintArray':
      if (!Array.isArray(v) || v.length > (spec.max ?? 1024)) return `${name} must be an array of at most ${spec.max ?? 1024} integers`;
      for (const x of v) if (!Number.isSafeInteger(x) || x < 0 || x > 0xffffffff) return `${name} must hold non-negative integers`;
      return null;
    case 'count':
      return Number.isSafeInteger(v) && (v as number) >= 0 ? null : `${name} must be a non-negative integer`;
    case 'bool':
      return typeof v === 'boolean' ? null : `${name} must be true or false`;
    case 'sha256':
      return typeof v === 'string' && /^[0-9a-f]{64}$/.test(v) ? null : `${name} must be 64 lowercase hex characters`;
  }
}

export function parseBody<T>(bytes: Uint8Array, schema: Record<string, FieldSpec>): Parsed<T> {
  if (bytes.length > MAX_BODY_BYTES) return { ok: false, error: `body larger than ${MAX_BODY_BYTES} bytes` };
  if (jsonDepthExceeds(bytes, MAX_JSON_DEPTH)) return { ok: false, error: `body nests deeper than ${MAX_JSON_DEPTH} levels` };
  let v: unknown;
  try {
    v = JSON.parse(Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString('utf8'));
  } catch (err) {
    return { ok: false, error: `body is not JSON: ${(err as Error).message}` };
  }
  if (typeof v !== 'object' || v === null || Array.isArray(v)) return { ok: false, error: 'body must be a JSON object' };
  const o = v as Record<string, unknown>;
  for (const k of Object.keys(o)) if (!Object.prototype.hasOwnProperty.call(schema, k)) return { ok: false, error: `unknown field "${k}"` };
  for (const [k, spec] of Object.entries(schema)) {
    if (o[k] === undefined) {
      if (spec.optional) continue;
      return { ok: false, error: `missing field "${k}"` };
    }
    const e = checkField(k, o[k], spec);
    if (e) return { ok: false, error: e };
  }
  return { ok: true, value: o as T };
}
