import { KeyObject } from 'node:crypto';
import { promises as fs } from 'node:fs';
import { ServerAccess } from '../net/server-access';
import { loadPublicKey } from '../release/keys';
import { batchFromCompact, batchFromObject, checkChain, isCompactBatch, coversUnit, refusedAfter, parseBatch, parseStreamHead, StreamBatch, streamUnitLength, unitHash } from '../release/stream-manifest';
import { writeAtomic } from '../storage/files';
import { ExitCode, FleetcastError, fromSystemError } from '../util/errors';
import { checks, usageError } from './args';
import { Command } from './command';
import { formatBytes } from './progress';
import { parsePositionText, StreamPosition } from '../wire/stream-position';

/** How long a batches request may be held by the server (it cuts longer waits to 60 s). */
const BATCH_WAIT_MS = 30_000;
const RETRY_FIRST_MS = 100;
const RETRY_MAX_MS = 5000;
/** A unit whose bytes fail their hash this many times in a row stops the receiver (exit 65). */
const UNIT_ATTEMPTS = 3;
/** Units of one batch fetched at once (the sink still gets them in order). */
const FETCH_WINDOW = 4;
/** A progress line on stderr at most this often. */
const PROGRESS_EVERY_MS = 5000;

/** What `--state` keeps: the position format an agent's stream disk keeps too. */
type FetchState = StreamPosition;

export const streamFetch: Command = {
  spec: {
    name: 'stream fetch',
    summary:
      "Receive a live stream from the server over HTTP: verify every unit against the stream's signed batches, and write the bytes to the sink in order, exactly once. With --state a restarted fetch resumes after the last unit written. Exits 0 after the stream's end marker. Units come from the server only; `fleetcast agent --stream` shares a stream on the LAN.",
    usage: 'stream fetch NAME --server URL --trust PUBFILE --sink FILE|- [--start live|beginning|UNIT] [--state FILE]',
    positionals: [{ name: 'NAME', required: true }],
    flags: {
      server: { type: 'string', arg: 'URL', help: 'origin server', required: true, check: checks.httpUrl },
      trust: { type: 'list', arg: 'PUBFILE[,...]', help: 'public key(s) the stream must be signed with (server.pub)', required: true },
      sink: { type: 'string', arg: 'FILE|-', help: 'where the bytes go: a file, or - for stdout', required: true },
      start: { type: 'string', arg: 'WHERE', help: 'live (the newest batch), beginning (the first unit still retained) or a unit number; ignored when --state resumes', default: 'live', check: (s) => (/^(live|beginning|\d{1,15})$/.test(s) ? null : `must be live, beginning or a unit number, not ${JSON.stringify(s)}`) },
      state: { type: 'string', arg: 'FILE', help: 'resume file: written after every unit; when it exists the fetch continues from it (a file sink is cut back to the bytes it records)' },
      'token-file': { type: 'string', arg: 'FILE', help: 'bearer token for the server' },
      ca: { type: 'string', arg: 'PEMFILE', help: "CA the server's certificate must chain to" },
      'plain-http': { type: 'boolean', help: 'allow a plain http:// server URL' },
    },
  },
  async run(a) {
    const name = a.positionals[0];
    const trusted = await Promise.all((a.flags.trust as string[]).map((f) => loadPublicKey(f)));
    const access = ServerAccess.fromFiles({ url: String(a.flags.server), tokenFile: a.flags['token-file'] as string | undefined, caFile: a.flags.ca as string | undefined, plainHttp: a.flags['plain-http'] === true });
    const sinkPath = String(a.flags.sink);
    const statePath = a.flags.state as string | undefined;
    if (sinkPath === '-' && statePath && (await readState(statePath))) {
      // Stdout cannot be cut back: a resume there may repeat the unit in flight at the crash.
      process.stderr.write('stream fetch: resuming into stdout, which cannot be cut back: the unit being written when the last run stopped may appear twice\n');
    }
    const f = new Fetcher(access, name, trusted, statePath);
    const state = statePath ? await readState(statePath) : null;
    if (state && state.stream !== name) throw usageError(streamFetch.spec, `--state ${statePath} belongs to stream ${state.stream}, not ${name}`);
    const sink = await openSink(sinkPath, state?.sinkBytes ?? null, statePath !== undefined);
    try {
      await f.run(sink, state, String(a.flags.start));
    } finally {
      await sink.close();
    }
    return ExitCode.OK;
  },
};

interface Sink {
  bytes: number;
  write(b: Buffer): Promise<void>;
  close(): Promise<void>;
}

