import { createHash, randomBytes } from 'node:crypto';
import type { StreamHead } from '../release/stream-manifest';
import { bitmapBytes, getBit, setBit } from '../wire/packet';
import { MAX_STREAM_HOLDERS, StreamBeatAnswer, StreamBeatBody, StreamBeatMember, StreamBeatReply } from '../wire/stream-control';
import { GroupAllocator } from './allocator';
import type { AllocatorOptions } from './allocator';

/** The interval a stream member is asked to beat at; it beats sooner when it learns a new batch. */
export const STREAM_HEARTBEAT_MS = 1000;
/**
 * A map token also changes at every multiple of this on the server's clock, so members
 * that send it see the others' `verifiedUnits` (status only; not in the token) at most this
 * old: the 30 s a 1.4 answer's counters may lag (docs/protocol.md section 14).
 */
export const MAP_TOKEN_REFRESH_MS = 30_000;
/** Receipt ages are taken up to this (as in 1.4 heartbeats). */
const MAX_RECEIPT_AGE_MS = 60_000;

interface StreamGroup {
  g: GroupAllocator;
  /** The group key of this allocator's members: MACs on their NACKs and announces. */
  key: string;
  /** Per member, the first unit it lacks, from its last heartbeat's `have` (firstMissing). */
  need: Map<string, number>;
}

/**
 * The first unit at or past `from` that a heartbeat's `have` does not show held: the
 * start of what the member still needs (what it holds on is its disk, up to retention).
 */
export function firstMissing(b: Pick<StreamBeatBody, 'haveFrom' | 'have'>, from: number): number {
  let u = Math.max(b.haveFrom, from);
  while (u - b.haveFrom < b.have.length * 8 && getBit(b.have, u - b.haveFrom)) u++;
  return u;
}

/**
 * Allocation of a stream's units (docs/protocol.md, "Streams on the LAN"): one
 * GroupAllocator per (stream, LAN group), or per (stream, wide-area group) when the
 * member names one, so a stream gets the release's non-overlap, overhead weighting,
 * hedging and gateways. A stream is allocated as a release whose unit count grows: each
 * heartbeat brings the allocator up to the store's head (growUnits), and units that
 * retention dropped are not leased again. Members heartbeat as soon as they learn a new
 * batch (their long poll on the batches endpoint is woken by the store's append), so the
 * allocator learns new units without polling the store per member.
 *
 * After NORM's NORM_OBJECT_STREAM (RFC 5740 section 4.2.1.3): an object without a fixed
 * size whose segments receivers take in order while the sender keeps appending, and whose
 * oldest segments leave the sender's buffer as it advances (our retention).
 */
export class StreamAllocation {
  private readonly groups = new Map<string, StreamGroup>();
  /** "stream/member" -> the key of the allocator it is in (a member is in one per stream). */
  private readonly memberKeys = new Map<string, string>();

  constructor(private readonly allocator: Partial<AllocatorOptions> = {}) {}

