import { verifyControl } from '../../wire/auth';
import type { AnnouncePacket, ControlAuth, Packet } from '../../wire/packet';
import { getBit, PacketType } from '../../wire/packet';
import { AGENT_DEFAULTS } from './defaults';

export interface Peer {
  lastSeen: number;
  complete: boolean;
  /** An ANNOUNCE of it was taken (firstAnnounceLacks). */
  announced?: boolean;
}

/**
 * True when this is the first ANNOUNCE taken from `peer` and it lacks a unit `has` holds:
 * the peer joined, or its first announce went unheard, after our last one, so it cannot
 * know what we hold until our next (up to announceMs). A stream's members join as it
 * runs, and the units before a newcomer's first NACKable one wait for it in its in-order
 * sink. Once per peer record (a pruned peer heard again counts anew).
 */
export function firstAnnounceLacks(peer: Peer, p: AnnouncePacket, unitCount: number, has: (u: number) => boolean): boolean {
  if (peer.announced) return false;
  peer.announced = true;
  const end = Math.min(unitCount, p.firstUnit + p.unitCount);
  for (let u = p.firstUnit; u < end; u++) if (has(u) && !getBit(p.have, u - p.firstUnit)) return true;
  return false;
}

/**
 * The other members heard on the LAN, by sender id (NORM keeps one NormSenderNode per
 * remote sender; a record here is much smaller: when it was last heard and whether it
 * holds the whole release). Control packets make members send, so they count only under
 * the group key and with a sequence number above the last one from that sender; DATA is
 * taken only from senders already heard that way.
 */
export class PeerTable {
  readonly peers = new Map<number, Peer>();
  /**
   * Highest control-packet sequence number seen per sender, kept for the life of the
   * release (not aged out with `peers`): anything not above it is a replay. When it is
   * full, control packets from new senders are dropped; nothing is forgotten to make room,
   * so no record can be evicted and re-created at 0 (issue 13: a 5 s window let captured
   * NACKs replay).
   */
  private readonly replay = new Map<number, bigint>();
  /**
   * The same for BATCH packets (streams), apart: a member sends its BATCH packets ahead of
   * the control packets it queued earlier, so in one sequence they would read as replays.
   */
  private readonly batchReplay = new Map<number, bigint>();
  /** This release's group key, from the server (join/heartbeat answers). */
  groupKey: Buffer | null = null;

  /** Null when a BATCH packet's trailer is good (and not a replay), else the reason to drop it. */
  admitBatch(sender: number, auth: ControlAuth): string | null {
    return this.authentic(this.batchReplay, sender, auth);
  }

  /** The sender's record when the packet may be acted on, else the reason to drop it. */
  admit(p: Packet, now: number): Peer | string {
    let peer = this.peers.get(p.sender);
    if (p.type !== PacketType.DATA) {
      const bad = this.authentic(this.replay, p.sender, p.auth!);
      if (bad) return bad;
      if (!peer) {
        peer = { lastSeen: now, complete: false };
        this.peers.set(p.sender, peer);
      }
    }
    // Copies only from members heard with authenticated control packets (each announces
    // as it joins): a forger without the key cannot even pollute an assembly, unless it
    // spoofs a member's sender id, and then the unit hash rejects the result.
    if (!peer) return 'unknown-sender';
    peer.lastSeen = now;
    return peer;
  }

  /**
   * Null when `auth` is the group key's MAC and its sequence number is above the last one
   * `replay` took from `sender` (then it is recorded), else the reason to drop the packet.
   */
  private authentic(replay: Map<number, bigint>, sender: number, auth: ControlAuth): string | null {
    if (!this.groupKey) return 'no-key';
    if (!verifyControl(auth, this.groupKey)) return 'bad-mac';
    const last = replay.get(sender);
    if (last !== undefined && auth.seq <= last) return 'replayed';
    if (last === undefined && replay.size >= AGENT_DEFAULTS.maxPeers) return 'too-many-peers';
    replay.set(sender, auth.seq);
    return null;
  }

  /** Forget peers gone quiet: sender ids are cheap to invent, so the map must not grow forever. */
  prune(now: number): void {
    for (const [id, p] of this.peers) if (now - p.lastSeen > AGENT_DEFAULTS.peerTimeoutMs) this.peers.delete(id);
  }

  /** Every peer heard holds the whole release. */
  get allComplete(): boolean {
    for (const p of this.peers.values()) if (!p.complete) return false;
    return true;
  }

  /** Peers heard within peerTimeoutMs that announced they hold everything. */
  completeCount(now: number): number {
    let n = 0;
    for (const p of this.peers.values()) if (p.complete && now - p.lastSeen < AGENT_DEFAULTS.peerTimeoutMs) n++;
    return n;
  }

  seen(now: number): { sender: string; lastSeenMsAgo: number; complete: boolean }[] {
    return [...this.peers.entries()]
      .filter(([, p]) => now - p.lastSeen < AGENT_DEFAULTS.peerTimeoutMs)
      .map(([id, p]) => ({ sender: id.toString(16).padStart(8, '0'), lastSeenMsAgo: now - p.lastSeen, complete: p.complete }));
  }
}
