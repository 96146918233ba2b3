import { FleetcastError, ExitCode } from '../util/errors';
import { Logger } from '../util/log';

/**
 * IGMP general queries (RFC 3376 §4.1, IGMPv3 format, which IGMPv2 hosts also answer)
 * and the querier election of RFC 3376 §6.6.2: every querier starts querying; one
 * that hears a query from a lower IP address stops, and starts again when no such
 * query arrived for the Other Querier Present Interval. Where a LAN has no querier,
 * IGMP-snooping switches stop forwarding the group after their membership timeout;
 * `igmp_querier: true` makes the agent fill that role.
 *
 * Raw IGMP sockets come from the `raw-socket` package and need CAP_NET_RAW.
 */
export const IGMP_PROTOCOL = 2;
export const ALL_SYSTEMS = '224.0.0.1';
const IPPROTO_IP = 0;
const IP_OPTIONS = 4;
const IP_MULTICAST_IF = 32;
const IP_MULTICAST_TTL = 33;
const IP_MULTICAST_LOOP = 34;
/** IP Router Alert option (RFC 2113), as IGMP messages carry it. */
const ROUTER_ALERT = Buffer.from([0x94, 0x04, 0x00, 0x00]);

/** RFC 3376 §4.1.1/§4.1.7 code: values under 128 as they are, larger ones as 1eeemmmm. */
export function encodeCode(v: number): number {
  v = Math.max(0, Math.round(v));
  if (v < 128) return v;
  for (let exp = 0; exp < 8; exp++) {
    const mant = (v >> (exp + 3)) - 16;
    if (mant >= 0 && mant < 16) return 0x80 | (exp << 4) | mant;
  }
  return 0xff;
}

export function decodeCode(c: number): number {
  return c < 128 ? c : ((c & 0x0f) | 0x10) << (((c >> 4) & 0x07) + 3);
}

/** The Internet checksum (RFC 1071) of `b`. */
export function inetChecksum(b: Uint8Array): number {
  let sum = 0;
  for (let i = 0; i + 1 < b.length; i += 2) sum += (b[i] << 8) | b[i + 1];
  if (b.length & 1) sum += b[b.length - 1] << 8;
  while (sum > 0xffff) sum = (sum & 0xffff) + (sum >>> 16);
  return ~sum & 0xffff;
}

/** An IGMPv3 general query: 12 bytes, group 0.0.0.0, no sources. */
export function buildGeneralQuery(o: { maxRespMs: number; robustness: number; intervalS: number }): Buffer {
  const b = Buffer.alloc(12);
  b[0] = 0x11;
  b[1] = encodeCode(o.maxRespMs / 100);
  b[8] = Math.min(7, Math.max(0, o.robustness)) & 0x07;
  b[9] = encodeCode(o.intervalS);
  b.writeUInt16BE(inetChecksum(b), 2);
  return b;
}

export interface IgmpMessage {
  source: string;
  destination: string;
  ttl: number;
  routerAlert: boolean;
  type: number;
  /** 2 for an 8-byte query, 3 for 12 bytes or more. */
  version: 2 | 3;
  maxRespMs: number;
  group: string;
  checksumOk: boolean;
  /** IGMPv3 queries only. */
  robustness?: number;
  intervalS?: number;
}

const ip4 = (b: Uint8Array, o: number) => `${b[o]}.${b[o + 1]}.${b[o + 2]}.${b[o + 3]}`;

