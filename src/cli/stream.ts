import { promises as fs } from 'node:fs';
import { loadPrivateKey } from '../release/keys';
import { parseRetention, StreamPublisher } from '../release/stream-publish';
import { ExitCode, FleetcastError, fromSystemError } from '../util/errors';
import { Command, out } from './command';
import { formatBytes } from './progress';
import { streamFetch } from './stream-fetch';

/**
 * `fleetcast stream publish|fetch` (docs/protocol.md, "Streams (1.4)"; issue 19, first
 * slice): publishing a live stream into the store, and a plain HTTP receiver. Agents do
 * not take streams yet: no LAN multicast of stream units, no allocation by the server.
 */
const publish: Command = {
  spec: {
    name: 'stream publish',
    summary:
      'Publish a live stream: read stdin (or follow a growing file), cut it into units, and append each unit and a signed batch naming it to the store, where fleetcast server serves them. Ends with a signed end marker at the end of stdin (in follow mode, on SIGTERM or SIGINT). Run again with the same NAME and key to continue a stream that was interrupted.',
    usage: 'stream publish NAME --key KEYFILE --store DIR [--from FILE|-] [--unit-size BYTES] [--flush-ms MS] [--retain UNITS|DURATION]',
    positionals: [{ name: 'NAME', required: true }],
    flags: {
      key: { type: 'string', arg: 'KEYFILE', help: 'Ed25519 private key (the release key, from fleetcast keygen or init)', required: true },
      store: { type: 'string', arg: 'DIR', help: "the server's store directory (the stream goes to DIR/streams/NAME)", required: true },
      from: { type: 'string', arg: 'FILE|-', help: '- reads stdin to its end; FILE is followed as it grows (from the byte the stream has reached) until SIGTERM or SIGINT', default: '-' },
      'unit-size': { type: 'number', arg: 'BYTES', help: 'unit size in bytes (a continued stream keeps its own)', integer: true, min: 4096, max: 64 * 1024 * 1024 },
      'flush-ms': { type: 'number', arg: 'MS', help: 'close a unit that is not full this long after its first byte came', default: 1000, integer: true, min: 1, max: 3_600_000 },
      retain: { type: 'string', arg: 'UNITS|DURATION', help: 'keep only the last UNITS units, or the batches of the last DURATION (90s, 30m, 2h, 1d); older units are deleted (default: keep all)', check: (s) => (parseRetention(s) ? null : `must be a unit count (500) or a duration (90s, 30m, 2h, 1d), not ${JSON.stringify(s)}`) },
    },
  },
  async run(a) {
    const name = a.positionals[0];
    const key = await loadPrivateKey(String(a.flags.key));
    const from = String(a.flags.from);
    const pub = await StreamPublisher.open(String(a.flags.store), name, key, {
      unitSize: a.flags['unit-size'] as number | undefined,
      flushMs: a.flags['flush-ms'] as number,
      retain: a.flags.retain ? parseRetention(String(a.flags.retain)) : null,
    });
    const stop = new AbortController();
    const onSignal = () => stop.abort();
    process.on('SIGTERM', onSignal);
    process.on('SIGINT', onSignal);
    const started = pub.position;
    process.stderr.write(`stream ${name}: ${started.batch === 0 ? 'new stream' : `continuing at batch ${started.batch}, unit ${started.unit}, byte ${started.bytes}`} (id ${pub.head.id}, units of ${formatBytes(pub.unitSize)})\n`);
    const progress = setInterval(() => process.stderr.write(`stream ${name}: ${formatBytes(pub.publishedBytes)} in ${pub.head.nextUnit} units, ${pub.head.lastBatch + 1} batches, ${pub.retainedUnits} units retained\n`), 5000);
    progress.unref();
    let ended = false;
    try {
      const source = from === '-' ? stdinChunks(stop.signal) : followFile(from, started.bytes, stop.signal);
      for await (const chunk of source) await pub.push(chunk);
      // stdin: its end ends the stream; a signal only stops this run. Follow mode ends on the signal.
      if (from !== '-' || !stop.signal.aborted) {
        await pub.end();
        ended = true;
      } else {
        await pub.flush();
      }
    } finally {
      clearInterval(progress);
      process.off('SIGTERM', onSignal);
      process.off('SIGINT', onSignal);
      await pub.close();
    }
    const h = pub.head;
    process.stderr.write(`stream ${name}: ${ended ? 'ended' : 'stopped (run again to continue it)'} after ${formatBytes(h.bytes)} in ${h.nextUnit} units and ${h.lastBatch + 1} batches\n`);
    out(h.id);
    return ExitCode.OK;
  },
};

/** stdin's chunks until its end, or until `signal` (then what was read is kept, the rest is left unread). */
async function* stdinChunks(signal: AbortSignal): AsyncGenerator<Buffer> {
  const input = process.stdin;
  const onAbort = () => input.destroy();
  signal.addEventListener('abort', onAbort, { once: true });
  try {
    for await (const c of input) yield c as Buffer;
  } catch (err) {
    if (!signal.aborted) throw fromSystemError(err, 'reading stdin');
  } finally {
    signal.removeEventListener('abort', onAbort);
  }
}

/** How often a followed file is checked for new bytes. */
const FOLLOW_POLL_MS = 50;

/** The bytes of `file` from `start` on, as it grows (tail -f), until `signal`; then what is there is read to its end. */
async function* followFile(file: string, start: number, signal: AbortSignal): AsyncGenerator<Buffer> {
  const fh = await fs.open(file, 'r').catch((err) => {
    throw fromSystemError(err, `opening --from ${file}`);
  });
  try {
    const size = (await fh.stat()).size;
    if (size < start) throw new FleetcastError('SHRANK', `--from ${file} has ${size} bytes, but the stream already published ${start} from it: is it another file?`, ExitCode.DATAERR);
    let pos = start;
    const buf = Buffer.allocUnsafe(1 << 20);
    for (;;) {
      const { bytesRead } = await fh.read(buf, 0, buf.length, pos);
      if (bytesRead > 0) {
        pos += bytesRead;
        yield Buffer.from(buf.subarray(0, bytesRead));
        continue;
      }
      if (signal.aborted) return;
      if ((await fh.stat()).size < pos) throw new FleetcastError('SHRANK', `--from ${file} was truncated below the ${pos} bytes already published`, ExitCode.DATAERR);
      await new Promise<void>((resolve) => {
        const t = setTimeout(done, FOLLOW_POLL_MS);
        signal.addEventListener('abort', done, { once: true });
        function done() {
          clearTimeout(t);
          signal.removeEventListener('abort', done);
          resolve();
        }
      });
    }
  } finally {
    await fh.close();
  }
}

/** `fleetcast stream ...`: its subcommands (main.ts dispatches on the word after `stream`). */
export const stream: Command & { subcommands: Record<string, Command> } = {
  spec: {
    name: 'stream',
    summary: 'Publish a live stream (stream publish) or receive one over HTTP (stream fetch). Agents do not share streams on the LAN yet.',
    usage: 'stream publish|fetch ...',
    flags: {},
  },
  subcommands: { publish, fetch: streamFetch },
  async run() {
    return ExitCode.USAGE;
  },
};
