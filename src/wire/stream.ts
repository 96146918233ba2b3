import { ExitCode, FleetcastError } from '../util/errors';
import { checkReleaseName, MAX_UNIT_BYTES, MIN_UNIT_BYTES } from './manifest';

export { checkReleaseName };

/**
 * The stream manifest (docs/protocol.md, "Streams (1.4)"): a live stream is published
 * as signed, append-only **batches**. Each batch names a run of consecutive units with
 * their SHA-256, and the SHA-256 of the previous batch's body, so the batches form a
 * hash chain: a member verifies a unit as soon as it holds the batch covering it, and
 * a batch that does not extend the chain it holds (wrong index, wrong prev, a gap in
 * the units) is refused. The chain is the one of TUF's snapshot/timestamp metadata
 * (each version names the one it follows; a client keeps what it trusted last and
 * refuses anything that does not move forward from it) and of RFC 6962's signed tree
 * heads (a signature commits to all history before it); a plain hash chain suffices
 * here because a member reads the batches in order.
 *
 * A batch file is one line of UTF-8 JSON:
 *   {"fleetcast":"stream-batch","v":1,"body":B64,"key":B64,"sig":B64}
 * `body` is the UTF-8 JSON of StreamBatchBody; `sig` is Ed25519 over
 * STREAM_SIGN_CONTEXT followed by exactly those body bytes (the context keeps a batch
 * signature from ever verifying as a release manifest's, which signs the bare body).
 *
 * This file is the format, pure; signing, verifying and the chain rules are in
 * src/release/stream-manifest.ts.
 */
export interface StreamBatchBody {
  v: 1;
  /** The stream's name (the rules of a release name). */
  stream: string;
  /** 32 lowercase hex: chosen at random when the stream starts; the same in every batch. */
  id: string;
  /** This batch's index: 0, 1, 2, … */
  batch: number;
  /** Index of this batch's first unit. */
  first: number;
  /** Byte offset of that unit in the stream. */
  offset: number;
  /** Units in this batch: 1 … MAX_BATCH_UNITS, or 0 in a final batch. */
  count: number;
  unitSize: number;
  /** SHA-256 of each unit, 64 lowercase hex. */
  units: string[];
  /** Bytes in the last unit of this batch (every other unit holds unitSize); 0 when count is 0. */
  lastLength: number;
  /** SHA-256 of the previous batch's body bytes; 64 zeros in batch 0. */
  prev: string;
  /** When the batch was signed, ISO-8601. */
  time: string;
  /** The end marker: no batch follows. */
  final?: true;
}

export interface StreamBatch extends StreamBatchBody {
  /** SHA-256 of the body bytes, 64 lowercase hex: the next batch's `prev`. */
  hash: string;
  /** The exact file bytes. */
  raw: Buffer;
}

export const STREAM_SIGN_CONTEXT = 'fleetcast stream batch v1\n';
export const MAX_BATCH_UNITS = 4096;
/** 4096 hashes of 67 bytes in base64 and the envelope: well under. */
export const MAX_BATCH_BYTES = 512 * 1024;
export const ZERO_HASH = '0'.repeat(64);
const HEX64 = /^[0-9a-f]{64}$/;
const HEX32 = /^[0-9a-f]{32}$/;
const B64 = /^[A-Za-z0-9+/]*={0,2}$/;
const FIELDS = new Set(['v', 'stream', 'id', 'batch', 'first', 'offset', 'count', 'unitSize', 'units', 'lastLength', 'prev', 'time', 'final']);

/** Throws BAD_BATCH (exit 65) with `msg`. */
export function badBatch(msg: string): never {
  throw new FleetcastError('BAD_BATCH', `stream batch: ${msg}`, ExitCode.DATAERR);
}

const isCount = (n: unknown, max = Number.MAX_SAFE_INTEGER): n is number => Number.isSafeInteger(n) && (n as number) >= 0 && (n as number) <= max;

