import { isName } from './ids';
import { parseJsonObject } from './json-object';

/*
 * The stream heartbeat (docs/protocol.md, "Streams on the LAN (1.5)"): an agent that takes
 * a stream joins the stream's allocator for its LAN group (or wide-area group), reports
 * what it holds, receipts and downloads in flight, asks for units, and learns the units
 * published, the group key and who holds what. Pure codecs for untrusted bytes: the
 * server parses bodies, the agent parses answers; both are fuzzed (test/fuzz/targets.ts).
 */

/** Stream heartbeat request and answer format version. */
export const STREAM_CONTROL_V = 1;
/** Bitmap bytes in one body: 65,536 (524,288 units from `haveFrom`). */
export const MAX_STREAM_HAVE_BYTES = 65_536;
export const MAX_STREAM_RECEIPTS = 256;
export const MAX_STREAM_FETCHING = 64;
export const MAX_STREAM_LEASE = 64;
/** Holder entries in one answer (a window from `holdersFrom`). */
export const MAX_STREAM_HOLDERS = 65_536;
export const MAX_STREAM_MEMBERS = 4096;
/** Characters of a body's `mapToken` (the server's are 16). */
export const MAX_MAP_TOKEN_CHARS = 64;
/** Body and answer byte caps. */
export const MAX_STREAM_BODY_BYTES = 128 * 1024;
export const MAX_STREAM_ANSWER_BYTES = 4 * 1024 * 1024;
const MAX_UNIT = 2 ** 53 - 1;

export interface StreamBeatBody {
  v: 1;
  group: string;
  member: string;
  wideGroup?: string;
  address?: string | null;
  dataPort?: number;
  /** First unit of `have`: bit i (MSB first) is unit haveFrom + i. */
  haveFrom: number;
  have: Uint8Array;
  receipts: number[];
  receiptAgesMs: number[];
  fetching: number[];
  fetchingBytes: number[];
  lease: number;
  /** Fragments it re-multicast as a gateway, and unit bytes it took from its LAN (its own counts): gateway choice, as in section 3. */
  forwarded: number;
  lanBytes: number;
  /** The member's first heartbeat of a run: leases it held before are returned to the pool. */
  join: boolean;
  /**
   * Opt-in (agents from 2026-12-01): the `mapToken` of the last answer the member applied, or
   * "" for none yet. An answer to a body with it leaves out `members`, `groupKey` and `copyTo`
   * when its own `mapToken` is this one (they did not change); absent: whole answers.
   */
  mapToken?: string;
  /**
   * Opt-in (agents from 2026-12-03), only with `mapToken`: lean answers, which also leave
   * out what the member can work out or holds already (docs/protocol.md, "Lean answers").
   */
  lean?: boolean;
}

export interface StreamBeatMember {
  id: string;
  group: string;
  address: string | null;
  dataPort: number | null;
  role: 'gateway' | 'member';
  verifiedUnits: number;
  complete: boolean;
}

export interface StreamBeatAnswer {
  v: 1;
  heartbeatMs: number;
  groupKey: string;
  /** The first retained unit, and one past the last published (the head's). */
  firstUnit: number;
  nextUnit: number;
  ended: boolean;
  lease: { units: number[]; retryAfterMs: number };
  members: StreamBeatMember[];
  /** holders[i]: index into members of unit holdersFrom + i's lessee or holder, −1 none. */
  holdersFrom: number;
  holders: number[];
  copyTo: { group: string; member: string; address: string; port: number }[];
  /** Only to a body with `mapToken`: what `members` (without `verifiedUnits`), `groupKey` and `copyTo` are now, opaque. */
  mapToken?: string;
}

/**
 * An answer as the server sends it: to a body whose `mapToken` is the answer's, without the
 * parts that did not change; to a body with `lean`, also without what parseStreamBeatAnswer
 * fills in (docs/protocol.md, "Lean answers").
 */
export type StreamBeatReply = Pick<StreamBeatAnswer, 'v' | 'holdersFrom' | 'holders'> &
  Partial<Omit<StreamBeatAnswer, 'lease'>> & { lease?: { units: number[]; retryAfterMs?: number } };

class Bad extends Error {}
const fail = (m: string): never => {
  throw new Bad(m);
};
const int = (v: unknown, what: string, max = MAX_UNIT): number => (Number.isSafeInteger(v) && (v as number) >= 0 && (v as number) <= max ? (v as number) : fail(`${what} must be a whole number 0…${max}`));
const ints = (v: unknown, what: string, maxLen: number, max = MAX_UNIT): number[] => {
  if (v === undefined) return [];
  if (!Array.isArray(v) || v.length > maxLen) fail(`${what} must be a list of at most ${maxLen} whole numbers`);
  return (v as unknown[]).map((x) => int(x, what, max));
};
const name = (v: unknown, what: string): string => (isName(v) ? v : fail(`${what} must be 1–128 characters of letters, digits and . _ : @ -`));
const only = (o: Record<string, unknown>, keys: string[]) => {
  for (const k of Object.keys(o)) if (!keys.includes(k)) fail(`unknown field "${k.slice(0, 32)}"`);
};

