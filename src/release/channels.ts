import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { isReleaseId } from './manifest';
import { writeAtomic } from '../storage/files';
import { fromSystemError } from '../util/errors';
import { parseJsonObject } from '../wire/json-object';

/**
 * Channels: a name (stable, beta, ...) pointing at one release, the channel's current
 * one. Kept on the server's store as `<store>/channels/<name>.json`, written atomically
 * by `fleetcast publish --channel NAME` and read by the server on every request, so a
 * publish takes effect without restarting the server. Agents that follow a channel
 * poll `GET /v1/channels/NAME` and move to each new current release.
 */
export interface ChannelHead {
  channel: string;
  release: string;
  name: string;
  /** ms since the epoch. */
  publishedAt: number;
}

export const CHANNEL_RE = /^[A-Za-z0-9._-]{1,64}$/;

const channelFile = (storeDir: string, channel: string) => path.join(storeDir, 'channels', `${channel}.json`);

export async function setChannel(storeDir: string, head: ChannelHead): Promise<void> {
  if (!CHANNEL_RE.test(head.channel)) throw new Error(`bad channel name ${JSON.stringify(head.channel)}`);
  const file = channelFile(storeDir, head.channel);
  try {
    await fs.mkdir(path.dirname(file), { recursive: true });
    await writeAtomic(file, Buffer.from(JSON.stringify(head) + '\n'));
  } catch (err) {
    throw fromSystemError(err, `writing channel ${head.channel}`);
  }
}

/** Parse a channel file's bytes (untrusted: also a fuzz target). */
export function parseChannelHead(bytes: Uint8Array): ChannelHead | string {
  const o = parseJsonObject(bytes);
  if (typeof o === 'string') return o;
  if (typeof o.channel !== 'string' || !CHANNEL_RE.test(o.channel)) return 'channel must be a channel name';
  if (typeof o.release !== 'string' || !isReleaseId(o.release)) return 'release must be a release id';
  if (typeof o.name !== 'string' || o.name.length > 255) return 'name must be a string';
  if (typeof o.publishedAt !== 'number' || !Number.isFinite(o.publishedAt)) return 'publishedAt must be a number';
  return { channel: o.channel, release: o.release, name: o.name, publishedAt: o.publishedAt };
}

/** The channel's head, null when the channel does not exist; throws on a corrupt file. */
export async function readChannel(storeDir: string, channel: string): Promise<ChannelHead | null> {
  if (!CHANNEL_RE.test(channel)) return null;
  let raw: Buffer;
  try {
    raw = await fs.readFile(channelFile(storeDir, channel));
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw fromSystemError(err, `reading channel ${channel}`);
  }
  const h = parseChannelHead(raw);
  if (typeof h === 'string') throw new Error(`channel file ${channelFile(storeDir, channel)}: ${h}`);
  return h;
}

export async function listChannels(storeDir: string): Promise<ChannelHead[]> {
  let names: string[];
  try {
    names = await fs.readdir(path.join(storeDir, 'channels'));
  } catch {
    return [];
  }
  const heads: ChannelHead[] = [];
  for (const n of names) {
    if (!n.endsWith('.json')) continue;
    const h = await readChannel(storeDir, n.slice(0, -5)).catch(() => null);
    if (h) heads.push(h);
  }
  return heads;
}