export function validateBatchBody(b: unknown): StreamBatchBody {
  if (typeof b !== 'object' || b === null || Array.isArray(b)) badBatch('body is not an object');
  const o = b as Record<string, unknown>;
  for (const k of Object.keys(o)) if (!FIELDS.has(k)) badBatch(`unknown field "${k}"`);
  if (o.v !== 1) badBatch(`unsupported body version ${JSON.stringify(o.v)}`);
  const nameErr = checkReleaseName(o.stream as string);
  if (nameErr) badBatch(`stream ${nameErr}`);
  if (typeof o.id !== 'string' || !HEX32.test(o.id)) badBatch('id is not 32 lowercase hex characters');
  for (const f of ['batch', 'first', 'offset'] as const) if (!isCount(o[f])) badBatch(`${f} is not a non-negative integer`);
  if (o.final !== undefined && o.final !== true) badBatch('final must be true when present');
  if (!isCount(o.count, MAX_BATCH_UNITS)) badBatch(`count must be an integer from 0 to ${MAX_BATCH_UNITS}`);
  const count = o.count as number;
  if (count === 0 && o.final !== true) badBatch('count is 0 in a batch that is not final');
  if (!Number.isSafeInteger(o.unitSize) || (o.unitSize as number) < MIN_UNIT_BYTES || (o.unitSize as number) > MAX_UNIT_BYTES) {
    badBatch(`unitSize must be an integer from ${MIN_UNIT_BYTES} to ${MAX_UNIT_BYTES}`);
  }
  if (!Array.isArray(o.units) || o.units.length !== count) badBatch(`units must list exactly count (${count}) hashes`);
  for (let i = 0; i < count; i++) if (typeof o.units[i] !== 'string' || !HEX64.test(o.units[i] as string)) badBatch(`units[${i}] is not 64 lowercase hex characters`);
  const lastOk = count === 0 ? o.lastLength === 0 : Number.isSafeInteger(o.lastLength) && (o.lastLength as number) >= 1 && (o.lastLength as number) <= (o.unitSize as number);
  if (!lastOk) badBatch(count === 0 ? 'lastLength must be 0 when count is 0' : 'lastLength must be from 1 to unitSize');
  if (typeof o.prev !== 'string' || !HEX64.test(o.prev)) badBatch('prev is not 64 lowercase hex characters');
  if (o.batch === 0 && (o.first !== 0 || o.offset !== 0 || o.prev !== ZERO_HASH)) badBatch('batch 0 must start at unit 0, offset 0, with prev all zeros');
  if (o.batch !== 0 && o.prev === ZERO_HASH) badBatch('prev is all zeros in a batch after the first');
  if ((o.first as number) + count > Number.MAX_SAFE_INTEGER || (o.offset as number) + batchBytes(o as unknown as StreamBatchBody) > Number.MAX_SAFE_INTEGER) badBatch('units run past 2^53');
  if (typeof o.time !== 'string' || o.time.length > 64 || Number.isNaN(Date.parse(o.time))) badBatch('time is not a timestamp');
  return o as unknown as StreamBatchBody;
}

/** The bytes of all units of a batch. */
export function batchBytes(b: Pick<StreamBatchBody, 'count' | 'unitSize' | 'lastLength'>): number {
  return b.count === 0 ? 0 : (b.count - 1) * b.unitSize + b.lastLength;
}

/** The length of unit `unit` of batch `b` (which must cover it). */
export function streamUnitLength(b: Pick<StreamBatchBody, 'first' | 'count' | 'unitSize' | 'lastLength'>, unit: number): number {
  return unit === b.first + b.count - 1 ? b.lastLength : b.unitSize;
}

export function coversUnit(b: Pick<StreamBatchBody, 'first' | 'count'>, unit: number): boolean {
  return unit >= b.first && unit < b.first + b.count;
}

/** The envelope of a batch file, checked for shape only (no signature: see release/stream-manifest.ts). */
export interface BatchEnvelope {
  body: Buffer;
  key: Buffer;
  sig: Buffer;
}

export function parseBatchEnvelope(raw: Uint8Array): BatchEnvelope {
  if (raw.length > MAX_BATCH_BYTES) badBatch(`file is ${raw.length} bytes, more than the ${MAX_BATCH_BYTES} allowed`);
  let outer: unknown;
  try {
    outer = JSON.parse(Buffer.from(raw.buffer, raw.byteOffset, raw.byteLength).toString('utf8'));
  } catch (err) {
    badBatch(`not JSON (${(err as Error).message})`);
  }
  return envelopeFromObject(outer);
}

