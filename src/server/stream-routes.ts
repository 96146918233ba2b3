import { createReadStream, FSWatcher, promises as fs, watch } from 'node:fs';
import * as path from 'node:path';
import * as http from 'node:http';
import { BatchEnvelope, checkReleaseName, compactAfter, CompactBatch, peekBatchFile, StreamBatch, StreamHead } from '../release/stream-manifest';
import { StreamStore } from '../release/stream-store';
import { HttpError } from './http-util';
import { parseStreamBeat, MAX_STREAM_BODY_BYTES } from '../wire/stream-control';
import { StreamAllocation } from './stream-alloc';

/** The longest a batches request may be held (`waitMs` above this is cut to it). */
export const MAX_STREAM_WAIT_MS = 60_000;
/** How often a stream with held batches requests is checked besides fs.watch's events. */
export const STREAM_CHECK_MS = 50;
/** At most this many batches, and about this many bytes of them, in one answer. */
export const MAX_BATCHES_PER_ANSWER = 64;
export const MAX_BATCH_ANSWER_BYTES = 4 * 1024 * 1024;

/**
 * The stream read endpoints (docs/protocol.md, "Streams (1.4)"):
 *   GET /v1/streams/{name}                      the head
 *   GET /v1/streams/{name}/batches?from=I|unit=U[&waitMs=N][&after=H]   batch files, a long poll
 *   GET /v1/streams/{name}/units/{n}            a unit's bytes
 * They read `<store>/streams/<name>/`, written by `fleetcast stream publish` in another
 * process. Authentication is the server's (every request passed it before it gets here,
 * as for the release list and the channels); the limits on connections and headers are
 * the server's too.
 */
export class StreamRoutes {
  private readonly watch = new BatchWatch();
  /** Allocation of stream units to agents (POST /v1/streams/{name}/heartbeat). */
  readonly alloc = new StreamAllocation();
  constructor(private readonly storeDir: string) {}

  /** Handles the request when it is a stream route; false otherwise. */
  async handle(req: http.IncomingMessage, res: http.ServerResponse, url: URL, authorize: (member: string) => void = () => undefined): Promise<boolean> {
    const parts = url.pathname.split('/').filter(Boolean);
    if (parts[0] !== 'v1' || parts[1] !== 'streams' || parts.length < 3) return false;
    const beat = parts.length === 4 && parts[3] === 'heartbeat';
    if (req.method !== (beat ? 'POST' : 'GET')) throw new HttpError(405, 'METHOD', `method ${req.method} is not allowed on ${beat ? 'a stream heartbeat' : 'streams'}`);
    const name = parts[2];
    if (checkReleaseName(name)) throw new HttpError(400, 'BAD_STREAM', `"${name.slice(0, 64)}" is not a stream name`);
    const store = new StreamStore(this.storeDir, name);
    if (beat) {
      const b = parseStreamBeat(await readBody(req));
      if (typeof b === 'string') throw new HttpError(400, 'BAD_BODY', b);
      authorize(b.member); // device identity, as for release heartbeats: a member id only with its own token
      json(res, 200, this.alloc.heartbeat(name, await this.head(store), b, Date.now()));
    } else if (parts.length === 3) {
      json(res, 200, await this.head(store));
    } else if (parts.length === 4 && parts[3] === 'batches') {
      await this.batches(store, res, url.searchParams);
    } else if (parts.length === 5 && parts[3] === 'units') {
      const member = url.searchParams.get('member');
      if (member !== null && !/^[A-Za-z0-9._:@-]{1,128}$/.test(member)) throw new HttpError(400, 'BAD_QUERY', 'member must be a member id');
      await this.unit(store, res, parts[4], member);
    } else {
      throw new HttpError(404, 'NOT_FOUND', `no such endpoint: GET ${url.pathname}`);
    }
    return true;
  }

  private async head(store: StreamStore): Promise<StreamHead> {
    const h = await store.head().catch(() => {
      throw new HttpError(503, 'BAD_STREAM_STORE', `stream ${store.name}: its head in the store cannot be read`);
    });
    if (!h) throw new HttpError(404, 'NO_STREAM', `stream ${store.name} is not on this server`);
    return h;
  }