  heartbeat(name: string, head: StreamHead, b: StreamBeatBody, now: number): StreamBeatReply {
    this.heartbeats.set(name, (this.heartbeats.get(name) ?? 0) + 1);
    const key = `${name}/${b.wideGroup ? `*${b.wideGroup}` : b.group}`;
    const mk = `${name}/${b.member}`;
    const prev = this.memberKeys.get(mk);
    if (prev !== undefined && prev !== key) this.groups.get(prev)?.g.leave(b.member);
    this.memberKeys.set(mk, key);
    let sg = this.groups.get(key);
    if (!sg) {
      const unitSize = head.unitSize;
      sg = { g: new GroupAllocator({ ...this.allocator, unitCount: 0, unitBytes: () => unitSize, shareWeighted: true }), key: randomBytes(32).toString('base64'), need: new Map() };
      this.groups.set(key, sg);
    }
    const g = sg.g;
    g.growUnits(head.nextUnit, head.firstUnit);
    const n = head.nextUnit;
    // The member's bitmap from its haveFrom on (byte-aligned), not over every unit the stream had.
    const base = Math.min(n, b.haveFrom) & ~7;
    const have = new Uint8Array(bitmapBytes(n - base));
    for (let i = 0; i < b.have.length * 8 && b.haveFrom + i < n; i++) if (getBit(b.have, i)) setBit(have, b.haveFrom + i - base);
    if (b.join) g.restart(b.member); // a new run of the member: what it had leased is not in flight
    const fetching = b.fetching.filter((u) => u < n);
    g.heartbeat(b.member, now, { have, haveFrom: base, address: b.address ?? null, fetching, fetchingBytes: b.fetchingBytes.slice(0, fetching.length), lanGroup: b.group, dataPort: b.dataPort ?? null, forwarded: b.forwarded, lanBytes: b.lanBytes, asking: b.lease > 0 });
    g.setHeartbeatInterval(b.member, STREAM_HEARTBEAT_MS);
    b.receipts.forEach((u, i) => {
      if (u < n) g.receipt(b.member, u, now - Math.min(b.receiptAgesMs[i] ?? 0, MAX_RECEIPT_AGE_MS));
    });
    const grant = b.lease > 0 && n > head.firstUnit ? g.lease(b.member, now, b.lease) : { units: [], retryAfterMs: 0 };
    for (const id of g.expire(now)) if (this.memberKeys.get(`${name}/${id}`) === key) this.memberKeys.delete(`${name}/${id}`);
    const members = g.memberViews(now);
    const from = this.holdersFrom(sg, new Set(members.map((m) => m.id)), b, head);
    const mine = b.group;
    const copyTo: StreamBeatAnswer['copyTo'] = [];
    if (b.wideGroup) {
      for (const [group, gw] of g.gateways(now)) {
        const e = group === mine ? null : g.endpointOf(gw);
        if (e) copyTo.push({ group, member: gw, address: e.address, port: e.port });
      }
    }
    const answer: StreamBeatAnswer = {
      v: 1,
      heartbeatMs: STREAM_HEARTBEAT_MS,
      groupKey: sg.key,
      firstUnit: head.firstUnit,
      nextUnit: n,
      ended: head.ended,
      lease: { units: grant.units, retryAfterMs: grant.retryAfterMs },
      members: members.map((m) => ({ id: m.id, group: m.group, address: m.address, dataPort: m.dataPort, role: m.role, verifiedUnits: m.verifiedUnits, complete: m.complete })),
      holdersFrom: from,
      holders: g.namedHolders(from, n, members),
      copyTo,
    };
    return b.mapToken === undefined ? answer : this.tokened(answer, b.mapToken, now, b.lean === true);
  }

  /**
   * The answer to a body with `mapToken` (docs/protocol.md, "Map tokens"): members by id,
   * not ranked (ranks move with every overhead sample; ids only when members come or go),
   * holders indexing that order, and `members`, `groupKey` and `copyTo` left out when the
   * token the member sent is the one they make now (with `lean`, leanReply's form). After
   * HTTP's conditional requests (RFC 9110 section 13.1.2, If-None-Match): the agent echoes
   * the validator of what it holds, and the server sends that part again only when it
   * changed.
   */
  private tokened(a: StreamBeatAnswer, sent: string, now: number, lean: boolean): StreamBeatReply {
    const order = a.members.map((_, i) => i).sort((i, j) => (a.members[i].id < a.members[j].id ? -1 : 1));
    const at: number[] = [];
    order.forEach((old, k) => (at[old] = k));
    const members = order.map((i) => a.members[i]);
    const holders = a.holders.map((h) => (h < 0 ? h : at[h]));
    const mapToken = mapTokenOf(a.groupKey, members, a.copyTo, Math.floor(now / MAP_TOKEN_REFRESH_MS), a.heartbeatMs, a.ended);
    const hit = sent === mapToken;
    if (hit) this.tokenHits++;
    if (lean) return leanReply(a, members, holders, hit ? null : mapToken);
    if (!hit) return { ...a, members, holders, mapToken };
    const { members: _m, groupKey: _k, copyTo: _c, ...rest } = a;
    return { ...rest, holders, mapToken };
  }

  /** Lease asks a stream's share rule held back, all allocators (server/allocator-share.ts). */
  get shareDeferrals(): number {
    let n = 0;
    for (const sg of this.groups.values()) n += sg.g.share.deferred;
    return n;
  }

  /** Answers to a body with `mapToken` that left the unchanged parts out (tests, bench). */
  tokenHits = 0;