/** The same from an already parsed JSON value (a batch inside an HTTP answer). */
export function envelopeFromObject(outer: unknown): BatchEnvelope {
  if (typeof outer !== 'object' || outer === null || Array.isArray(outer)) badBatch('not a JSON object');
  const o = outer as Record<string, unknown>;
  if (o.fleetcast !== 'stream-batch') badBatch('not a fleetcast stream batch');
  if (o.v !== 1) badBatch(`unsupported batch version ${JSON.stringify(o.v)}`);
  for (const k of Object.keys(o)) if (!['fleetcast', 'v', 'body', 'key', 'sig'].includes(k)) badBatch(`unknown field "${k}"`);
  for (const f of ['body', 'key', 'sig'] as const) {
    if (typeof o[f] !== 'string' || !B64.test(o[f] as string) || (o[f] as string).length % 4 !== 0) badBatch(`${f} is not base64`);
  }
  const body = Buffer.from(o.body as string, 'base64');
  const key = Buffer.from(o.key as string, 'base64');
  const sig = Buffer.from(o.sig as string, 'base64');
  if (key.length !== 32) badBatch('key is not a 32-byte Ed25519 public key');
  if (sig.length !== 64) badBatch('sig is not a 64-byte Ed25519 signature');
  return { body, key, sig };
}

export function encodeBatchEnvelope(e: BatchEnvelope): Buffer {
  return Buffer.from(JSON.stringify({ fleetcast: 'stream-batch', v: 1, body: e.body.toString('base64'), key: e.key.toString('base64'), sig: e.sig.toString('base64') }) + '\n');
}

/**
 * A stream's head as `GET /v1/streams/{name}` answers it and as `<store>/streams/<name>/head`
 * keeps it: what is retained and how far the stream has come.
 */
export interface StreamHead {
  stream: string;
  id: string;
  unitSize: number;
  /** The first retained unit and the batch that covers it. */
  firstUnit: number;
  firstBatch: number;
  /** The index of the last batch, and one past its last unit. */
  lastBatch: number;
  nextUnit: number;
  /** Stream bytes published (the offset of unit nextUnit). */
  bytes: number;
  /** The last batch's time. */
  time: string;
  ended: boolean;
}

/** Parse a head (from the server or the store's file); throws BAD_HEAD. */
export function parseStreamHead(raw: Uint8Array | string): StreamHead {
  const bad = (m: string): never => {
    throw new FleetcastError('BAD_HEAD', `stream head: ${m}`, ExitCode.DATAERR);
  };
  let o: unknown;
  try {
    o = JSON.parse(typeof raw === 'string' ? raw : Buffer.from(raw).toString('utf8'));
  } catch {
    bad('not JSON');
  }
  if (typeof o !== 'object' || o === null || Array.isArray(o)) bad('not a JSON object');
  const h = o as Record<string, unknown>;
  if (checkReleaseName(h.stream as string)) bad('stream is not a stream name');
  if (typeof h.id !== 'string' || !HEX32.test(h.id)) bad('id is not 32 hex characters');
  for (const f of ['unitSize', 'firstUnit', 'firstBatch', 'lastBatch', 'nextUnit', 'bytes'] as const) if (!isCount(h[f])) bad(`${f} is not a non-negative integer`);
  if ((h.firstUnit as number) > (h.nextUnit as number) || (h.firstBatch as number) > (h.lastBatch as number)) bad('first is past last');
  if (typeof h.time !== 'string' || h.time.length > 64) bad('time is not a timestamp');
  if (typeof h.ended !== 'boolean') bad('ended is not a boolean');
  return { stream: h.stream as string, id: h.id as string, unitSize: h.unitSize as number, firstUnit: h.firstUnit as number, firstBatch: h.firstBatch as number, lastBatch: h.lastBatch as number, nextUnit: h.nextUnit as number, bytes: h.bytes as number, time: h.time as string, ended: h.ended as boolean };
}

