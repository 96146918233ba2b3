import * as fs from 'node:fs';
import * as path from 'node:path';

/**
 * The LAN protocol core as the simulator drives it.
 *
 * These types mirror `src/agent/core/types.ts` (issue 16's protocol core, written on
 * the `core` branch; the semantics are in that file's comments): only what the
 * simulator uses, declared here so that this folder compiles on a branch that does
 * not have the core yet. TypeScript checks structure, not names, so the real
 * `LanCore` satisfies `SimCore` as long as the two agree; once the core is on main
 * these become `import type` from there.
 *
 * `loadCore()` finds the core at run time: the tests that drive cores are skipped,
 * saying why, when it is absent.
 */
export interface Endpoint {
  address: string;
  port: number;
}

export interface CoreManifest {
  readonly idBytes: Uint8Array;
  readonly size: number;
  readonly unitSize: number;
  readonly unitCount: number;
  readonly units: readonly string[];
}

export interface CopyDestination {
  member: string;
  address: string;
  port: number;
}

export interface CoreSplitMap {
  members: {
    id: string;
    verifiedUnits: number;
    complete: boolean;
    address: string | null;
    group?: string;
    dataPort?: number | null;
    role?: 'gateway' | 'member';
  }[];
  holders: number[];
  groupComplete: boolean;
  groupKey?: string;
  lanStart?: boolean;
  copyTo?: CopyDestination[];
}

export interface CoreLeaseGrant {
  units: number[];
  relayed?: number[];
  copyTo?: CopyDestination[];
}

export interface CoreStats {
  lanBytes: number;
  lanDuplicateBytes: number;
  copyBytesSent: number;
  repairBytesSent: number;
  repairPacketsSent: number;
  nacksSent: number;
  nacksSuppressed: number;
  nacksHeard: number;
  nacksAnswered: number;
  crossGroupBytesSent: number;
  crossGroupBytes: number;
  fragmentsForwarded: number;
  unitsDeferred: number;
  unitsFromWan: number;
  unitsFromLan: number;
  unitsRejected: number;
  drops: Record<string, number>;
}

export interface CoreConfig {
  manifest: CoreManifest;
  member: string;
  group: string;
  wideGroup?: string;
  senderId: number;
  fragmentBytes: number;
  have: Uint8Array;
  rateBytesPerSec: number;
  crossRateBytesPerSec: number;
  controlSeqStart: bigint;
  random: () => number;
  stats?: CoreStats;
}

export interface Transmit {
  to: Endpoint | null;
  datagrams: Uint8Array[];
}

export type CoreEvent =
  | { type: 'store'; unit: number; bytes: Buffer }
  | { type: 'read'; unit: number }
  | { type: 'relay'; units: number[]; reason: 'relayed' | 'stalled' }
  | { type: 'wake' }
  | { type: 'complete' };

export interface SimCore {
  handleDatagram(buf: Uint8Array, now: number, via?: Endpoint): void;
  handleTimeout(now: number): void;
  setSplitMap(map: CoreSplitMap, now: number): void;
  leaseGranted(grant: CoreLeaseGrant, now: number, asked?: { units: number[]; reason: 'relayed' | 'stalled' }): void;
  relayFailed(units: number[], now: number): void;
  takeLeased(): number | undefined;
  readonly leasedCount: number;
  takeBuffer(len: number): Buffer;
  giveBuffer(buf: Buffer): void;
  fetchStarted(unit: number, now: number): void;
  fetchProgress(unit: number, bytes: Uint8Array, received: number, now: number): void;
  fetchEnded(unit: number, now: number): void;
  unitFetched(unit: number, bytes: Buffer, now: number): void;
  unitStored(unit: number, now: number): void;
  unitRead(unit: number, bytes: Buffer | null, now: number): void;
  fileComplete(now: number): void;
  fileFailed(have: Uint8Array, now: number): void;
  writable(now: number): void;
  setRate(bytesPerSec: number): void;
  pollTransmit(now: number): Transmit | null;
  transmitted(t: Transmit, accepted: number, now: number): void;
  pollTimeout(): number | null;
  pollEvent(): CoreEvent | null;
  has(unit: number): boolean;
  readonly holdsAll: boolean;
  readonly backlogged: boolean;
  readonly drained: boolean;
}

export type MakeCore = (cfg: CoreConfig, now: number) => SimCore;

export function newStats(): CoreStats {
  return {
    lanBytes: 0,
    lanDuplicateBytes: 0,
    copyBytesSent: 0,
    repairBytesSent: 0,
    repairPacketsSent: 0,
    nacksSent: 0,
    nacksSuppressed: 0,
    nacksHeard: 0,
    nacksAnswered: 0,
    crossGroupBytesSent: 0,
    crossGroupBytes: 0,
    fragmentsForwarded: 0,
    unitsDeferred: 0,
    unitsFromWan: 0,
    unitsFromLan: 0,
    unitsRejected: 0,
    drops: {},
  };
}

/** The repository root, from this file's place in test/sim/ or dist/test/sim/. */
function repoRoot(): string {
  let dir = __dirname;
  while (!fs.existsSync(path.join(dir, 'package.json'))) {
    const up = path.dirname(dir);
    if (up === dir) throw new Error('test/sim: no package.json above ' + __dirname);
    dir = up;
  }
  return dir;
}

/**
 * The protocol core's constructor, or why there is none: its source must be in the
 * tree (a stale compiled copy in dist/ from another branch does not count).
 */
export function loadCore(): { make: MakeCore } | { missing: string } {
  const root = repoRoot();
  const source = path.join(root, 'src', 'agent', 'core', 'lan-core.ts');
  if (!fs.existsSync(source)) return { missing: 'src/agent/core/lan-core.ts (the LAN protocol core of issue 16) is not in this tree' };
  const compiled = path.join(root, 'dist', 'src', 'agent', 'core', 'lan-core.js');
  // A computed path: this folder must compile without the core.
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  const mod = require(compiled) as { LanCore?: new (cfg: CoreConfig, now: number) => SimCore };
  if (typeof mod.LanCore !== 'function') return { missing: `${compiled} exports no LanCore class` };
  const LanCore = mod.LanCore;
  return { make: (cfg, now) => new LanCore(cfg, now) };
}