  private async batches(store: StreamStore, res: http.ServerResponse, q: URLSearchParams): Promise<void> {
    for (const k of q.keys()) if (!['from', 'unit', 'waitMs', 'after'].includes(k)) throw new HttpError(400, 'BAD_QUERY', `unknown query parameter ${k.slice(0, 32)}`);
    const after = q.get('after');
    if (after !== null && (!/^[0-9a-f]{64}$/.test(after) || q.get('from') === null)) throw new HttpError(400, 'BAD_QUERY', 'after must be 64 lowercase hex (the hash of batch from - 1), and only with from');
    const num = (k: string): number | null => {
      const v = q.get(k);
      if (v === null) return null;
      if (!/^\d{1,15}$/.test(v)) throw new HttpError(400, 'BAD_QUERY', `${k} must be a whole number, not "${v.slice(0, 32)}"`);
      return Number(v);
    };
    const from = num('from');
    const unit = num('unit');
    const waitMs = Math.min(num('waitMs') ?? 0, MAX_STREAM_WAIT_MS);
    if ((from === null) === (unit === null)) throw new HttpError(400, 'BAD_QUERY', 'give exactly one of from (a batch index) and unit (a unit index)');
    let h = await this.head(store);
    let start: number;
    if (from !== null) {
      start = from;
    } else if (unit! < h.firstUnit) {
      start = -1;
    } else {
      const found = unit! >= h.nextUnit ? h.lastBatch + 1 : await store.batchFor(unit!, h);
      if (found === null) {
        // Retention moved on while we searched: say so, or have the receiver ask again.
        h = await this.head(store);
        if (unit! >= h.firstUnit) throw new HttpError(503, 'BUSY', `stream ${store.name}: the batch of unit ${unit} moved while it was looked up; ask again`);
      }
      start = found ?? -1;
    }
    if (start < h.firstBatch || (unit !== null && unit < h.firstUnit)) {
      throw new HttpError(410, 'GONE', `stream ${store.name}: ${from !== null ? `batch ${from}` : `unit ${unit}`} was dropped (retention); the first retained are batch ${h.firstBatch}, unit ${h.firstUnit}`);
    }
    if (start > h.lastBatch + 1) throw new HttpError(400, 'BAD_QUERY', `from ${start} is past the next batch, ${h.lastBatch + 1}`);
    if (start > h.lastBatch && !h.ended && waitMs > 0) {
      const gone = new AbortController();
      res.once('close', () => gone.abort());
      await this.watch.wait(store, start, waitMs, gone.signal);
      if (gone.signal.aborted) return;
      h = await this.head(store);
      res.setHeader('x-fleetcast-long-poll', String(MAX_STREAM_WAIT_MS));
    }
    const batches: unknown[] = [];
    let bytes = 0;
    // Compact batches (docs/protocol.md): each after the one before it, the first after the receiver's.
    let prev = after !== null ? await this.compactBase(store, start - 1, after) : null;
    for (let i = start; batches.length < MAX_BATCHES_PER_ANSWER && bytes < MAX_BATCH_ANSWER_BYTES; i++) {
      const raw = await store.readBatchRaw(i);
      if (!raw) break;
      let c: CompactBatch | null = null;
      if (after !== null) {
        const next = compactable(raw);
        c = prev && next ? compactAfter(prev.batch, prev.e.key, next.batch, next.e) : null;
        if (c) this.compactBatches++;
        prev = next;
      }
      batches.push(c ?? JSON.parse(raw.toString('utf8')));
      bytes += raw.length;
    }
    if (prev && batches.length > 0) this.lastBatch.set(store.dir, { index: start + batches.length - 1, ...prev });
    json(res, 200, { batches, firstBatch: h.firstBatch, lastBatch: Math.max(h.lastBatch, start + batches.length - 1), ended: h.ended });
  }

  /** Batches answered in compact form (tests, bench). */
  compactBatches = 0;

  /** Per stream, the last batch an answer gave in compact form or could have: the next poll's base, without reading it again. */
  private readonly lastBatch = new Map<string, Compactable & { index: number }>();

  /** Batch `i` when its hash is `hash` (what the receiver holds), else null: the answer's first batch goes whole. */
  private async compactBase(store: StreamStore, i: number, hash: string): Promise<Compactable | null> {
    const last = this.lastBatch.get(store.dir);
    if (last && last.index === i && last.batch.hash === hash) return last;
    const raw = i >= 0 ? await store.readBatchRaw(i) : null;
    const b = raw ? compactable(raw) : null;
    return b && b.batch.hash === hash ? b : null;
  }

  private async unit(store: StreamStore, res: http.ServerResponse, nStr: string, member: string | null): Promise<void> {
    if (!/^\d{1,15}$/.test(nStr)) throw new HttpError(400, 'BAD_UNIT', `unit "${nStr.slice(0, 32)}" is not a number`);
    const n = Number(nStr);
    const h = await this.head(store);
    if (n < h.firstUnit) throw new HttpError(410, 'GONE', `stream ${store.name}: unit ${n} was dropped (retention); the first retained unit is ${h.firstUnit}`);
    if (n >= h.nextUnit) throw new HttpError(404, 'NO_UNIT', `stream ${store.name}: unit ${n} is not published yet (the next is ${h.nextUnit})`);
    let size: number;
    try {
      size = (await fs.stat(store.unitPath(n))).size;
    } catch {
      // Dropped between reading the head and here.
      throw new HttpError(410, 'GONE', `stream ${store.name}: unit ${n} was dropped (retention)`);
    }
    if (member) this.alloc.sending(store.name, member, n, Date.now());
    this.alloc.unitBytesSent.set(store.name, (this.alloc.unitBytesSent.get(store.name) ?? 0) + size);
    persistentByDefault(res);
    res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': size, 'x-fleetcast-unit': String(n) });
    await new Promise<void>((resolve) => {
      const s = createReadStream(store.unitPath(n));
      s.on('error', () => {
        res.destroy();
        resolve();
      });
      res.on('close', () => {
        s.destroy();
        resolve();
      });
      s.pipe(res);
    });
  }
}

