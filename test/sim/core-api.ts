import { LanCore } from '../../src/agent/core/lan-core';
import { emptyStats } from '../../src/agent/core/repair-flow';
import type { CoreConfig, ProtocolCore } from '../../src/agent/core/types';

/**
 * The LAN protocol core as the simulator drives it: src/agent/core's own types (issue
 * 16's protocol core), so a change to the interface that the driver does not follow
 * fails to compile here.
 */
export type { CoreConfig, CoreEvent, CoreLeaseGrant, CoreManifest, CoreSplitMap, CoreStats, CopyDestination, Endpoint, Transmit } from '../../src/agent/core/types';
export type SimCore = ProtocolCore;
export type MakeCore = (cfg: CoreConfig, now: number) => SimCore;

export const makeLanCore: MakeCore = (cfg, now) => new LanCore(cfg, now);

/** A fresh set of the core's counters (the core's own constructor of them). */
export const newStats = emptyStats;
