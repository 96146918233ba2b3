import { randomBytes } from 'node:crypto';
import type { StreamHead } from '../release/stream-manifest';
import { bitmapBytes, getBit, setBit } from '../wire/packet';
import { MAX_STREAM_HOLDERS, StreamBeatAnswer, StreamBeatBody } from '../wire/stream-control';
import { GroupAllocator } from './allocator';
import type { AllocatorOptions } from './allocator';

/** The interval a stream member is asked to beat at; it beats sooner when it learns a new batch. */
export const STREAM_HEARTBEAT_MS = 1000;
/** Receipt ages are taken up to this (as in 1.4 heartbeats). */
const MAX_RECEIPT_AGE_MS = 60_000;

interface StreamGroup {
  g: GroupAllocator;
  /** The group key of this allocator's members: MACs on their NACKs and announces. */
  key: string;
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

  heartbeat(name: string, head: StreamHead, b: StreamBeatBody, now: number): StreamBeatAnswer {
    const key = `${name}/${b.wideGroup ? `*${b.wideGroup}` : b.group}`;
    const mk = `${name}/${b.member}`;
    const prev = this.memberKeys.get(mk);
    if (prev !== undefined && prev !== key) this.groups.get(prev)?.g.leave(b.member);
    this.memberKeys.set(mk, key);
    let sg = this.groups.get(key);
    if (!sg) {
      const unitSize = head.unitSize;
      sg = { g: new GroupAllocator({ ...this.allocator, unitCount: 0, unitBytes: () => unitSize }), key: randomBytes(32).toString('base64') };
      this.groups.set(key, sg);
    }
    const g = sg.g;
    g.growUnits(head.nextUnit, head.firstUnit);
    const n = head.nextUnit;
    const have = new Uint8Array(bitmapBytes(n));
    for (let i = 0; i < b.have.length * 8 && b.haveFrom + i < n; i++) if (getBit(b.have, i)) setBit(have, b.haveFrom + i);
    if (b.join) g.restart(b.member); // a new run of the member: what it had leased is not in flight
    const fetching = b.fetching.filter((u) => u < n);
    g.heartbeat(b.member, now, { have, address: b.address ?? null, fetching, fetchingBytes: b.fetchingBytes.slice(0, fetching.length), lanGroup: b.group, dataPort: b.dataPort ?? null, forwarded: b.forwarded, lanBytes: b.lanBytes });
    g.setHeartbeatInterval(b.member, STREAM_HEARTBEAT_MS);
    b.receipts.forEach((u, i) => {
      if (u < n) g.receipt(b.member, u, now - Math.min(b.receiptAgesMs[i] ?? 0, MAX_RECEIPT_AGE_MS));
    });
    const grant = b.lease > 0 && n > head.firstUnit ? g.lease(b.member, now, b.lease) : { units: [], retryAfterMs: 0 };
    for (const id of g.expire(now)) if (this.memberKeys.get(`${name}/${id}`) === key) this.memberKeys.delete(`${name}/${id}`);
    const map = g.map(now);
    const from = Math.max(head.firstUnit, n - MAX_STREAM_HOLDERS);
    const mine = b.group;
    const copyTo: StreamBeatAnswer['copyTo'] = [];
    if (b.wideGroup) {
      for (const [group, gw] of g.gateways(now)) {
        const e = group === mine ? null : g.endpointOf(gw);
        if (e) copyTo.push({ group, member: gw, address: e.address, port: e.port });
      }
    }
    return {
      v: 1,
      heartbeatMs: STREAM_HEARTBEAT_MS,
      groupKey: sg.key,
      firstUnit: head.firstUnit,
      nextUnit: n,
      ended: head.ended,
      lease: { units: grant.units, retryAfterMs: grant.retryAfterMs },
      members: map.members.map((m) => ({ id: m.id, group: m.group, address: m.address, dataPort: m.dataPort, role: m.role, verifiedUnits: m.verifiedUnits, complete: m.complete })),
      holdersFrom: from,
      holders: map.holders.slice(from, n),
      copyTo,
    };
  }

  /** The server starts sending unit `u` to `member` (the overhead's send time, 000 claim 8). */
  sending(name: string, member: string, u: number, now: number): void {
    const key = this.memberKeys.get(`${name}/${member}`);
    if (key) this.groups.get(key)?.g.sending(member, u, now);
  }

  /** Unit bytes the server began to send, by stream (all unit downloads, members or not). */
  readonly unitBytesSent = new Map<string, number>();

  /** Live members of a stream's allocators (tests, status). */
  memberCount(name: string): number {
    let n = 0;
    for (const [k, sg] of this.groups) if (k.startsWith(name + '/')) n += sg.g.memberCount();
    return n;
  }
}