/** `durable`: each unit is synced before the state names it (with --state); without, the page cache is enough. */
async function openSink(p: string, resumeAt: number | null, durable: boolean): Promise<Sink> {
  if (p === '-') {
    const s: Sink = {
      bytes: resumeAt ?? 0,
      write: (b) => new Promise((resolve, reject) => process.stdout.write(b, (err) => (err ? reject(err) : resolve()))),
      close: async () => undefined,
    };
    return s;
  }
  const fh = await fs.open(p, resumeAt === null ? 'w' : 'r+').catch((err) => {
    throw fromSystemError(err, `opening --sink ${p}`);
  });
  if (resumeAt !== null) {
    const size = (await fh.stat()).size;
    if (size < resumeAt) {
      await fh.close();
      throw new FleetcastError('SINK_SHORT', `--sink ${p} has ${size} bytes, fewer than the ${resumeAt} the state file records: was it replaced? Remove the state file to start over`, ExitCode.DATAERR);
    }
    // Bytes past the state are a unit written when the last run stopped, not yet recorded: it is written again.
    await fh.truncate(resumeAt);
  }
  const s: Sink = {
    bytes: resumeAt ?? 0,
    async write(b) {
      await fh.write(b, 0, b.length, s.bytes);
      if (durable) await fh.datasync();
      s.bytes += b.length;
    },
    close: () => fh.close(),
  };
  return s;
}