/** A heartbeat body, or a message naming what is wrong (the server answers 400 BAD_BODY with it). */
export function parseStreamBeat(bytes: Uint8Array): StreamBeatBody | string {
  if (bytes.length > MAX_STREAM_BODY_BYTES) return `body larger than ${MAX_STREAM_BODY_BYTES} bytes`;
  const o = parseJsonObject(bytes);
  if (typeof o === 'string') return o;
  try {
    only(o, ['v', 'group', 'member', 'wideGroup', 'address', 'dataPort', 'haveFrom', 'have', 'receipts', 'receiptAgesMs', 'fetching', 'fetchingBytes', 'forwarded', 'lanBytes', 'lease', 'join', 'mapToken', 'lean']);
    if (o.v !== STREAM_CONTROL_V) fail(`v must be ${STREAM_CONTROL_V}`);
    if (typeof o.have !== 'string' || o.have.length > Math.ceil(MAX_STREAM_HAVE_BYTES / 3) * 4 || !/^[A-Za-z0-9+/]*={0,2}$/.test(o.have)) fail(`have must be base64 of at most ${MAX_STREAM_HAVE_BYTES} bytes`);
    if (o.address !== undefined && o.address !== null && (typeof o.address !== 'string' || o.address.length > 64 || !/^[0-9A-Fa-f.:%a-z]+$/.test(o.address))) fail('address must be an IP address');
    const b: StreamBeatBody = {
      v: 1,
      group: name(o.group, 'group'),
      member: name(o.member, 'member'),
      ...(o.wideGroup !== undefined ? { wideGroup: name(o.wideGroup, 'wideGroup') } : {}),
      ...(o.address !== undefined ? { address: o.address as string | null } : {}),
      ...(o.dataPort !== undefined ? { dataPort: int(o.dataPort, 'dataPort', 65535) } : {}),
      haveFrom: int(o.haveFrom, 'haveFrom'),
      have: Buffer.from(o.have as string, 'base64'),
      receipts: ints(o.receipts, 'receipts', MAX_STREAM_RECEIPTS),
      receiptAgesMs: ints(o.receiptAgesMs, 'receiptAgesMs', MAX_STREAM_RECEIPTS),
      fetching: ints(o.fetching, 'fetching', MAX_STREAM_FETCHING),
      fetchingBytes: ints(o.fetchingBytes, 'fetchingBytes', MAX_STREAM_FETCHING),
      lease: o.lease === undefined ? 0 : int(o.lease, 'lease', MAX_STREAM_LEASE),
      forwarded: o.forwarded === undefined ? 0 : int(o.forwarded, 'forwarded'),
      lanBytes: o.lanBytes === undefined ? 0 : int(o.lanBytes, 'lanBytes'),
      join: o.join === undefined ? false : o.join === true ? true : fail('join must be true when present'),
      lean: o.lean === undefined ? false : o.lean === true ? true : fail('lean must be true when present'),
      ...(o.mapToken !== undefined ? { mapToken: typeof o.mapToken === 'string' && o.mapToken.length <= MAX_MAP_TOKEN_CHARS ? o.mapToken : fail(`mapToken must be a string of at most ${MAX_MAP_TOKEN_CHARS} characters`) } : {}),
    };
    if (b.lean && b.mapToken === undefined) fail('lean needs mapToken');
    if (o.receiptAgesMs !== undefined && b.receiptAgesMs.length !== b.receipts.length) fail('receiptAgesMs must have one entry per unit in receipts');
    if (o.fetchingBytes !== undefined && b.fetchingBytes.length !== b.fetching.length) fail('fetchingBytes must have one entry per unit in fetching');
    return b;
  } catch (err) {
    if (err instanceof Bad) return err.message;
    throw err;
  }
}

/**
 * A heartbeat answer from the server; throws an Error naming what is wrong. `kept`: the
 * last answer the agent applied, whose `members`, `groupKey` and `copyTo` an answer that
 * leaves them out (its `mapToken` is the kept one's, or absent in a lean answer) stands
 * for, with its `heartbeatMs`, `ended` and `mapToken` when a lean answer leaves those out
 * too; `firstUnit` absent is 0, `nextUnit` absent is `holdersFrom + holders.length`, and
 * `lease` absent leases nothing. The result is whole.
 */