/** Parse an IPv4 packet carrying IGMP, as a raw socket delivers it; null if it is not one. */
export function parseIgmpPacket(p: Uint8Array): IgmpMessage | null {
  if (p.length < 20 || p[0] >> 4 !== 4) return null;
  const ihl = (p[0] & 0x0f) * 4;
  if (ihl < 20 || p.length < ihl + 8 || p[9] !== IGMP_PROTOCOL) return null;
  const total = Math.min(p.length, (p[2] << 8) | p[3]);
  if (total < ihl + 8) return null;
  let routerAlert = false;
  for (let o = 20; o < ihl; ) {
    const t = p[o];
    if (t === 0) break;
    if (t === 1) {
      o++;
      continue;
    }
    if (t === 0x94) routerAlert = true;
    const len = p[o + 1];
    if (!len || len < 2) break;
    o += len;
  }
  const m = p.subarray(ihl, total);
  const msg: IgmpMessage = {
    source: ip4(p, 12),
    destination: ip4(p, 16),
    ttl: p[8],
    routerAlert,
    type: m[0],
    version: m.length >= 12 ? 3 : 2,
    maxRespMs: (m.length >= 12 ? decodeCode(m[1]) : m[1]) * 100,
    group: ip4(m, 4),
    checksumOk: inetChecksum(m) === 0,
  };
  if (m[0] === 0x11 && m.length >= 12) {
    msg.robustness = m[8] & 0x07;
    msg.intervalS = decodeCode(m[9]);
  }
  return msg;
}

/** Numeric order of dotted IPv4 addresses (the election compares them). */
export function ipv4Less(a: string, b: string): boolean {
  const n = (s: string) => s.split('.').reduce((acc, x) => acc * 256 + Number(x), 0);
  return n(a) < n(b);
}

interface RawSocket {
  on(ev: 'message', cb: (buf: Buffer, source: string) => void): void;
  on(ev: 'error', cb: (err: Error) => void): void;
  send(buf: Buffer, offset: number, length: number, address: string, before: (() => void) | null, after: (err: Error | null) => void): void;
  setOption(level: number, option: number, value: Buffer | number, length?: number): void;
  close(): void;
}
interface RawModule {
  createSocket(o: { protocol: number; addressFamily?: number }): RawSocket;
  AddressFamily: { IPv4: number };
  SocketLevel: { SOL_SOCKET: number };
  SocketOption: { SO_BINDTODEVICE: number };
}

/** The raw-socket package, or why it cannot be used. */
export function loadRawSocket(): RawModule | string {
  try {
    return require('raw-socket') as RawModule;
  } catch (err) {
    return `the raw-socket package is not available (${(err as Error).message.split('\n')[0]})`;
  }
}

/** A raw IGMP socket bound to one interface; throws a clear error without CAP_NET_RAW. */
export function openIgmpSocket(interfaceName: string, interfaceAddress: string): RawSocket {
  const raw = loadRawSocket();
  if (typeof raw === 'string') throw new FleetcastError('NO_RAW_SOCKET', raw, ExitCode.UNAVAILABLE);
  let s: RawSocket;
  try {
    s = raw.createSocket({ protocol: IGMP_PROTOCOL, addressFamily: raw.AddressFamily.IPv4 });
  } catch (err) {
    const m = (err as Error).message;
    const perm = /not permitted|EPERM|EACCES/i.test(m);
    throw new FleetcastError('NO_RAW_SOCKET', `cannot open a raw IGMP socket: ${m}${perm ? ' (needs CAP_NET_RAW: run as root, or install systemd/fleetcast-agent.service.d/igmp-querier.conf)' : ''}`, ExitCode.NOPERM);
  }
  const addr = Buffer.from(interfaceAddress.split('.').map(Number));
  s.setOption(raw.SocketLevel.SOL_SOCKET, raw.SocketOption.SO_BINDTODEVICE, Buffer.from(interfaceName + '\0'), interfaceName.length + 1);
  s.setOption(IPPROTO_IP, IP_MULTICAST_IF, addr, 4);
  s.setOption(IPPROTO_IP, IP_MULTICAST_TTL, 1);
  s.setOption(IPPROTO_IP, IP_MULTICAST_LOOP, 0);
  s.setOption(IPPROTO_IP, IP_OPTIONS, ROUTER_ALERT, ROUTER_ALERT.length);
  return s;
}

export interface QuerierOptions {
  interfaceName: string;
  interfaceAddress: string;
  /** Query Interval (RFC 3376 default 125 s). */
  intervalMs: number;
  /** Query Response Interval (default 10 s, capped below the interval). */
  maxRespMs?: number;
  robustness?: number;
  log: Logger;
}