async function readState(p: string): Promise<FetchState | null> {
  let raw: string;
  try {
    raw = await fs.readFile(p, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw fromSystemError(err, `reading --state ${p}`);
  }
  return parseFetchState(raw, p);
}

/** A `--state` file's text; BAD_STATE (exit 65) when it is not one. The batch in it is verified when used. */
export function parseFetchState(raw: string, file: string): FetchState {
  const s = parsePositionText(raw);
  if (!s) throw new FleetcastError('BAD_STATE', `--state ${file} is not a stream fetch state file (remove it to start over)`, ExitCode.DATAERR);
  return s;
}

class Fetcher {
  private cur: StreamBatch | null = null;
  private nextUnit = 0;
  private failing = false;
  private reportedAt = Date.now();
  /** The last batches answer said the stream has ended. */
  private lastEnded = false;
  /** Whether long polls send after= for compact batches (false once the server refused it). */
  private compact = true;

  constructor(private readonly access: ServerAccess, private readonly name: string, private readonly trusted: KeyObject[], private readonly statePath: string | undefined) {}

  async run(sink: Sink, state: FetchState | null, start: string): Promise<void> {
    const base = `/v1/streams/${encodeURIComponent(this.name)}`;
    if (state) {
      this.cur = parseBatch(Buffer.from(state.batch), this.trusted);
      if (this.cur.stream !== this.name || this.cur.id !== state.id) throw new FleetcastError('BAD_STATE', `--state ${this.statePath}: its batch is not of stream ${this.name}`, ExitCode.DATAERR);
      this.nextUnit = state.nextUnit;
      process.stderr.write(`stream ${this.name}: resuming at unit ${this.nextUnit} (sink byte ${sink.bytes})\n`);
    } else {
      const head = parseStreamHead(await (await this.get(base)).bytes());
      const q = start === 'live' ? `from=${head.lastBatch}` : `unit=${start === 'beginning' ? head.firstUnit : start}`;
      // A start past the published units waits for them (the server holds each ask up to waitMs).
      let first = await this.batches(`${base}/batches?${q}&waitMs=${BATCH_WAIT_MS}`);
      while (first.length === 0 && !this.lastEnded) first = await this.batches(`${base}/batches?${q}&waitMs=${BATCH_WAIT_MS}`);
      if (first.length === 0) throw new FleetcastError('NO_BATCH', `stream ${this.name} ended before unit ${start}`, ExitCode.DATAERR);
      this.cur = this.anchor(first[0]);
      const wanted = start === 'live' ? this.cur.first : start === 'beginning' ? head.firstUnit : Number(start);
      if (this.cur.first > wanted) throw new FleetcastError('GONE', `stream ${this.name}: units ${wanted} to ${this.cur.first - 1} were dropped (retention) before they could be fetched`, ExitCode.UNAVAILABLE);
      this.nextUnit = wanted;
      // Inside a batch every unit but the last is full, so the byte is known once the batch covering the unit is.
      const at = coversUnit(this.cur, wanted) ? ` (stream byte ${this.cur.offset + (wanted - this.cur.first) * this.cur.unitSize})` : ', once it is published';
      process.stderr.write(`stream ${this.name}: starting at unit ${wanted}${at}\n`);
      await this.deliver(sink, base);
      for (const b of first.slice(1)) await this.take(b, sink, base);
    }
    await this.deliver(sink, base);
    while (!this.cur.final) {
      // Compact batches (docs/protocol.md): each after the one before it, the first after ours.
      const q = `${base}/batches?from=${this.cur.batch + 1}&waitMs=${BATCH_WAIT_MS}`;
      let next: unknown[];
      try {
        next = await this.batches(this.compact ? `${q}&after=${this.cur.hash}` : q);
      } catch (err) {
        if (!this.compact || !refusedAfter(err)) throw err;
        this.compact = false; // a server from before 2026-12-03: whole batches
        continue;
      }
      for (const b of next) await this.take(b, sink, base);
    }
    process.stderr.write(`stream ${this.name}: ended; ${formatBytes(sink.bytes)} in the sink\n`);
  }

  /** The first batch of a fresh start: trusted for its signature alone (history before it is not checked). */
  private anchor(o: unknown): StreamBatch {
    const b = batchFromObject(o, this.trusted);
    if (b.stream !== this.name) throw new FleetcastError('BAD_BATCH', `the server answered a batch of stream ${b.stream} for ${this.name}`, ExitCode.DATAERR);
    return b;
  }

  /** A following batch: verified, and refused unless it extends the chain. */
  private async take(o: unknown, sink: Sink, base: string): Promise<void> {
    const b = isCompactBatch(o) ? batchFromCompact(this.cur!, o, this.trusted) : batchFromObject(o, this.trusted);
    checkChain(this.cur!, b);
    this.cur = b;
    await this.deliver(sink, base);
  }

  /** Every unit of the current batch from nextUnit on: fetched, verified, written, recorded. */
  private async deliver(sink: Sink, base: string): Promise<void> {
    const b = this.cur!;
    // Up to FETCH_WINDOW units of the batch in flight; they are written in order as they come.
    const inflight = new Map<number, Promise<Buffer>>();
    while (coversUnit(b, this.nextUnit)) {
      const n = this.nextUnit;
      for (let k = n; k < Math.min(b.first + b.count, n + FETCH_WINDOW); k++) {
        if (inflight.has(k)) continue;
        const p = this.unit(`${base}/units/${k}`, b, k);
        p.catch(() => undefined); // awaited below in order; a unit after a failed one is let go
        inflight.set(k, p);
      }
      const bytes = await inflight.get(n)!;
      inflight.delete(n);
      await sink.write(bytes).catch((err) => {
        throw fromSystemError(err, 'writing the sink');
      });
      this.nextUnit = n + 1;
      if (Date.now() - this.reportedAt >= PROGRESS_EVERY_MS) {
        this.reportedAt = Date.now();
        process.stderr.write(`stream ${this.name}: unit ${n} written, ${formatBytes(sink.bytes)} in the sink, batch ${b.batch} of ${b.time}\n`);
      }
      if (this.statePath) {
        const s: FetchState = { v: 1, stream: b.stream, id: b.id, nextUnit: this.nextUnit, sinkBytes: sink.bytes, batch: b.raw.toString('utf8') };
        await writeAtomic(this.statePath, Buffer.from(JSON.stringify(s) + '\n')).catch((err) => {
          throw fromSystemError(err, `writing --state ${this.statePath}`);
        });
      }
    }
  }

  private async unit(path: string, b: StreamBatch, n: number): Promise<Buffer> {
    const want = b.units[n - b.first];
    const len = streamUnitLength(b, n);
    for (let attempt = 1; ; attempt++) {
      const bytes = await (await this.get(path)).bytes();
      if (bytes.length === len && unitHash(bytes) === want) return bytes;
      process.stderr.write(`stream ${this.name}: unit ${n} from the server does not match its signed hash (${bytes.length} bytes; attempt ${attempt} of ${UNIT_ATTEMPTS})\n`);
      if (attempt >= UNIT_ATTEMPTS) throw new FleetcastError('BAD_UNIT', `stream ${this.name}: unit ${n} from ${this.access.url} failed verification ${UNIT_ATTEMPTS} times: the server's copy is corrupt or forged; nothing of it was written`, ExitCode.DATAERR);
    }
  }

  private async batches(path: string): Promise<unknown[]> {
    const body = (await (await this.get(path)).json()) as { batches?: unknown; ended?: unknown };
    if (!Array.isArray(body.batches)) throw new FleetcastError('BAD_ANSWER', 'the server answered batches without a batches list', ExitCode.UNAVAILABLE);
    this.lastEnded = body.ended === true;
    return body.batches;
  }

  /** GET with retries on network errors and 5xx (100 ms doubling to 5 s); a 4xx is final. */
  private async get(path: string) {
    let delay = RETRY_FIRST_MS;
    for (;;) {
      let res;
      try {
        res = await this.access.request('GET', path);
      } catch (err) {
        if (!this.failing) process.stderr.write(`stream ${this.name}: server unreachable (${(err as Error).message}); retrying\n`);
        this.failing = true;
        await new Promise((r) => setTimeout(r, delay));
        delay = Math.min(RETRY_MAX_MS, delay * 2);
        continue;
      }
      this.failing = false;
      if (res.status === 200) return res;
      let msg = `status ${res.status}`;
      try {
        const e = (await res.json()) as { error?: string; message?: string };
        msg = `${e.error ?? res.status}: ${e.message ?? ''}`;
      } catch {
        /* not JSON */
      }
      if (res.status >= 500) {
        if (!this.failing) process.stderr.write(`stream ${this.name}: the server answered ${msg}; retrying\n`);
        this.failing = true;
        await new Promise((r) => setTimeout(r, delay));
        delay = Math.min(RETRY_MAX_MS, delay * 2);
        continue;
      }
      if (res.status === 401) throw new FleetcastError('UNAUTHORIZED', 'the server refused our token (401): check --token-file', ExitCode.NOPERM);
      throw new FleetcastError('SERVER_REFUSED', `stream ${this.name}: GET ${path.split('?')[0]}: ${msg}`, ExitCode.UNAVAILABLE);
    }
  }
}
