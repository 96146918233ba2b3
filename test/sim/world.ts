import { DataPacket, NackPacket, PacketType, decodePacket, getBit } from '../../src/wire/packet';
import { Sim } from './clock';
import { MakeCore } from './core-api';
import { NO_LOSS } from './loss';
import { MemberOptions, SimMember } from './member';
import { Lan, LinkSpec, Network } from './network';
import { Prng } from './prng';
import { SimRelease, makeRelease } from './release';
import { SimServer } from './server';

/**
 * A whole simulated fleet: LAN groups of members, each a protocol core behind a
 * SimMember driver, the SimServer, and a tap that reads every datagram on the wire
 * (through src/wire's decoder) to count what the protocol did.
 */
export interface WorldOptions {
  seed: number;
  makeCore: MakeCore;
  groups: { name: string; members: number }[];
  unitCount: number;
  unitSize: number;
  fragmentBytes: number;
  /** Every member's LAN links (default: 100 Mbit/s, 0.1 ms, no loss). */
  lan?: { up?: LinkSpec; down?: LinkSpec };
  /** Between LAN groups (default: 20 Mbit/s, 15 ms). */
  route?: LinkSpec;
  member?: Partial<Omit<MemberOptions, 'id' | 'group'>>;
  /** Per-member options of the members present at the start, by group and index in it. */
  memberOverrides?: (group: string, index: number) => Partial<MemberOptions>;
  memberTimeoutMs?: number;
  /** 1.5 copy trees of this degree between the groups (default: none, every member copies to every gateway). */
  copyTree?: number;
}

export const DEFAULT_MEMBER: Omit<MemberOptions, 'id' | 'group'> = {
  rateBytesPerSec: 10_000_000,
  crossRateBytesPerSec: 2_000_000,
  fragmentBytes: 1024,
  wanRateBytesPerSec: 1_000_000,
  wanDelayMs: 20,
  fetchConcurrency: 2,
  wanChunkBytes: 4096,
  heartbeatMs: 1000,
};

/** What the tap saw on the wire. */
export class WireCounts {
  packets = { data: 0, repair: 0, forward: 0, nack: 0, announce: 0, feedback: 0, other: 0 };
  bytes = { data: 0, repair: 0, forward: 0, nack: 0, announce: 0, feedback: 0, other: 0 };
  /** "unit/fragment" -> fragment requests in NACKs. */
  readonly requests = new Map<string, number>();
  /** "unit/fragment" -> requests sent before the first repair of it left (the first round). */
  readonly firstRoundRequests = new Map<string, number>();
  /** "unit/fragment" -> repairs sent of it. */
  readonly repairs = new Map<string, number>();
  /** "unit/fragment" -> receivers that lost a DATA packet of it on their link. */
  readonly lostBy = new Map<string, Set<string>>();
  /** Per sender endpoint: packets by kind. */
  readonly bySender = new Map<string, { data: number; repair: number; nack: number; announce: number; other: number }>();
}

export class World {
  readonly sim = new Sim();
  readonly net: Network;
  readonly server: SimServer;
  readonly release: SimRelease;
  readonly members: SimMember[] = [];
  readonly lans = new Map<string, Lan>();
  readonly wire = new WireCounts();
  private readonly rng: Prng;
  private readonly groupIndex = new Map<string, number>();
  private readonly perGroupCount = new Map<string, number>();
  private started = false;

