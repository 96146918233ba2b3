import * as os from 'node:os';
import { isIPv6 } from 'node:net';
import { Endpoint, RecvBatch, Transport, TransportInfo, TransportOptions, TransportStats, DEFAULT_MAX_DATAGRAM_BYTES } from './transport';
import { ExitCode, FleetcastError } from '../util/errors';

/** The addon's UdpSocket (native/udp_socket.h). Hot paths return numbers; setup throws. */
export interface NativeUdpSocket {
  bind(address: string, port: number, reuseAddr: boolean): void;
  joinGroup(group: string, ifindex: number, ifaddr?: string): void;
  leaveGroup(group: string, ifindex: number, ifaddr?: string): void;
  setMulticastInterface(ifindex: number, ifaddr?: string): void;
  setMulticastTTL(ttl: number): void;
  setMulticastLoopback(on: boolean): void;
  setTOS(tos: number): void;
  setBufferSize(which: 'recv' | 'send', bytes: number, force: boolean): { bytes: number; forced: boolean };
  setPktInfo(on: boolean): boolean;
  probeGso(): boolean;
  setGso(on: boolean): void;
  setGro(on: boolean): boolean;
  start(): void;
  wantWritable(on: boolean): void;
  sendBatch(datagrams: readonly Uint8Array[], address: string, port: number): number;
  localPort(): number;
  close(): void;
}
export interface NativeUdpAddon {
  UdpSocket: new (
    family: 4 | 6,
    slab: Uint8Array,
    slots: number,
    slotBytes: number,
    meta: Uint32Array,
    counters: Float64Array,
    onBatch: (count: number) => void,
    onWritable: () => void,
  ) => NativeUdpSocket;
  ifNameToIndex(name: string): number;
  metaWords: number;
  counterCount: number;
}

const C = { rxDatagrams: 0, rxBytes: 1, rxTruncated: 2, txDatagrams: 3, txBytes: 4, txErrors: 5, txEagain: 6, rxBatches: 7, rxSyscalls: 8, txSyscalls: 9, txGso: 10 };
/**
 * Receive ring: slots per recvmmsg. The ring is resident memory of every agent (issue 16),
 * while the kernel's socket buffer (8 MiB, below) is what absorbs bursts; a batch
 * only has to be large enough that one syscall drains many datagrams.
 * Without GRO: 64 slots of 9 KiB (576 KiB; was 256, 2.25 MiB).
 */
export const DEFAULT_RING_SLOTS = 64;
/** With UDP_GRO a slot holds one coalesced read of up to 64 KiB (~44 LAN datagrams): 16 slots, 1 MiB (was 64, 4 MiB). */
const GRO_SLOT_BYTES = 65536;
const GRO_RING_SLOTS = 16;
/** Datagrams one coalesced read can hold at most (64 KiB / 1 byte is the theory; the kernel caps at 64). */
const MAX_SEGMENTS_PER_SLOT = 64;
const EIO = 5;
const EINVAL = 22;

/** The interface that holds `address`, by name and index (multicast by index, STYLE.md). */
function interfaceIndex(addon: NativeUdpAddon, address: string): number {
  const bare = address.split('%')[0];
  for (const [name, list] of Object.entries(os.networkInterfaces())) {
    if (list?.some((a) => a.address === bare)) return addon.ifNameToIndex(name);
  }
  return 0;
}

function setupError(err: unknown, what: string): FleetcastError {
  const e = err as NodeJS.ErrnoException;
  return new FleetcastError(e.code ?? 'SOCKET', `${what}: ${e.message}`, ExitCode.UNAVAILABLE, { cause: err });
}

/**
 * Native transport: recvmmsg into a ring of slots in a slab we own, one callback
 * per batch, payloads handed out as views into the slab (valid during the
 * callback); sendmmsg from the caller's buffers, with UDP GSO where it works.
 */
export class NativeTransport implements Transport {
  readonly stats: TransportStats = { datagramsReceived: 0, bytesReceived: 0, datagramsDroppedByLoss: 0, datagramsSent: 0, bytesSent: 0, sendErrors: 0, datagramsTruncated: 0 };
  readonly info: TransportInfo = { kind: 'native', recvBufferBytes: 0, sendBufferBytes: 0, features: [] };
  readonly groupEndpoint: Endpoint;
  private rx: NativeUdpSocket | null = null;
  private tx: NativeUdpSocket | null = null;
  private readonly slots: number;
  private readonly slotBytes: number;
  private readonly slab: Uint8Array;
  private readonly meta: Uint32Array;
  private readonly rxCounters: Float64Array;
  private txCounters: Float64Array;
  /** Datagrams of the batch being delivered: slot offset into the slab and length. */
  private readonly keptOff: Int32Array;
  private readonly keptLen: Int32Array;
  private keptSlot: Int32Array;
  private keptCount = 0;
  private readonly maxDatagramBytes: number;
  private readonly gro: boolean;
  private handler: (b: RecvBatch) => void = () => {};
  private writable: () => void = () => {};
  private gso = false;
  private readonly random: () => number;
  private readonly loss: number;
  private readonly batch: RecvBatch;

