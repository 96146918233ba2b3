import { LanCore } from '../../src/agent/core/lan-core';
import type { CoreConfig, CoreStats, ProtocolCore } from '../../src/agent/core/types';

/**
 * The LAN protocol core as the simulator drives it: src/agent/core's own types (issue
 * 16's protocol core), so a change to the interface that the driver does not follow
 * fails to compile here.
 */
export type { CoreConfig, CoreEvent, CoreLeaseGrant, CoreManifest, CoreSplitMap, CoreStats, CopyDestination, Endpoint, Transmit } from '../../src/agent/core/types';
export type SimCore = ProtocolCore;
export type MakeCore = (cfg: CoreConfig, now: number) => SimCore;

export const makeLanCore: MakeCore = (cfg, now) => new LanCore(cfg, now);

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
