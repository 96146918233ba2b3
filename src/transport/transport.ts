/**
 * The datagram transport the agent speaks through. Two implementations share it:
 * `node:dgram` (dgram-transport.ts) and, later, the native addon. The interface
 * is batch-shaped so the native one can hand over views into a preallocated ring
 * without per-packet objects: a RecvBatch and its views are valid only during the
 * callback that receives them.
 */
/** Fits a 9000-byte jumbo frame's UDP payload with room to spare. */
export const DEFAULT_MAX_DATAGRAM_BYTES = 9216;

export interface Endpoint {
  address: string;
  port: number;
}

export interface RecvBatch {
  readonly count: number;
  data(i: number): Uint8Array;
  address(i: number): string;
  port(i: number): number;
}

export interface TransportOptions {
  /** Multicast group address (IPv4 or IPv6) and port. */
  group: string;
  port: number;
  /**
   * Unicast only (the agent's cross-group socket): one socket bound to
   * interfaceAddress:port (port 0: any) receives and sends; no group is joined and
   * `group` is not used. localPort() says which port it got.
   */
  unicast?: boolean;
  /** Address of the local interface that joins the group and sends. */
  interfaceAddress: string;
  ttl?: number;
  /** Deliver our own multicast to sockets on this host (agents sharing a host need it). */
  loopback?: boolean;
  recvBufferBytes?: number;
  sendBufferBytes?: number;
  /** Datagrams longer than this are dropped and counted as truncated (both transports). */
  maxDatagramBytes?: number;
  /** Native: receive ring slots per batch. */
  ringSlots?: number;
  /** Native: use UDP GRO on receive when the kernel has it (default true). */
  gro?: boolean;
  /** Native: use UDP GSO when the kernel has it (default true). */
  gso?: boolean;
  /** Test aid: share (0–100) of received datagrams dropped inside the transport. */
  lossPct?: number;
  random?: () => number;
}

export interface TransportStats {
  datagramsReceived: number;
  bytesReceived: number;
  /** Dropped by the injected loss. */
  datagramsDroppedByLoss: number;
  /** Longer than maxDatagramBytes: dropped. */
  datagramsTruncated: number;
  datagramsSent: number;
  bytesSent: number;
  sendErrors: number;
}

export interface TransportInfo {
  kind: 'dgram' | 'native';
  recvBufferBytes: number;
  sendBufferBytes: number;
  /** Kernel features in use (GSO, recvmmsg, ...); empty for dgram. */
  features: string[];
  /** Why the native transport is not in use, when it is not. */
  fallbackReason?: string;
}

export interface Transport {
  readonly info: TransportInfo;
  readonly stats: TransportStats;
  /** Where to send to reach the group. */
  readonly groupEndpoint: Endpoint;
  open(): Promise<void>;
  onBatch(handler: (batch: RecvBatch) => void): void;
  /**
   * Queue datagrams to `to`. Returns how many were accepted; the rest should be
   * offered again after `onWritable`. Never throws for network errors (counted).
   */
  sendBatch(datagrams: readonly Uint8Array[], to: Endpoint): number;
  onWritable(handler: () => void): void;
  /** The local port (after open): what a unicast transport registers with the server. */
  localPort?(): number;
  close(): Promise<void>;
}