  /**
   * The first unit of an answer's holders window: the first unit some member of the
   * allocator still lacks, as their last heartbeats said (a member's NACKs need the holders
   * of what it lacks, and a holder's repair role needs them for what its peers lack), and
   * at least `firstUnit` (retention). Units before it are held by every member, so naming
   * their holders again in every answer only made answers grow with the stream. Past
   * MAX_STREAM_HOLDERS units, the oldest are cut, and counted in holdersCut.
   */
  private holdersFrom(sg: StreamGroup, members: Set<string>, b: StreamBeatBody, head: StreamHead): number {
    const n = head.nextUnit;
    // A member's need moves on only through units its `have` shows held: a beat whose haveFrom
    // is past the need says nothing of the units between (an agent before 2026-12-01 sent its
    // lowest unit on disk there, not the next it delivers), so the need stays.
    const prev = b.join ? undefined : sg.need.get(b.member);
    const start = Math.max(prev ?? b.haveFrom, head.firstUnit);
    sg.need.set(b.member, b.haveFrom <= start ? firstMissing(b, start) : start);
    let need = n;
    for (const id of sg.need.keys()) if (!members.has(id)) sg.need.delete(id); // left or expired
    for (const u of sg.need.values()) if (u < need) need = u;
    const wanted = Math.max(head.firstUnit, need);
    const from = Math.max(wanted, n - MAX_STREAM_HOLDERS);
    this.holdersCut += from - wanted;
    return Math.min(from, n);
  }

  /** Holder entries some member still needed that answers left out (MAX_STREAM_HOLDERS), summed over answers. */
  holdersCut = 0;

  /** The server starts sending unit `u` to `member` (the overhead's send time, 000 claim 8). */
  sending(name: string, member: string, u: number, now: number): void {
    const key = this.memberKeys.get(`${name}/${member}`);
    if (key) this.groups.get(key)?.g.sending(member, u, now);
  }

  /** Heartbeats answered, by stream. */
  readonly heartbeats = new Map<string, number>();

  /** Unit bytes the server began to send, by stream (all unit downloads, members or not). */
  readonly unitBytesSent = new Map<string, number>();

  /** Live members of a stream's allocators (tests, status). */
  memberCount(name: string): number {
    let n = 0;
    for (const [k, sg] of this.groups) if (k.startsWith(name + '/')) n += sg.g.memberCount();
    return n;
  }
}

/**
 * A map token: 16 base64url characters of the SHA-256 of what an answer may leave out
 * (the group key, the members in answer order without `verifiedUnits`, `copyTo`; for lean
 * answers also `heartbeatMs` and `ended`) and the refresh period. Opaque to agents: only
 * equality counts.
 */
export function mapTokenOf(groupKey: string, members: StreamBeatMember[], copyTo: StreamBeatAnswer['copyTo'], period: number, heartbeatMs: number, ended: boolean): string {
  const m = members.map((x) => [x.id, x.group, x.address, x.dataPort, x.role, x.complete]);
  const c = copyTo.map((x) => [x.group, x.member, x.address, x.port]);
  return createHash('sha256').update(JSON.stringify([groupKey, m, c, period, heartbeatMs, ended])).digest('base64url').slice(0, 16);
}

/**
 * A lean answer (docs/protocol.md, "Lean answers"): the tokened answer without what the
 * member can work out or holds already. `newToken` null: the body's token is the current
 * one, so the map, `heartbeatMs`, `ended` and the token itself are left out (the token
 * covers them). Always: `nextUnit` when it is `holdersFrom + holders.length`, `firstUnit`
 * when 0, and a `lease` that leases nothing and asks for no wait. A member beats about once
 * per batch and most beats lease nothing, so at 64 KiB units those fields were ~130 of an
 * answer's ~290 bytes (issue 19).
 */
function leanReply(a: StreamBeatAnswer, members: StreamBeatMember[], holders: number[], newToken: string | null): StreamBeatReply {
  const whole = newToken !== null;
  return {
    v: 1,
    ...(whole ? { heartbeatMs: a.heartbeatMs, groupKey: a.groupKey } : {}),
    ...(a.firstUnit !== 0 ? { firstUnit: a.firstUnit } : {}),
    ...(a.nextUnit !== a.holdersFrom + holders.length ? { nextUnit: a.nextUnit } : {}),
    ...(whole ? { ended: a.ended } : {}),
    ...(a.lease.units.length > 0 || a.lease.retryAfterMs > 0 ? { lease: a.lease.retryAfterMs > 0 ? a.lease : { units: a.lease.units } } : {}),
    ...(whole ? { members } : {}),
    holdersFrom: a.holdersFrom,
    holders,
    ...(whole ? { copyTo: a.copyTo, mapToken: newToken } : {}),
  };
}