export class IgmpQuerier {
  queriesSent = 0;
  queriesHeard = 0;
  /** The lower-addressed querier we deferred to, while it is present. */
  otherQuerier: string | null = null;
  private sock: RawSocket | null = null;
  private timer: NodeJS.Timeout | null = null;
  private otherUntil = 0;
  private startupLeft: number;
  private readonly query: Buffer;
  private readonly maxRespMs: number;
  private readonly robustness: number;

  constructor(private readonly o: QuerierOptions) {
    this.robustness = o.robustness ?? 2;
    this.maxRespMs = Math.min(o.maxRespMs ?? 10_000, Math.max(100, o.intervalMs - 100));
    this.query = buildGeneralQuery({ maxRespMs: this.maxRespMs, robustness: this.robustness, intervalS: o.intervalMs / 1000 });
    this.startupLeft = this.robustness;
  }

  get querying(): boolean {
    return this.sock !== null && Date.now() >= this.otherUntil;
  }

  /** Other Querier Present Interval: robustness x interval + half the response interval. */
  get otherQuerierPresentMs(): number {
    return this.robustness * this.o.intervalMs + this.maxRespMs / 2;
  }

  start(): void {
    this.sock = openIgmpSocket(this.o.interfaceName, this.o.interfaceAddress);
    this.sock.on('message', (buf, source) => this.onMessage(buf, source));
    this.sock.on('error', (err) => this.o.log.warn(`igmp: ${err.message}`));
    this.o.log.info(`IGMP querier on ${this.o.interfaceName} (${this.o.interfaceAddress}), every ${this.o.intervalMs / 1000} s unless a lower address queries`);
    this.tick();
  }

  private tick(): void {
    if (!this.sock) return;
    // Startup: Startup Query Count queries a quarter interval apart (RFC 3376 §8.6, §8.7).
    const startup = this.startupLeft > 0;
    if (Date.now() >= this.otherUntil) {
      if (this.otherQuerier) {
        this.o.log.info(`igmp: no query from ${this.otherQuerier} for ${this.otherQuerierPresentMs / 1000} s; querying again`);
        this.otherQuerier = null;
      }
      this.send();
      if (startup) this.startupLeft--;
    }
    this.timer = setTimeout(() => this.tick(), startup ? Math.max(50, this.o.intervalMs / 4) : this.o.intervalMs);
    this.timer.unref();
  }

  private send(): void {
    this.sock?.send(this.query, 0, this.query.length, ALL_SYSTEMS, null, (err) => {
      if (err) this.o.log.warn(`igmp: sending a query: ${err.message}`);
      else this.queriesSent++;
    });
  }

  private onMessage(buf: Buffer, source: string): void {
    const m = parseIgmpPacket(buf);
    if (!m || m.type !== 0x11 || source === this.o.interfaceAddress || !m.checksumOk) return;
    this.queriesHeard++;
    if (ipv4Less(source, this.o.interfaceAddress)) {
      if (this.otherQuerier !== source) this.o.log.info(`igmp: ${source} is querying and has the lower address; not querying while it does`);
      this.otherQuerier = source;
      this.otherUntil = Date.now() + this.otherQuerierPresentMs;
    }
  }

  stop(): void {
    if (this.timer) clearTimeout(this.timer);
    this.sock?.close();
    this.sock = null;
  }
}

/** Listen for IGMP queries on an interface for `ms`; the doctor's querier check. */
export function listenForQueries(interfaceName: string, interfaceAddress: string, ms: number): Promise<IgmpMessage[]> {
  const s = openIgmpSocket(interfaceName, interfaceAddress);
  const heard: IgmpMessage[] = [];
  s.on('message', (buf) => {
    const m = parseIgmpPacket(buf);
    if (m && m.type === 0x11) heard.push(m);
  });
  return new Promise((resolve) =>
    setTimeout(() => {
      s.close();
      resolve(heard);
    }, ms),
  );
}