interface Waiter {
  index: number;
  done: () => void;
}

/**
 * Held batches requests, by stream: each waits for one batch file to appear. The
 * publisher is another process, so the stream's batches directory is watched (inotify,
 * through fs.watch) and, in case a change goes unreported, checked every STREAM_CHECK_MS
 * while anyone waits: one stat per stream and check, however many requests are held.
 */
class BatchWatch {
  private readonly streams = new Map<string, { store: StreamStore; waiters: Set<Waiter>; timer: NodeJS.Timeout; watcher: FSWatcher | null; checking: boolean }>();

  wait(store: StreamStore, index: number, waitMs: number, signal: AbortSignal): Promise<void> {
    return new Promise<void>((resolve) => {
      let s = this.streams.get(store.dir);
      if (!s) {
        const entry = { store, waiters: new Set<Waiter>(), timer: setInterval(() => void this.check(store.dir), STREAM_CHECK_MS), watcher: null as FSWatcher | null, checking: false };
        try {
          entry.watcher = watch(path.dirname(store.batchPath(0)), () => void this.check(store.dir));
          entry.watcher.on('error', () => undefined);
        } catch {
          /* the interval alone */
        }
        this.streams.set(store.dir, (s = entry));
      }
      const waiters = s.waiters;
      const t = setTimeout(done, Math.min(waitMs, MAX_STREAM_WAIT_MS));
      const w: Waiter = { index, done };
      const stop = () => this.stopIfIdle(store.dir);
      function done() {
        clearTimeout(t);
        signal.removeEventListener('abort', done);
        waiters.delete(w);
        stop();
        resolve();
      }
      if (signal.aborted) return done();
      signal.addEventListener('abort', done, { once: true });
      waiters.add(w);
      void this.check(store.dir);
    });
  }

  private async check(dir: string): Promise<void> {
    const s = this.streams.get(dir);
    if (!s || s.checking || s.waiters.size === 0) return;
    s.checking = true;
    try {
      const indices = new Set([...s.waiters].map((w) => w.index));
      for (const i of indices) {
        if (!(await exists(s.store.batchPath(i)))) continue;
        for (const w of [...s.waiters]) if (w.index === i) w.done();
      }
    } finally {
      s.checking = false;
    }
  }

  private stopIfIdle(dir: string): void {
    const s = this.streams.get(dir);
    if (!s || s.waiters.size > 0) return;
    clearInterval(s.timer);
    s.watcher?.close();
    this.streams.delete(dir);
  }
}

const cache = new Map<string, StreamRoutes>();
/** The stream routes of a store (one per store directory, so server-routes.ts needs no field for them). */
export function streamRoutes(storeDir: string): StreamRoutes {
  let r = cache.get(storeDir);
  if (!r) cache.set(storeDir, (r = new StreamRoutes(storeDir)));
  return r;
}

function json(res: http.ServerResponse, status: number, v: unknown): void {
  const body = Buffer.from(JSON.stringify(v));
  persistentByDefault(res);
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': body.length });
  res.end(body);
}

/**
 * Leave out `Connection: keep-alive` and `Keep-Alive: timeout=N` (48 bytes) from an answer
 * on a connection that stays open: HTTP/1.1 connections persist unless either side says
 * `close` (RFC 9112 section 9.3), and Node's client agent (what agents use) reads the
 * timeout hint only to shorten a timeout it was given, which ours are not. A stream member
 * gets about one heartbeat answer per batch, so at 64 KiB units those bytes were ~0.2% of
 * the stream's bytes per LAN group (issue 19; bench/results/stream.md). An answer to a
 * request that asked to close, or from HTTP/1.0, keeps Node's headers.
 */
function persistentByDefault(res: http.ServerResponse): void {
  if (res.shouldKeepAlive && res.req.httpVersion === '1.1') res.removeHeader('connection');
}

/** A request body up to MAX_STREAM_BODY_BYTES (413 past it). */
async function readBody(req: http.IncomingMessage): Promise<Buffer> {
  const parts: Buffer[] = [];
  let n = 0;
  for await (const c of req) {
    n += (c as Buffer).length;
    if (n > MAX_STREAM_BODY_BYTES) throw new HttpError(413, 'TOO_LARGE', `body larger than ${MAX_STREAM_BODY_BYTES} bytes`);
    parts.push(c as Buffer);
  }
  return Buffer.concat(parts);
}

interface Compactable {
  batch: StreamBatch;
  e: BatchEnvelope;
}

/** A stored batch file as compactAfter takes it; null when it does not parse (it then goes whole, as it is). */
function compactable(raw: Buffer): Compactable | null {
  try {
    return peekBatchFile(raw);
  } catch {
    return null;
  }
}

async function exists(p: string): Promise<boolean> {
  try {
    await fs.access(p);
    return true;
  } catch {
    return false;
  }
}