/**
 * A batch in compact form (docs/protocol.md, "Compact batches"): only what its body adds
 * to the batch before it, which the receiver holds. `u`: base64 of the units' SHA-256
 * hashes, 32 bytes each, in order; `l`: lastLength, absent when it is unitSize (or 0 with
 * no unit); `t`: the body's `time` as ms since 1970; `s`: the signature, base64; `f`:
 * final. The key is the batch before's.
 */
export interface CompactBatch {
  u: string;
  l?: number;
  t: number;
  s: string;
  f?: true;
}

/** Whether `err` is a server from before compact batches refusing `after=` (400 BAD_QUERY): poll without it. */
export function refusedAfter(err: unknown): boolean {
  return err instanceof Error && /unknown query parameter after/.test(err.message);
}

/** Whether an element of a batches answer is in compact form (a whole batch file has `fleetcast`). */
export function isCompactBatch(o: unknown): boolean {
  return typeof o === 'object' && o !== null && !Array.isArray(o) && (o as Record<string, unknown>).fleetcast === undefined;
}

/**
 * The body that follows `prev` with what `c` adds, its fields in the order the format's
 * table gives them: what a receiver rebuilds and verifies the signature over. Throws
 * BAD_BATCH on a malformed `c`.
 */
export function bodyAfter(prev: StreamBatchBody & { hash: string }, c: unknown): { body: StreamBatchBody; bytes: Buffer; sig: Buffer } {
  if (typeof c !== 'object' || c === null || Array.isArray(c)) badBatch('compact batch is not an object');
  const o = c as Record<string, unknown>;
  for (const k of Object.keys(o)) if (!['u', 'l', 't', 's', 'f'].includes(k)) badBatch(`compact batch: unknown field "${k.slice(0, 32)}"`);
  if (typeof o.u !== 'string' || o.u.length > Math.ceil((MAX_BATCH_UNITS * 32) / 3) * 4 || !B64.test(o.u) || o.u.length % 4 !== 0) badBatch('compact batch: u is not base64');
  const hashes = Buffer.from(o.u, 'base64');
  if (hashes.length % 32 !== 0) badBatch('compact batch: u is not whole 32-byte hashes');
  if (typeof o.s !== 'string' || !B64.test(o.s) || o.s.length !== 88) badBatch('compact batch: s is not a base64 64-byte signature');
  if (!isCount(o.t, 8.64e15)) badBatch('compact batch: t is not ms since 1970');
  if (o.f !== undefined && o.f !== true) badBatch('compact batch: f must be true when present');
  const count = hashes.length / 32;
  const lastLength = o.l === undefined ? (count === 0 ? 0 : prev.unitSize) : o.l;
  const units: string[] = [];
  for (let i = 0; i < count; i++) units.push(hashes.subarray(32 * i, 32 * i + 32).toString('hex'));
  const body = {
    v: 1,
    stream: prev.stream,
    id: prev.id,
    batch: prev.batch + 1,
    first: prev.first + prev.count,
    offset: prev.offset + batchBytes(prev),
    count,
    unitSize: prev.unitSize,
    units,
    lastLength,
    prev: prev.hash,
    time: new Date(o.t as number).toISOString(),
    ...(o.f === true ? { final: true } : {}),
  };
  return { body: validateBatchBody(body), bytes: Buffer.from(JSON.stringify(body), 'utf8'), sig: Buffer.from(o.s, 'base64') };
}

/**
 * `next` (its envelope `e`) in compact form after `prev`, or null when the receiver could
 * not rebuild its exact body bytes from it (a publisher that orders or spells its fields
 * otherwise) or it is signed by another key than `prevKey`: then it goes whole.
 */
export function compactAfter(prev: StreamBatchBody & { hash: string }, prevKey: Buffer, next: StreamBatchBody, e: BatchEnvelope): CompactBatch | null {
  if (!e.key.equals(prevKey)) return null;
  const c: CompactBatch = {
    u: Buffer.from(next.units.join(''), 'hex').toString('base64'),
    ...(next.lastLength !== (next.count === 0 ? 0 : next.unitSize) ? { l: next.lastLength } : {}),
    t: Date.parse(next.time),
    s: e.sig.toString('base64'),
    ...(next.final === true ? { f: true as const } : {}),
  };
  try {
    return bodyAfter(prev, c).bytes.equals(e.body) ? c : null;
  } catch {
    return null;
  }
}