  constructor(private readonly addon: NativeUdpAddon, private readonly opts: TransportOptions) {
    this.groupEndpoint = { address: opts.group, port: opts.port };
    this.maxDatagramBytes = opts.maxDatagramBytes ?? DEFAULT_MAX_DATAGRAM_BYTES;
    this.gro = opts.gro !== false;
    this.slots = opts.ringSlots ?? (this.gro ? GRO_RING_SLOTS : DEFAULT_RING_SLOTS);
    this.slotBytes = this.gro ? Math.max(GRO_SLOT_BYTES, this.maxDatagramBytes) : this.maxDatagramBytes;
    this.slab = new Uint8Array(this.slots * this.slotBytes);
    this.meta = new Uint32Array(this.slots * addon.metaWords);
    this.rxCounters = new Float64Array(addon.counterCount);
    this.txCounters = new Float64Array(addon.counterCount);
    const cap = this.slots * (this.gro ? MAX_SEGMENTS_PER_SLOT : 1);
    this.keptOff = new Int32Array(cap);
    this.keptLen = new Int32Array(cap);
    this.keptSlot = new Int32Array(cap);
    this.random = opts.random ?? Math.random;
    this.loss = (opts.lossPct ?? 0) / 100;
    const self = this;
    const mw = addon.metaWords;
    this.batch = {
      get count() {
        return self.keptCount;
      },
      data(i: number) {
        const off = self.keptOff[i];
        return self.slab.subarray(off, off + self.keptLen[i]);
      },
      address(i: number) {
        const s = self.keptSlot[i] * mw;
        const m = self.meta;
        if (m[s + 2] === 4) {
          const b = new Uint8Array(m.buffer, m.byteOffset + (s + 4) * 4, 4);
          return `${b[0]}.${b[1]}.${b[2]}.${b[3]}`;
        }
        const b = new Uint8Array(m.buffer, m.byteOffset + (s + 4) * 4, 16);
        const groups: number[] = [];
        for (let k = 0; k < 16; k += 2) groups.push((b[k] << 8) | b[k + 1]);
        return ipv6Text(groups);
      },
      port(i: number) {
        return self.meta[self.keptSlot[i] * mw + 3];
      },
    };
  }

  async open(): Promise<void> {
    if (this.opts.unicast) return this.openUnicast();
    const o = this.opts;
    const fam = isIPv6(o.group) ? 6 : 4;
    const ifindex = interfaceIndex(this.addon, o.interfaceAddress);
    const ifaddr = fam === 4 ? o.interfaceAddress : undefined;
    const where = `multicast ${o.group}:${o.port} on ${o.interfaceAddress}`;
    try {
      this.rx = new this.addon.UdpSocket(fam, this.slab, this.slots, this.slotBytes, this.meta, this.rxCounters, (n) => this.deliver(n), () => {});
      this.rx.bind(o.group, o.port, true);
      this.rx.joinGroup(o.group, ifindex, ifaddr);
      const txSlab = new Uint8Array(this.slotBytes);
      this.tx = new this.addon.UdpSocket(fam, txSlab, 1, this.slotBytes, new Uint32Array(this.addon.metaWords), this.txCounters, () => {}, () => this.writable());
      this.tx.bind(o.interfaceAddress, 0, false);
      this.tx.setMulticastInterface(ifindex, ifaddr);
      this.tx.setMulticastTTL(o.ttl ?? 1);
      this.tx.setMulticastLoopback(o.loopback ?? true);
    } catch (err) {
      await this.close();
      throw setupError(err, `cannot join ${where}`);
    }
    this.probe(this.rx, this.tx, fam);
  }

  /** One socket that receives and sends unicast (TransportOptions.unicast): the same ring and batching. */
  private async openUnicast(): Promise<void> {
    const o = this.opts;
    const fam = isIPv6(o.interfaceAddress.replace(/%.*$/, '')) ? 6 : 4;
    try {
      this.rx = new this.addon.UdpSocket(fam, this.slab, this.slots, this.slotBytes, this.meta, this.rxCounters, (n) => this.deliver(n), () => this.writable());
      this.rx.bind(o.interfaceAddress, o.port, false);
    } catch (err) {
      await this.close();
      throw setupError(err, `cannot bind a unicast socket on ${o.interfaceAddress}`);
    }
    this.tx = this.rx;
    this.txCounters = this.rxCounters; // one socket: its counters hold both directions
    this.probe(this.rx, this.tx, fam);
  }

  localPort(): number {
    return this.rx ? this.rx.localPort() : 0;
  }