export function parseStreamBeatAnswer(bytes: Uint8Array, kept: StreamBeatAnswer | null = null): StreamBeatAnswer {
  if (bytes.length > MAX_STREAM_ANSWER_BYTES) throw new Error(`stream heartbeat answer larger than ${MAX_STREAM_ANSWER_BYTES} bytes`);
  const o = parseJsonObject(bytes);
  if (typeof o === 'string') throw new Error(`stream heartbeat answer: ${o}`);
  try {
    if (o.v !== STREAM_CONTROL_V) fail(`v must be ${STREAM_CONTROL_V}`);
    if (o.mapToken !== undefined && (typeof o.mapToken !== 'string' || !/^[A-Za-z0-9_-]{1,64}$/.test(o.mapToken))) fail('mapToken must be 1–64 characters of letters, digits, _ and -');
    const left = ['members', 'groupKey', 'copyTo'].filter((k) => o[k] === undefined).length;
    if (left === 3) {
      // Unchanged since the answer we applied: only with its token (and never without one).
      if (!kept || kept.mapToken === undefined || (o.mapToken ?? kept.mapToken) !== kept.mapToken) fail('members, groupKey and copyTo left out, but the mapToken is not the one of the answer we hold');
      o.members = kept!.members;
      o.groupKey = kept!.groupKey;
      o.copyTo = kept!.copyTo;
      o.mapToken = kept!.mapToken;
      o.heartbeatMs ??= kept!.heartbeatMs;
      o.ended ??= kept!.ended;
    } else if (left !== 0) fail('members, groupKey and copyTo must all be given or all be left out');
    if (!Array.isArray(o.holders) || o.holders.length > MAX_STREAM_HOLDERS) fail(`holders must be a list of at most ${MAX_STREAM_HOLDERS}`);
    o.firstUnit ??= 0;
    o.nextUnit ??= int(o.holdersFrom, 'holdersFrom') + (o.holders as unknown[]).length;
    o.lease ??= { units: [] };
    if (typeof o.groupKey !== 'string' || !/^[A-Za-z0-9+/]{43}=$/.test(o.groupKey)) fail('groupKey must be base64 of 32 bytes');
    if (typeof o.ended !== 'boolean') fail('ended must be true or false');
    if (!Array.isArray(o.members) || o.members.length > MAX_STREAM_MEMBERS) fail(`members must be a list of at most ${MAX_STREAM_MEMBERS}`);
    const members = (o.members as unknown[]).map((x): StreamBeatMember => {
      if (typeof x !== 'object' || x === null) return fail('members entries must be objects');
      const m = x as Record<string, unknown>;
      if (m.address !== null && typeof m.address !== 'string') fail('member address must be a string or null');
      if (m.role !== 'gateway' && m.role !== 'member') fail('member role must be gateway or member');
      return {
        id: name(m.id, 'member id'),
        group: name(m.group, 'member group'),
        address: (m.address as string | null) ?? null,
        dataPort: m.dataPort === null || m.dataPort === undefined ? null : int(m.dataPort, 'dataPort', 65535),
        role: m.role as 'gateway' | 'member',
        verifiedUnits: int(m.verifiedUnits, 'verifiedUnits'),
        complete: m.complete === true,
      };
    });
    const lease = (typeof o.lease === 'object' && o.lease !== null ? o.lease : fail('lease must be an object')) as Record<string, unknown>;
    const holders = (o.holders as unknown[]).map((h) => (Number.isSafeInteger(h) && (h as number) >= -1 && (h as number) < members.length ? (h as number) : fail('holders entries must be −1 or an index into members')));
    if (!Array.isArray(o.copyTo) || o.copyTo.length > MAX_STREAM_MEMBERS) fail('copyTo must be a list');
    const copyTo = (o.copyTo as unknown[]).map((x) => {
      const c = (typeof x === 'object' && x !== null ? x : fail('copyTo entries must be objects')) as Record<string, unknown>;
      if (typeof c.address !== 'string' || c.address.length > 64) fail('copyTo address must be a string');
      return { group: name(c.group, 'copyTo group'), member: name(c.member, 'copyTo member'), address: c.address as string, port: int(c.port, 'copyTo port', 65535) };
    });
    const a: StreamBeatAnswer = {
      v: 1,
      heartbeatMs: int(o.heartbeatMs, 'heartbeatMs', 600_000),
      groupKey: o.groupKey as string,
      firstUnit: int(o.firstUnit, 'firstUnit'),
      nextUnit: int(o.nextUnit, 'nextUnit'),
      ended: o.ended as boolean,
      lease: { units: ints(lease.units, 'lease units', MAX_STREAM_LEASE), retryAfterMs: int(lease.retryAfterMs ?? 0, 'retryAfterMs', 600_000) },
      members,
      holdersFrom: int(o.holdersFrom, 'holdersFrom'),
      holders,
      copyTo,
      ...(o.mapToken !== undefined ? { mapToken: o.mapToken as string } : {}),
    };
    if (a.firstUnit > a.nextUnit) fail('firstUnit must not be past nextUnit');
    if (a.holdersFrom + a.holders.length > a.nextUnit) fail('holders must not name units past nextUnit');
    for (const u of a.lease.units) if (u >= a.nextUnit) fail(`lease unit ${u} is not published (nextUnit ${a.nextUnit})`);
    return a;
  } catch (err) {
    if (err instanceof Bad) throw new Error(`stream heartbeat answer: ${err.message}`);
    throw err;
  }
}