  constructor(readonly opts: WorldOptions) {
    this.rng = new Prng(opts.seed);
    this.net = new Network(this.sim, opts.seed);
    this.release = makeRelease(opts.seed, opts.unitCount, opts.unitSize);
    const key = groupKeyOf(opts.seed);
    this.server = new SimServer({
      unitCount: opts.unitCount,
      groupKey: key,
      memberTimeoutMs: opts.memberTimeoutMs ?? 3000,
      wide: opts.groups.length > 1,
      ...(opts.copyTree ? { copyTree: opts.copyTree } : {}),
    });
    const lanDefaults = {
      up: opts.lan?.up ?? { rateBytesPerSec: 12_500_000, delayMs: 0.1, loss: NO_LOSS },
      down: opts.lan?.down ?? { rateBytesPerSec: 12_500_000, delayMs: 0.1, loss: NO_LOSS },
    };
    opts.groups.forEach((g, i) => {
      this.groupIndex.set(g.name, i);
      this.lans.set(g.name, this.net.addLan(g.name, lanDefaults));
    });
    const lans = [...this.lans.values()];
    for (let i = 0; i < lans.length; i++) {
      for (let j = i + 1; j < lans.length; j++) this.net.connect(lans[i], lans[j], opts.route ?? { rateBytesPerSec: 2_500_000, delayMs: 15 });
    }
    this.net.tap = (from, data) => this.see(from.name, data);
    this.net.lossTap = (link, data) => this.lost(link.name, data);
    for (const g of opts.groups) for (let i = 0; i < g.members; i++) this.addMember(g.name, opts.memberOverrides?.(g.name, i) ?? {});
    const shares = this.server.assignShares();
    // As an agent starts: join (the first split map and the group key), then take its leases.
    for (const m of this.members) m.start();
    for (const m of this.members) m.lease(shares.get(m.opts.id) ?? []);
    this.started = true;
    // The server's own clock: silent members are dropped every 500 ms.
    const expire = (): void => {
      this.server.expire(this.sim.now);
      if (this.members.some((m) => m.alive && m.completedAt === null)) this.sim.after(500, expire);
    };
    this.sim.after(500, expire);
  }

  /** A new member of `group` (before the start, or later: a late joiner, which then joins at once). */
  addMember(group: string, overrides: Partial<MemberOptions> = {}): SimMember {
    const gi = this.groupIndex.get(group);
    const lan = this.lans.get(group);
    if (gi === undefined || !lan) throw new Error(`sim: no group ${group}`);
    const n = this.perGroupCount.get(group) ?? 0;
    this.perGroupCount.set(group, n + 1);
    const id = `${group}-m${n}`;
    const opts: MemberOptions = {
      ...DEFAULT_MEMBER,
      fragmentBytes: this.opts.fragmentBytes,
      ...this.opts.member,
      ...overrides,
      id,
      group,
      ...(this.opts.groups.length > 1 ? { wideGroup: 'wide' } : {}),
    };
    const address = { address: `10.${gi}.${n >> 8}.${(n & 255) + 1}`, port: 7700 };
    const m = new SimMember(this.sim, this.net, lan, this.server, this.release, this.opts.makeCore, this.rng.fork(id), opts, address);
    this.members.push(m);
    if (this.started) m.start();
    return m;
  }

  member(id: string): SimMember {
    const m = this.members.find((x) => x.opts.id === id);
    if (!m) throw new Error(`sim: no member ${id}`);
    return m;
  }

  /** Runs until every live member completed, or `limitMs` of simulated time. True when all completed. */
  runUntilComplete(limitMs: number): boolean {
    const done = (): boolean => this.members.every((m) => !m.alive || m.completedAt !== null);
    this.sim.run({ until: limitMs, stopWhen: done });
    return done();
  }

  /**
   * The same, yielding to the event loop every `eventsPerSlice` events, so a long
   * run does not hold the test worker's thread (ava's messages, its timeouts).
   */
  async runUntilCompleteAsync(limitMs: number, eventsPerSlice = 50_000): Promise<boolean> {
    const done = (): boolean => this.members.every((m) => !m.alive || m.completedAt !== null);
    while (this.sim.run({ until: limitMs, stopWhen: done, maxEvents: eventsPerSlice }) === 'maxEvents') {
      await new Promise<void>((resolve) => setImmediate(resolve));
    }
    return done();
  }

  /** Fragment requests per NACKed fragment (1 = perfect suppression). */
  nackRequestsPerFragment(): number {
    let sum = 0;
    for (const v of this.wire.requests.values()) sum += v;
    return this.wire.requests.size ? sum / this.wire.requests.size : 0;
  }