  /** Probe the kernel and degrade (STYLE.md): report what took effect. */
  private probe(rx: NativeUdpSocket, tx: NativeUdpSocket, fam: 4 | 6): void {
    const o = this.opts;
    const rb = rx.setBufferSize('recv', o.recvBufferBytes ?? 8 * 1024 * 1024, true);
    const sb = tx.setBufferSize('send', o.sendBufferBytes ?? 4 * 1024 * 1024, true);
    this.info.recvBufferBytes = rb.bytes;
    this.info.sendBufferBytes = sb.bytes;
    const f = this.info.features;
    f.push('recvmmsg', 'sendmmsg');
    if (rb.forced) f.push('SO_RCVBUFFORCE');
    if (sb.forced) f.push('SO_SNDBUFFORCE');
    if (rx.setPktInfo(true)) f.push(fam === 4 ? 'IP_PKTINFO' : 'IPV6_RECVPKTINFO');
    if (this.gro && rx.setGro(true)) f.push('UDP_GRO');
    if (o.gso !== false && tx.probeGso()) {
      this.gso = true;
      tx.setGso(true);
      f.push('UDP_SEGMENT');
    }
    rx.start();
    if (tx !== rx) tx.start();
  }

  private deliver(n: number): void {
    let k = 0;
    const lossBefore = this.stats.datagramsDroppedByLoss;
    const truncBefore = this.stats.datagramsTruncated;
    const mw = this.addon.metaWords;
    for (let i = 0; i < n; i++) {
      const len = this.meta[i * mw];
      const flags = this.meta[i * mw + 1];
      const seg = flags >>> 16; // UDP_GRO: several datagrams of `seg` bytes in this slot
      const base = i * this.slotBytes;
      if (flags & 1) {
        this.stats.datagramsTruncated += seg ? Math.ceil(len / seg) : 1;
        continue;
      }
      const step = seg || len;
      for (let off = 0; off < len || (len === 0 && off === 0); off += step || 1) {
        const l = Math.min(step, len - off);
        if (l > this.maxDatagramBytes) this.stats.datagramsTruncated++;
        else if (this.loss > 0 && this.random() < this.loss) this.stats.datagramsDroppedByLoss++;
        else {
          this.keptOff[k] = base + off;
          this.keptLen[k] = l;
          this.keptSlot[k] = i;
          k++;
        }
        if (len === 0) break;
      }
    }
    this.keptCount = k;
    const dropped = this.stats.datagramsDroppedByLoss - lossBefore + this.stats.datagramsTruncated - truncBefore;
    this.stats.datagramsReceived += k + dropped;
    this.stats.bytesReceived = this.rxCounters[C.rxBytes];
    if (k > 0) this.handler(this.batch);
  }

  onBatch(handler: (batch: RecvBatch) => void): void {
    this.handler = handler;
  }
  onWritable(handler: () => void): void {
    this.writable = handler;
  }

  sendBatch(datagrams: readonly Uint8Array[], to: Endpoint): number {
    const tx = this.tx;
    if (!tx || datagrams.length === 0) return 0;
    let r = tx.sendBatch(datagrams, to.address, to.port);
    if (r < 0 && this.gso && (r === -EIO || r === -EINVAL)) {
      // The kernel or device refused segmentation: fall back for good.
      this.gso = false;
      tx.setGso(false);
      this.info.features = this.info.features.filter((x) => x !== 'UDP_SEGMENT');
      r = tx.sendBatch(datagrams, to.address, to.port);
    }
    this.stats.datagramsSent = this.txCounters[C.txDatagrams];
    this.stats.bytesSent = this.txCounters[C.txBytes];
    if (r < 0) {
      // Not a full queue (that returns a count): this batch cannot go out. Drop it, counted.
      this.stats.sendErrors += datagrams.length;
      return datagrams.length;
    }
    if (r < datagrams.length) tx.wantWritable(true);
    return r;
  }

  /** Raw counters, for benchmarks: syscalls and batches show the batching at work. */
  counters(): { rxSyscalls: number; rxBatches: number; txSyscalls: number; txGsoMessages: number } {
    return { rxSyscalls: this.rxCounters[C.rxSyscalls], rxBatches: this.rxCounters[C.rxBatches], txSyscalls: this.txCounters[C.txSyscalls], txGsoMessages: this.txCounters[C.txGso] };
  }

  async close(): Promise<void> {
    this.rx?.close();
    if (this.tx !== this.rx) this.tx?.close();
    this.rx = null;
    this.tx = null;
  }
}

/** An IPv6 address's canonical text (RFC 5952: lower case, the longest run of two or more zero groups as ::), as node:dgram writes it. */
export function ipv6Text(groups: number[]): string {
  let best = -1;
  let bestLen = 1;
  for (let i = 0; i < 8; ) {
    let j = i;
    while (j < 8 && groups[j] === 0) j++;
    if (j - i > bestLen) {
      best = i;
      bestLen = j - i;
    }
    i = j > i ? j : i + 1;
  }
  const hex = groups.map((g) => g.toString(16));
  if (best < 0) return hex.join(':');
  return `${hex.slice(0, best).join(':')}::${hex.slice(best + bestLen).join(':')}`;
}
