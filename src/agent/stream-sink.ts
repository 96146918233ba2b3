import { promises as fs } from 'node:fs';
import * as net from 'node:net';
import type { Writable } from 'node:stream';
import { ExitCode, FleetcastError, fromSystemError } from '../util/errors';

/** Loaded when an exec sink first starts (issue 16): an agent without one does not pay for child_process. */
// eslint-disable-next-line @typescript-eslint/no-require-imports
const childProcess = (): typeof import('node:child_process') => require('node:child_process') as typeof import('node:child_process');

/**
 * Where `agent --stream` delivers a stream's bytes, in order (docs/streams.md):
 *   FILE         a file; on a resume it is cut back to the bytes the position records
 *   -            stdout
 *   unix:PATH    a unix stream socket someone listens on
 *   exec:CMD     the stdin of `sh -c CMD`, started once
 * Only a file can be cut back: into the others, the unit being written when the last
 * run stopped may be written twice after a restart.
 */
export interface StreamSink {
  readonly kind: 'file' | 'stdout' | 'unix' | 'exec';
  /** Bytes delivered (for a file: its length). */
  bytes: number;
  write(b: Uint8Array): Promise<void>;
  /** Make what was written durable (a file: fdatasync; the others: nothing to do). */
  sync(): Promise<void>;
  close(): Promise<void>;
}

/** A sink spec's error, or null: the command line checks it before anything starts. */
export function checkSinkSpec(spec: string): string | null {
  if (spec === '') return 'must not be empty';
  if (spec.startsWith('unix:') && spec.length === 5) return 'unix: needs a socket path';
  if (spec.startsWith('exec:') && spec.trim().length === 5) return 'exec: needs a command';
  return null;
}

export async function openStreamSink(spec: string, resumeAt: number | null): Promise<StreamSink> {
  if (spec === '-') return streamSink('stdout', process.stdout, resumeAt ?? 0, async () => undefined);
  if (spec.startsWith('unix:')) {
    const p = spec.slice(5);
    const sock = await new Promise<net.Socket>((resolve, reject) => {
      const s = net.connect(p, () => resolve(s));
      s.once('error', (err) => reject(fromSystemError(err, `connecting to the sink unix:${p}`)));
    });
    sock.on('error', () => undefined); // a write reports it
    return streamSink('unix', sock, resumeAt ?? 0, () => new Promise((r) => sock.end(r)));
  }
  if (spec.startsWith('exec:')) {
    const cmd = spec.slice(5);
    const child = childProcess().spawn('/bin/sh', ['-c', cmd], { stdio: ['pipe', 'inherit', 'inherit'] });
    const exited = new Promise<void>((resolve) => child.once('close', () => resolve()));
    child.once('error', () => undefined);
    child.stdin.on('error', () => undefined);
    return streamSink('exec', child.stdin, resumeAt ?? 0, async () => {
      child.stdin.end();
      await exited;
    });
  }
  const fh = await fs.open(spec, resumeAt === null ? 'w' : 'r+').catch((err) => {
    throw fromSystemError(err, `opening the sink ${spec}`);
  });
  if (resumeAt !== null) {
    const size = (await fh.stat()).size;
    if (size < resumeAt) {
      await fh.close();
      throw new FleetcastError('SINK_SHORT', `the sink ${spec} has ${size} bytes, fewer than the ${resumeAt} its position records: was it replaced? Remove the stream's position file to start over`, ExitCode.DATAERR);
    }
    // Bytes past the position are a unit written when the last run stopped, not yet recorded: written again.
    await fh.truncate(resumeAt);
  }
  const s: StreamSink = {
    kind: 'file',
    bytes: resumeAt ?? 0,
    async write(b) {
      let off = 0;
      while (off < b.length) off += (await fh.write(b, off, b.length - off, s.bytes + off)).bytesWritten;
      s.bytes += b.length;
    },
    sync: () => fh.datasync(),
    close: () => fh.close(),
  };
  return s;
}

function streamSink(kind: StreamSink['kind'], w: Writable, bytes: number, close: () => Promise<void>): StreamSink {
  const s: StreamSink = {
    kind,
    bytes,
    write: (b) =>
      new Promise<void>((resolve, reject) => {
        if (w.destroyed || w.writableEnded) return reject(new FleetcastError('SINK_CLOSED', `the ${kind} sink was closed by its reader`, ExitCode.IOERR));
        w.write(b, (err) => {
          if (err) return reject(new FleetcastError('SINK_CLOSED', `the ${kind} sink refused bytes: ${err.message}`, ExitCode.IOERR));
          s.bytes += b.length;
          resolve();
        });
      }),
    sync: async () => undefined,
    close,
  };
  return s;
}
