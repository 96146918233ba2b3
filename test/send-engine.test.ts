import test from 'ava';
import { randomBytes } from 'node:crypto';
import { AGENT_DEFAULTS } from '../src/agent/core/defaults';
import { emptyStats } from '../src/agent/core/repair-flow';
import { SendEngine } from '../src/agent/core/send-engine';
import { decodePacket, PacketType } from '../src/wire/packet';

/**
 * The send engine's datagram arenas (issue 16): with reuseSentDatagrams on (the native
 * transport copies in sendmmsg) an arena whose datagrams all left is written again, so
 * a long transfer keeps a few arenas instead of leaving each one to the GC; datagrams
 * not yet sent are never overwritten. Off (node:dgram holds datagrams until sent), every
 * arena is new.
 */
const FB = 1400;
const RELEASE = randomBytes(16);

function engine(reuse: boolean) {
  const e = new SendEngine(1e12, 1e9, 0, { sender: 7, releaseId: RELEASE, fragmentBytes: FB }, emptyStats(), { copiesLeft: () => {}, repairSent: () => {} });
  e.reuseSentDatagrams(reuse);
  return e;
}

/**
 * Queue `units` units of copies, `burst` units at a time, each fragment's payload filled
 * with a byte of its own; after each burst a few send rounds where the transport takes
 * `accept(n)` of a batch of n; then everything is drained. Every datagram the transport
 * takes is decoded: it must be the next one queued, with its bytes.
 */
function run(e: SendEngine, units: number, burst: number, accept: (n: number) => number) {
  const arenas = new Set<ArrayBufferLike>();
  const fc = 16;
  let now = 0;
  let sent = 0;
  const bad: string[] = [];
  const round = (take: (n: number) => number): boolean => {
    now += 2;
    const t = e.pollTransmit(now);
    if (!t) return false;
    const n = Math.min(t.datagrams.length, take(t.datagrams.length));
    // What the transport takes must be the next fragments queued, in order, intact.
    for (const d of t.datagrams.slice(0, n)) {
      arenas.add(d.buffer);
      const r = decodePacket(d);
      const seq = sent++;
      if (!r.ok || r.packet.type !== PacketType.DATA) {
        bad.push(`datagram ${seq}: undecodable`);
        continue;
      }
      const p = r.packet;
      if (p.unit * fc + p.fragment !== seq) bad.push(`datagram ${seq}: holds unit ${p.unit} fragment ${p.fragment} (overwritten)`);
      else if (p.payload.some((b) => b !== (seq & 0xff))) bad.push(`datagram ${seq}: payload overwritten`);
    }
    e.transmitted(t, n, now);
    if (n < t.datagrams.length) e.writable(now);
    return true;
  };
  for (let u = 0; u < units; u += burst) {
    for (let v = u; v < Math.min(units, u + burst); v++) for (let f = 0; f < fc; f++) e.queueLan(v, f, fc, new Uint8Array(FB).fill((v * fc + f) & 0xff), false);
    for (let i = 0; i < 4; i++) round(accept);
  }
  while (round((n) => n)) {
    /* drain */
  }
  return { arenas: arenas.size, sent, bad: bad.slice(0, 5) };
}

test('send engine: emptied arenas are reused when the transport copies on send; a long transfer keeps a handful', (t) => {
  const units = 400; // 400 x 16 x ~1.4 KB: ~9 MiB of datagrams, ~36 arenas' worth
  const on = run(engine(true), units, 1, (n) => n);
  const off = run(engine(false), units, 1, (n) => n);
  t.deepEqual(on.bad, []);
  t.deepEqual(off.bad, []);
  t.is(on.sent, units * 16);
  t.is(off.sent, units * 16);
  t.true(off.arenas >= 30, `without reuse: ${off.arenas} arenas`);
  t.true(on.arenas <= AGENT_DEFAULTS.datagramArenasFree + 2, `with reuse: ${on.arenas} arenas for what took ${off.arenas}`);
});

test('send engine: datagrams the transport refused are not overwritten while they wait, with reuse on', (t) => {
  // Bursts of 20 units (~2 arenas), the kernel taking a third of each batch: a backlog
  // over several arenas builds up and must keep its bytes while new arenas fill.
  const r = run(engine(true), 400, 20, (n) => Math.floor(n / 3));
  t.deepEqual(r.bad, []);
  t.is(r.sent, 400 * 16);
});

test('send engine: BATCH packets go ahead of repairs and NACKs, in the order they were queued (their sequence numbers)', (t) => {
  const e = engine(false);
  const rid = RELEASE;
  const ctl = (type: number, tag: number) => {
    const p = new Uint8Array(64);
    p.set([0x46, 0x43, 1, type]);
    p.set(rid, 12);
    p[63] = tag;
    return p;
  };
  e.queueLan(0, 0, 1, new Uint8Array(FB).fill(1), true); // a repair, queued first
  e.queueControl(ctl(PacketType.NACK, 1));
  e.queueControl(ctl(PacketType.BATCH, 2), true);
  e.queueControl(ctl(PacketType.BATCH, 3), true);
  e.queueControl(ctl(PacketType.NACK, 4));
  e.queueControl(ctl(PacketType.BATCH, 5), true);
  const out: string[] = [];
  for (let now = 1, tx = e.pollTransmit(now); tx; tx = e.pollTransmit(++now)) {
    for (const d of tx.datagrams) out.push(d[3] === PacketType.DATA ? 'repair' : `${d[3] === PacketType.BATCH ? 'batch' : 'nack'} ${d[63]}`);
    e.transmitted(tx, tx.datagrams.length, now);
  }
  t.deepEqual(out, ['batch 2', 'batch 3', 'batch 5', 'repair', 'nack 1', 'nack 4']);
});
