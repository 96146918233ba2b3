import { CHANNEL_RE } from '../release/channels';

/*
 * Which key a request to several coordinators belongs to (docs/scale-out.md): read from
 * untrusted bodies (fuzz targets) before any route sees them.
 */

/** Routes that act on one allocation: answered by the owner of its key (docs/protocol.md, section 16). */
export const KEYED = new Set(['POST /v1/join', 'POST /v1/heartbeat', 'POST /v1/lease', 'POST /v1/receipt', 'POST /v1/complete', 'POST /v1/leave', 'POST /v1/hook', 'POST /v1/bad-unit']);

/** The key of a channel's rollouts (no allocation key has a colon: release ids are hex, and group names hold none). */
export const channelKey = (channel: string) => `channel:${channel}`;
export const channelOfKey = (key: string): string | null => (key.startsWith('channel:') ? key.slice(8) : null);

/** The channel a rollout request's body names (untrusted bytes), or null when the routes should answer it. */
export function bodyChannel(body: Uint8Array): string | null {
  try {
    const j = JSON.parse(Buffer.from(body).toString('utf8')) as unknown;
    const c = typeof j === 'object' && j !== null ? (j as Record<string, unknown>).channel : undefined;
    return typeof c === 'string' && CHANNEL_RE.test(c) ? c : null;
  } catch {
    return null;
  }
}

/** What routing needs from a keyed request's body: its member reference, or null when the routes should answer it. */
export interface KeyedRef {
  release: string;
  group: string;
  member: string;
  wideGroup?: string;
  /** The body has its own `address` (a proxied heartbeat then keeps it). */
  hasAddress: boolean;
}

/**
 * The member reference of a keyed request's body (untrusted bytes; a fuzz target). Null
 * for anything the routes must refuse themselves (not JSON, missing or odd fields), so
 * the agent gets the same error from any instance.
 */
export function keyedRef(body: Uint8Array): KeyedRef | null {
  let j: unknown;
  try {
    j = JSON.parse(Buffer.from(body).toString('utf8'));
  } catch {
    return null;
  }
  if (typeof j !== 'object' || j === null || Array.isArray(j)) return null;
  const { release, group, member, wideGroup, address } = j as Record<string, unknown>;
  if (typeof release !== 'string' || typeof group !== 'string' || typeof member !== 'string') return null;
  if (!release || !group || !member || release.includes('/') || group.includes('/') || group.startsWith('*') || release.length > 64 || group.length > 256 || member.length > 256) return null;
  if (wideGroup !== undefined && (typeof wideGroup !== 'string' || wideGroup.includes('/') || wideGroup.length > 256)) return null;
  return { release, group, member, ...(typeof wideGroup === 'string' && wideGroup ? { wideGroup } : {}), hasAddress: address !== undefined };
}