  /**
   * Requests per NACKed fragment before its first repair left: NORM's "NACKs per loss
   * event" (1 = one receiver asked for everyone). Later rounds (a repair lost again at
   * some receivers) are not counted here.
   */
  firstRoundRequestsPerFragment(): number {
    let sum = 0;
    for (const v of this.wire.firstRoundRequests.values()) sum += v;
    return this.wire.firstRoundRequests.size ? sum / this.wire.firstRoundRequests.size : 0;
  }

  /** Repairs sent per NACKed fragment: the repair rounds it took (with repairs that crossed). */
  repairsPerFragment(): number {
    let sum = 0;
    for (const k of this.wire.requests.keys()) sum += this.wire.repairs.get(k) ?? 0;
    return this.wire.requests.size ? sum / this.wire.requests.size : 0;
  }

  /** Receivers that lost the average lost fragment: the NACKs each would cost without suppression. */
  receiversPerLostFragment(): number {
    let sum = 0;
    for (const v of this.wire.lostBy.values()) sum += v.size;
    return this.wire.lostBy.size ? sum / this.wire.lostBy.size : 0;
  }

  private see(from: string, data: Buffer): void {
    const w = this.wire;
    const s = w.bySender.get(from) ?? { data: 0, repair: 0, nack: 0, announce: 0, other: 0 };
    w.bySender.set(from, s);
    const d = decodePacket(data);
    if (!d.ok) {
      w.packets.other++;
      w.bytes.other += data.length;
      s.other++;
      return;
    }
    const p = d.packet;
    switch (p.type) {
      case PacketType.DATA: {
        const kind = p.forward ? 'forward' : p.repair ? 'repair' : 'data';
        w.packets[kind]++;
        w.bytes[kind] += data.length;
        if (p.repair) {
          s.repair++;
          const k = `${p.unit}/${p.fragment}`;
          w.repairs.set(k, (w.repairs.get(k) ?? 0) + 1);
        } else s.data++;
        break;
      }
      case PacketType.NACK: {
        w.packets.nack++;
        w.bytes.nack += data.length;
        s.nack++;
        const n = p as NackPacket;
        for (let f = 0; f < n.fragmentCount; f++) {
          if (!getBit(n.missing, f)) continue;
          const k = `${n.unit}/${f}`;
          w.requests.set(k, (w.requests.get(k) ?? 0) + 1);
          if (!w.repairs.has(k)) w.firstRoundRequests.set(k, (w.firstRoundRequests.get(k) ?? 0) + 1);
        }
        break;
      }
      case PacketType.ANNOUNCE:
        w.packets.announce++;
        w.bytes.announce += data.length;
        s.announce++;
        break;
      case PacketType.FEEDBACK:
        w.packets.feedback++;
        w.bytes.feedback += data.length;
        s.other++;
        break;
    }
  }

  /** A DATA packet lost on a receiver's downlink, or on a sender's uplink (then for every member of its LAN). */
  private lost(link: string, data: Buffer): void {
    const d = decodePacket(data);
    if (!d.ok || d.packet.type !== PacketType.DATA) return;
    const p = d.packet as DataPacket;
    const k = `${p.unit}/${p.fragment}`;
    const set = this.wire.lostBy.get(k) ?? new Set<string>();
    this.wire.lostBy.set(k, set);
    const dot = link.lastIndexOf('.');
    const ep = link.slice(0, dot);
    if (link.endsWith('.down')) set.add(ep);
    else if (link.endsWith('.up')) {
      const sender = this.net.endpoint(ep);
      for (const m of sender?.lan.members ?? []) if (m.name !== ep) set.add(m.name);
    }
  }
}

/** The group key of a world made from `seed` (members have it: a lying member can seal its lies). */
export function groupKeyOf(seed: number): Buffer {
  const rng = new Prng(seed).fork('group-key');
  return Buffer.from(Array.from({ length: 32 }, () => rng.int(256)));
}
