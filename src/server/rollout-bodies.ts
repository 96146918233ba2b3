import * as http from 'node:http';
import { CHANNEL_RE } from '../release/channels';
import { isName, isReleaseId, NAME_RULE } from '../wire/ids';
import { MAX_BODY_BYTES } from '../wire/http-bodies';
import { parseDuration, parseMaxFailures, parseWaves, parseWindow, REPORTED_STATES, ReportedState } from './rollout';

/** The rollout endpoints' request bodies (untrusted: fuzz targets) and their errors. */

export class ApiError extends Error {
  constructor(readonly status: number, readonly code: string, message: string) {
    super(message);
  }
}

/** The request's body as one JSON object; `preRead` when the coordinators' routing read it already. */
export async function readJson(req: http.IncomingMessage, preRead?: Buffer): Promise<Record<string, unknown>> {
  if (preRead) {
    if (preRead.length > MAX_BODY_BYTES) throw new ApiError(413, 'TOO_LARGE', `body larger than ${MAX_BODY_BYTES} bytes`);
    return preRead.length === 0 ? {} : jsonObject(preRead);
  }
  const chunks: Buffer[] = [];
  let n = 0;
  for await (const c of req as AsyncIterable<Buffer>) {
    n += c.length;
    if (n > MAX_BODY_BYTES) throw new ApiError(413, 'TOO_LARGE', `body larger than ${MAX_BODY_BYTES} bytes`);
    chunks.push(c);
  }
  return n === 0 ? {} : jsonObject(Buffer.concat(chunks));
}

/** A request body that must be one JSON object; ApiError 400 otherwise. */
export function jsonObject(bytes: Uint8Array): Record<string, unknown> {
  let v: unknown;
  try {
    v = JSON.parse(Buffer.from(bytes).toString('utf8'));
  } catch (err) {
    throw new ApiError(400, 'BAD_BODY', `body is not JSON: ${(err as Error).message}`);
  }
  if (typeof v !== 'object' || v === null || Array.isArray(v)) throw new ApiError(400, 'BAD_BODY', 'body must be a JSON object');
  return v as Record<string, unknown>;
}

/** The body of POST /v1/rollouts (untrusted: a fuzz target). Throws ApiError 400 naming the field. */
export function parseStartBody(b: Record<string, unknown>) {
  const allowed = ['channel', 'release', 'waves', 'maxFailures', 'waveWait', 'window'];
  for (const k of Object.keys(b)) if (!allowed.includes(k)) throw new ApiError(400, 'BAD_BODY', `unknown field "${k}"`);
  const str = (k: string, optional = false): string | undefined => {
    const v = b[k];
    if (v === undefined && optional) return undefined;
    if (typeof v !== 'string' || v.length > 1024) throw new ApiError(400, 'BAD_BODY', `${k} must be a string`);
    return v;
  };
  const channel = str('channel')!;
  const release = str('release')!;
  if (!CHANNEL_RE.test(channel)) throw new ApiError(400, 'BAD_CHANNEL', `${JSON.stringify(channel)} is not a channel name`);
  if (!isReleaseId(release)) throw new ApiError(400, 'BAD_RELEASE', `${JSON.stringify(release)} is not a release id (32 hex characters)`);
  const waves = parseWaves(str('waves')!);
  if (typeof waves === 'string') throw new ApiError(400, 'BAD_WAVES', `waves ${waves}`);
  const maxFailures = parseMaxFailures(str('maxFailures')!);
  if (typeof maxFailures === 'string') throw new ApiError(400, 'BAD_MAX_FAILURES', `maxFailures: ${maxFailures}`);
  const ww = str('waveWait', true);
  const waveWaitMs = ww === undefined ? null : parseDuration(ww);
  if (typeof waveWaitMs === 'string') throw new ApiError(400, 'BAD_WAVE_WAIT', `waveWait: ${waveWaitMs}`);
  const window = str('window', true) ?? null;
  if (window !== null) {
    const w = parseWindow(window);
    if (typeof w === 'string') throw new ApiError(400, 'BAD_WINDOW', `window ${w}`);
  }
  return { channel, release, waves, maxFailures, waveWaitMs, window };
}

export interface PollBody {
  channel: string;
  group: string;
  member: string;
  release?: string;
  state?: ReportedState;
  reason?: string;
}

/** The body of POST /v1/rollouts/poll (untrusted: a fuzz target). Throws ApiError 400 naming the field. */
export function parsePollBody(b: Record<string, unknown>): PollBody {
  const allowed = ['channel', 'group', 'member', 'release', 'state', 'reason'];
  for (const k of Object.keys(b)) if (!allowed.includes(k)) throw new ApiError(400, 'BAD_BODY', `unknown field "${k}"`);
  if (typeof b.channel !== 'string' || !CHANNEL_RE.test(b.channel)) throw new ApiError(400, 'BAD_BODY', 'channel must be a channel name');
  if (!isName(b.group)) throw new ApiError(400, 'BAD_BODY', `group must be ${NAME_RULE}`);
  if (!isName(b.member)) throw new ApiError(400, 'BAD_BODY', `member must be ${NAME_RULE}`);
  if (b.release !== undefined && (typeof b.release !== 'string' || !isReleaseId(b.release))) throw new ApiError(400, 'BAD_BODY', 'release must be a release id');
  if (b.state !== undefined && !REPORTED_STATES.includes(b.state as ReportedState)) throw new ApiError(400, 'BAD_BODY', `state must be one of ${REPORTED_STATES.join(', ')}`);
  if ((b.state === undefined) !== (b.release === undefined)) throw new ApiError(400, 'BAD_BODY', 'release and state go together');
  if (b.reason !== undefined && (typeof b.reason !== 'string' || b.reason.length > 512)) throw new ApiError(400, 'BAD_BODY', 'reason must be a string of at most 512 characters');
  return b as unknown as PollBody;
}
