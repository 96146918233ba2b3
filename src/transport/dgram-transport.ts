import * as dgram from 'node:dgram';
import { isIPv6 } from 'node:net';
import { DEFAULT_MAX_DATAGRAM_BYTES, Endpoint, RecvBatch, Transport, TransportInfo, TransportOptions, TransportStats } from './transport';
import { ExitCode, FleetcastError } from '../util/errors';

/** Datagrams a sender may have queued in libuv before sendBatch pushes back. */
const MAX_QUEUED_DATAGRAMS = 512;
export const DEFAULT_RECV_BUFFER_BYTES = 4 * 1024 * 1024;

/**
 * `node:dgram` transport: one socket bound to the group address and port that
 * receives (SO_REUSEADDR so several agents on one host share the port), and one
 * bound to the interface address that sends. One JS callback per datagram; the
 * native addon exists to do better.
 */
export class DgramTransport implements Transport {
  readonly stats: TransportStats = { datagramsReceived: 0, bytesReceived: 0, datagramsDroppedByLoss: 0, datagramsTruncated: 0, datagramsSent: 0, bytesSent: 0, sendErrors: 0 };
  readonly info: TransportInfo;
  readonly groupEndpoint: Endpoint;
  private rx: dgram.Socket | null = null;
  private tx: dgram.Socket | null = null;
  private handler: (b: RecvBatch) => void = () => {};
  private writable: () => void = () => {};
  private queued = 0;
  private blocked = false;
  private readonly random: () => number;
  private readonly one = { msg: new Uint8Array(0), address: '', port: 0 };
  private readonly batch: RecvBatch = {
    count: 1,
    data: () => this.one.msg,
    address: () => this.one.address,
    port: () => this.one.port,
  };

  constructor(private readonly opts: TransportOptions, fallbackReason?: string) {
    this.random = opts.random ?? Math.random;
    this.groupEndpoint = { address: opts.group, port: opts.port };
    this.info = { kind: 'dgram', recvBufferBytes: 0, sendBufferBytes: 0, features: [], ...(fallbackReason ? { fallbackReason } : {}) };
  }

  async open(): Promise<void> {
    if (this.opts.unicast) return this.openUnicast();
    const type = isIPv6(this.opts.group) ? 'udp6' : 'udp4';
    const rx = dgram.createSocket({ type, reuseAddr: true });
    const tx = dgram.createSocket({ type });
    this.rx = rx;
    this.tx = tx;
    try {
      await bind(rx, this.opts.port, this.opts.group);
      rx.addMembership(this.opts.group, this.opts.interfaceAddress);
      await bind(tx, 0, this.opts.interfaceAddress);
      tx.setMulticastInterface(this.opts.interfaceAddress);
      tx.setMulticastTTL(this.opts.ttl ?? 1);
      tx.setMulticastLoopback(this.opts.loopback ?? true);
    } catch (err) {
      await this.close();
      const e = err as NodeJS.ErrnoException;
      throw new FleetcastError(
        e.code ?? 'SOCKET',
        `cannot join multicast ${this.opts.group}:${this.opts.port} on ${this.opts.interfaceAddress}: ${e.message}` +
          (e.code === 'EADDRNOTAVAIL' || e.code === 'ENODEV' ? ' (is the interface address right and the interface up?)' : ''),
        ExitCode.UNAVAILABLE,
      );
    }
    this.listen(rx, tx);
  }

  /** One socket that receives and sends unicast (TransportOptions.unicast). */
  private async openUnicast(): Promise<void> {
    const o = this.opts;
    const s = dgram.createSocket({ type: isIPv6(o.interfaceAddress.replace(/%.*$/, '')) ? 'udp6' : 'udp4' });
    this.rx = s;
    try {
      await bind(s, o.port, o.interfaceAddress);
    } catch (err) {
      await this.close();
      const e = err as NodeJS.ErrnoException;
      throw new FleetcastError(e.code ?? 'SOCKET', `cannot bind a unicast socket on ${o.interfaceAddress}: ${e.message}`, ExitCode.UNAVAILABLE);
    }
    this.tx = s;
    this.listen(s, s);
  }

  localPort(): number {
    return this.rx?.address().port ?? 0;
  }

  private listen(rx: dgram.Socket, tx: dgram.Socket): void {
    this.info.recvBufferBytes = trySetBuffer(rx, 'recv', this.opts.recvBufferBytes ?? DEFAULT_RECV_BUFFER_BYTES);
    this.info.sendBufferBytes = trySetBuffer(tx, 'send', this.opts.sendBufferBytes ?? 1024 * 1024);
    const loss = (this.opts.lossPct ?? 0) / 100;
    const maxBytes = this.opts.maxDatagramBytes ?? DEFAULT_MAX_DATAGRAM_BYTES;
    rx.on('message', (msg, rinfo) => {
      this.stats.datagramsReceived++;
      this.stats.bytesReceived += msg.length;
      if (msg.length > maxBytes) {
        this.stats.datagramsTruncated++; // same contract as the native ring's slot size
        return;
      }
      if (loss > 0 && this.random() < loss) {
        this.stats.datagramsDroppedByLoss++;
        return;
      }
      this.one.msg = msg;
      this.one.address = rinfo.address;
      this.one.port = rinfo.port;
      this.handler(this.batch);
    });
    rx.on('error', () => {
      this.stats.sendErrors++;
    });
    if (tx !== rx) {
      tx.on('error', () => {
        this.stats.sendErrors++;
      });
    }
  }

  onBatch(handler: (batch: RecvBatch) => void): void {
    this.handler = handler;
  }
  onWritable(handler: () => void): void {
    this.writable = handler;
  }

  sendBatch(datagrams: readonly Uint8Array[], to: Endpoint): number {
    const tx = this.tx;
    if (!tx) return 0;
    let n = 0;
    for (const d of datagrams) {
      if (this.queued >= MAX_QUEUED_DATAGRAMS) {
        this.blocked = true;
        break;
      }
      this.queued++;
      n++;
      tx.send(d, to.port, to.address, (err) => {
        this.queued--;
        if (err) this.stats.sendErrors++;
        else {
          this.stats.datagramsSent++;
          this.stats.bytesSent += d.length;
        }
        if (this.blocked && this.queued < MAX_QUEUED_DATAGRAMS / 2) {
          this.blocked = false;
          this.writable();
        }
      });
    }
    return n;
  }

  async close(): Promise<void> {
    const socks = [...new Set([this.rx, this.tx])].filter((s): s is dgram.Socket => s !== null);
    this.rx = null;
    this.tx = null;
    await Promise.all(socks.map((s) => new Promise<void>((resolve) => {
      try {
        s.close(() => resolve());
      } catch {
        resolve();
      }
    })));
  }
}

function bind(s: dgram.Socket, port: number, address: string): Promise<void> {
  return new Promise((resolve, reject) => {
    s.once('error', reject);
    s.bind({ port, address, exclusive: false }, () => {
      s.off('error', reject);
      resolve();
    });
  });
}

/** Ask for a socket buffer size; returns what the kernel gave (capped by net.core.[rw]mem_max). */
export function trySetBuffer(s: dgram.Socket, which: 'recv' | 'send', bytes: number): number {
  try {
    if (which === 'recv') s.setRecvBufferSize(bytes);
    else s.setSendBufferSize(bytes);
  } catch {
    /* capped by net.core.[rw]mem_max; keep what we got */
  }
  try {
    return which === 'recv' ? s.getRecvBufferSize() : s.getSendBufferSize();
  } catch {
    return 0;
  }
}
