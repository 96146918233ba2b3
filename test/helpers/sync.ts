import * as cp from 'node:child_process';

/**
 * node:child_process's spawnSync, bounded: SIGKILL after `timeout` (5 minutes unless given).
 * A test worker blocked in a child that never exits cannot be ended, not even by the
 * runner's own timeout (it terminates a worker thread between JavaScript steps), so one such
 * child would hold the whole run until CI's limit.
 */
export const SYNC_TIMEOUT_MS = 300_000;

export function spawnSync(cmd: string, args: readonly string[], opts: cp.SpawnSyncOptionsWithStringEncoding): cp.SpawnSyncReturns<string>;
export function spawnSync(cmd: string, args?: readonly string[], opts?: cp.SpawnSyncOptionsWithBufferEncoding): cp.SpawnSyncReturns<Buffer>;
export function spawnSync(cmd: string, args: readonly string[] = [], opts: cp.SpawnSyncOptions = {}): cp.SpawnSyncReturns<string | Buffer> {
  return cp.spawnSync(cmd, args, { timeout: SYNC_TIMEOUT_MS, killSignal: 'SIGKILL', ...opts });
}
