import { generateKeyPairSync } from 'node:crypto';
import { MAX_ORIGINS, originUrlProblem, parseDistribution } from '../../src/release/distribution';
import { ConfigError, resolveFlags } from '../../src/cli/args';
import { agent, server } from '../../src/cli/commands';
import { parseConfig } from '../../src/config/config';
import { parseChannelHead } from '../../src/release/channels';
import { parseFleetMemory } from '../../src/server/fleet-memory';
import { buildGeneralQuery, parseIgmpPacket } from '../../src/net/igmp';
import { parseManifest, signManifest } from '../../src/release/manifest';
import { parseFetchState } from '../../src/cli/stream-fetch';
import { batchFromCompact, checkChain, parseBatch, parseStreamHead, signBatch, StreamBatch, StreamBatchBody, validateBatchBody, ZERO_HASH } from '../../src/release/stream-manifest';
import { decodeBitmapFile, decodeJournal, encodeBitmapFile, encodeJournalHeader, encodeJournalRecords } from '../../src/storage/bitmap-file';
import { FleetcastError } from '../../src/util/errors';
import { parseBody, SCHEMAS } from '../../src/wire/http-bodies';
import { MapMirror } from '../../src/wire/map-mirror';
import { parseRange } from '../../src/server/server';
import { IdentityBindings } from '../../src/server/guard';
import { parsePollAnswer, parseWindow } from '../../src/wire/rollout';
import { createRollout, parseRollout, parseWaves, report } from '../../src/server/rollout';
import { parseInstallRecord } from '../../src/agent/install';
import { ApiError, jsonObject, parsePollBody, parseStartBody } from '../../src/server/rollout-bodies';
import { bodyChannel, keyedRef } from '../../src/server/cluster-keys';
import { CHANNEL_RE } from '../../src/release/channels';
import { parseStreamBeat, parseStreamBeatAnswer } from '../../src/wire/stream-control';
import { parseStreamPosition } from '../../src/agent/stream-disk';
import { StreamAllocation } from '../../src/server/stream-alloc';
import { BatchPacket, decodeBatchPacket, encodeBatchPacket } from '../../src/wire/stream-packet';
import { BatchFollower, FollowerHost } from '../../src/agent/stream-follow';
import { PeerTable } from '../../src/agent/core/peers';
import { LanCore } from '../../src/agent/core/lan-core';
import { HeldDatagrams, HOLD_MAX_DATAGRAMS } from '../../src/agent/core/held-datagrams';
import { sealControl } from '../../src/wire/auth';
import { silentLogger } from '../../src/util/log';
import { AUTH_TRAILER_BYTES, decodePacket, encodeAnnounce, encodeData, encodeFeedback, encodeNack, PacketType } from '../../src/wire/packet';

/**
 * Fuzz targets: every parser of untrusted bytes. A target throws only when the
 * parser broke its contract (threw something other than its documented error,
 * or accepted bytes that do not round-trip).
 */
export interface Target {
  name: string;
  seeds: Uint8Array[];
  run(input: Uint8Array): void;
  /** Share of the CI case count to run (slow parsers); `npm run fuzz` runs them all. */
  ciShare?: number;
}

/** xorshift32: deterministic, so a failing case can be replayed from its seed. */
export function prng(seed: number): () => number {
  let x = seed >>> 0 || 0x9e3779b9;
  return () => {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    return x / 0x100000000;
  };
}

export function mutate(seed: Uint8Array, rnd: () => number): Uint8Array {
  const r = (n: number) => Math.floor(rnd() * n);
  let b = Uint8Array.from(seed);
  const ops = 1 + r(4);
  for (let k = 0; k < ops; k++) {
    switch (r(7)) {
      case 0: // flip a bit
        if (b.length) b[r(b.length)] ^= 1 << r(8);
        break;
      case 1: // set a byte to an interesting value
        if (b.length) b[r(b.length)] = [0, 1, 0x7f, 0x80, 0xff, 0x30, 0x22][r(7)];
        break;
      case 2: // truncate
        b = b.subarray(0, r(b.length + 1));
        break;
      case 3: {
        // extend with random bytes
        const ext = new Uint8Array(r(64)).map(() => r(256));
        const n = new Uint8Array(b.length + ext.length);
        n.set(b);
        n.set(ext, b.length);
        b = n;
        break;
      }
      case 4: {
        // overwrite a 16/32-bit field with an extreme value
        if (b.length >= 4) {
          const at = r(b.length - 3);
          new DataView(b.buffer, b.byteOffset, b.byteLength).setUint32(at, [0, 0xffffffff, 0x7fffffff, 0x10000, 1][r(5)]);
        }
        break;
      }
      case 5: // duplicate a slice
        if (b.length > 2) {
          const a = r(b.length);
          const c = a + r(b.length - a);
          const n = new Uint8Array(b.length + (c - a));
          n.set(b.subarray(0, c));
          n.set(b.subarray(a, c), c);
          n.set(b.subarray(c), c + (c - a));
          b = n;
        }
        break;
      default: // random bytes
        b = new Uint8Array(r(200)).map(() => r(256));
    }
  }
  return b;
}

const rid = new Uint8Array(16).map((_, i) => i * 7);

const packet: Target = {
  name: 'packet',
  seeds: [
    encodeData({ sender: 1, releaseId: rid, repair: false, unit: 3, fragment: 1, fragmentCount: 3, fragmentBytes: 64, payload: new Uint8Array(64).fill(5) }),
    encodeData({ sender: 1, releaseId: rid, repair: true, unit: 3, fragment: 2, fragmentCount: 3, fragmentBytes: 64, payload: new Uint8Array(10) }),
    encodeNack({ sender: 2, releaseId: rid, unit: 9, fragmentCount: 20, fragmentBytes: 1400, missing: new Uint8Array([0xff, 0x0f, 0xa0]) }),
    encodeAnnounce({ sender: 3, releaseId: rid, firstUnit: 0, unitCount: 13, complete: false, have: new Uint8Array([0xff, 0xf8]) }),
    encodeFeedback({ sender: 4, releaseId: rid, receivedDatagrams: 0xfffffff0, receivedBytes: 123456, echoSeq: 1n << 60n, echoHoldMs: 17 }),
    encodeFeedback({ sender: 4, releaseId: rid, receivedDatagrams: 9, receivedBytes: 9000, echoSeq: 5n, echoHoldMs: 2, atEcho: { datagrams: 8, bytes: 8000 } }),
  ],
  run(input) {
    const r = decodePacket(input);
    if (!r.ok) return;
    // Anything accepted must re-encode to the same bytes.
    const p = r.packet;
    const again =
      p.type === PacketType.DATA ? encodeData(p) : p.type === PacketType.NACK ? encodeNack(p) : p.type === PacketType.ANNOUNCE ? encodeAnnounce(p) : encodeFeedback(p);
    // Control packets carry an authentication trailer the codec frames but does not make.
    if (p.type !== PacketType.DATA) again.set(input.subarray(input.length - AUTH_TRAILER_BYTES), again.length - AUTH_TRAILER_BYTES);
    if (Buffer.compare(Buffer.from(again), Buffer.from(input)) !== 0) throw new Error('accepted packet does not round-trip');
  },
};

/**
 * The LAN core fed arbitrary datagrams: one core before its group key (it holds
 * everything), one with it (copies from senders not heard are held). Never throws, and
 * the hold stays within its bounds. Seeds: a sender's sealed ANNOUNCE and NACK and its
 * copies, so that mutations reach the MAC, replay and hold paths.
 */
const lanKey = Buffer.alloc(32, 9);
let lanNow = 1_000_000;
const lanManifest = { idBytes: rid, size: 3 * 4096 - 10, unitSize: 4096, unitCount: 3, units: ['a'.repeat(64), 'b'.repeat(64), 'c'.repeat(64)] };
const lanCore = (keyed: boolean) => {
  const c = new LanCore({ manifest: lanManifest, member: 'f', group: 'g', senderId: 77, fragmentBytes: 1024, have: new Uint8Array(1), rateBytesPerSec: 1e6, crossRateBytesPerSec: 1e6, controlSeqStart: 1n, random: prng(3), holdUnheard: true }, lanNow);
  if (keyed) c.setSplitMap({ members: [{ id: 'f', verifiedUnits: 0, complete: false, address: '10.0.0.1' }], holders: [-1, -1, -1], groupComplete: false, groupKey: lanKey.toString('base64') }, lanNow);
  return c;
};
const lanCores = [lanCore(false), lanCore(true)];
const lanDatagram: Target = {
  name: 'lan-datagram',
  seeds: [
    encodeData({ sender: 3, releaseId: rid, repair: false, unit: 1, fragment: 0, fragmentCount: 4, fragmentBytes: 1024, payload: new Uint8Array(1024).fill(1) }),
    encodeData({ sender: 3, releaseId: rid, repair: true, unit: 2, fragment: 3, fragmentCount: 4, fragmentBytes: 1024, payload: new Uint8Array(4096 - 10 - 3 * 1024) }),
    sealControl(encodeAnnounce({ sender: 3, releaseId: rid, firstUnit: 0, unitCount: 3, complete: false, have: new Uint8Array([0xe0]) }), lanKey, 1n << 40n),
    sealControl(encodeNack({ sender: 4, releaseId: rid, unit: 1, fragmentCount: 4, fragmentBytes: 1024, missing: new Uint8Array([0xf0]) }), lanKey, 1n << 41n),
  ],
  ciShare: 0.5,
  run(input) {
    lanNow += 3; // holds expire as cases go by
    for (const c of lanCores) {
      c.handleDatagram(input, lanNow);
      for (let tr = c.pollTransmit(lanNow); tr; tr = c.pollTransmit(lanNow)) c.transmitted(tr, tr.datagrams.length, lanNow);
      for (let e = c.pollEvent(); e; e = c.pollEvent());
      if ((c.pollTimeout() ?? Infinity) <= lanNow) c.handleTimeout(lanNow);
      const held = (c as unknown as { held: HeldDatagrams }).held;
      if (held.size > HOLD_MAX_DATAGRAMS) throw new Error(`${held.size} datagrams held`);
    }
  },
};

const keys = generateKeyPairSync('ed25519');
const hex = (c: string) => c.repeat(64);
const manifestSeed = signManifest(
  { v: 1, name: 'fw.bin', size: 9000, unitSize: 4096, sha256: hex('a'), units: [hex('b'), hex('c'), hex('d')], created: '2026-01-01T00:00:00Z' },
  keys.privateKey,
).raw;

const manifest: Target = {
  name: 'manifest',
  seeds: [manifestSeed, Buffer.from('{"fleetcast":"manifest","v":1,"body":"e30=","key":"","sig":""}')],
  run(input) {
    try {
      parseManifest(input, [keys.publicKey]);
    } catch (err) {
      if (!(err instanceof FleetcastError)) throw err;
    }
  },
};

const batchBody: StreamBatchBody = { v: 1, stream: 'cam', id: 'ab'.repeat(16), batch: 0, first: 0, offset: 0, count: 2, unitSize: 4096, units: [hex('b'), hex('c')], lastLength: 100, prev: ZERO_HASH, time: '2026-01-01T00:00:00Z' };
const batchSeed = signBatch(batchBody, keys.privateKey);

/** Stream batch files, their bodies (unsigned, to reach the validator) and stream heads (docs/protocol.md, "Streams (1.4)"). */
const streamBatch: Target = {
  name: 'stream-batch',
  seeds: [
    batchSeed.raw,
    Buffer.from(JSON.stringify(batchBody)),
    Buffer.from(JSON.stringify({ ...batchBody, batch: 1, first: 2, offset: 8292, prev: hex('e'), final: true })),
    Buffer.from(JSON.stringify({ v: 1, stream: 'cam', id: 'ab'.repeat(16), nextUnit: 2, sinkBytes: 8192, batch: batchSeed.raw.toString() })),
    Buffer.from(JSON.stringify({ u: Buffer.alloc(32, 9).toString('base64'), l: 100, t: 1_767_225_600_000, s: Buffer.alloc(64, 1).toString('base64') })),
    Buffer.from(JSON.stringify({ u: '', t: 1_767_225_600_000, s: Buffer.alloc(64, 1).toString('base64'), f: true })),
    Buffer.from(JSON.stringify({ stream: 'cam', id: 'ab'.repeat(16), unitSize: 4096, firstUnit: 0, firstBatch: 0, lastBatch: 3, nextUnit: 8, bytes: 32768, time: '2026-01-01T00:00:00Z', ended: false })),
  ],
  run(input) {
    const expected = (err: unknown) => {
      if (!(err instanceof FleetcastError)) throw err;
    };
    try {
      const b = parseBatch(input, [keys.publicKey]);
      checkChain(batchSeed, b);
    } catch (err) {
      expected(err);
    }
    let json: unknown;
    try {
      json = JSON.parse(Buffer.from(input).toString('utf8'));
    } catch {
      return;
    }
    try {
      const body = validateBatchBody(json);
      if (body.units.length !== body.count) throw new Error('accepted a body whose units do not match count');
      checkChain(batchSeed, { ...body, hash: hex('0') });
    } catch (err) {
      expected(err);
    }
    try {
      parseStreamHead(Buffer.from(input));
    } catch (err) {
      expected(err);
    }
    // A compact batch after batch 0 (docs/protocol.md, "Compact batches"): rebuilt, then verified.
    try {
      const b = batchFromCompact(batchSeed, json, [keys.publicKey]);
      if (b.batch !== 1 || b.prev !== batchSeed.hash) throw new Error('a compact batch rebuilt out of the chain');
    } catch (err) {
      expected(err);
    }
    // A stream fetch --state file: its batch is verified as a batch file.
    try {
      const s = parseFetchState(Buffer.from(input).toString('utf8'), 'state');
      parseBatch(Buffer.from(s.batch), [keys.publicKey]);
    } catch (err) {
      expected(err);
    }
  },
};

/** BATCH packets (docs/protocol.md, "Batches on the LAN"): the codec, then a batch follower that holds batch 0 takes them. */
const batch1 = signBatch({ ...batchBody, batch: 1, first: 2, offset: 4196, count: 1, units: [hex('d')], prev: batchSeed.hash }, keys.privateKey);
const streamRid = Buffer.from(batchBody.id, 'hex');
const batchKey = Buffer.alloc(32, 7);
const batchPacket: Target = {
  name: 'batch-packet',
  seeds: [
    sealControl(encodeBatchPacket({ sender: 1, releaseId: streamRid, batch: 1, file: batch1.raw }), batchKey, 5n),
    sealControl(encodeBatchPacket({ sender: 1, releaseId: streamRid, batch: 0, file: batchSeed.raw }), batchKey, 6n),
    encodeBatchPacket({ sender: 9, releaseId: streamRid, batch: 7, file: batch1.raw }),
    // Forwarded by a gateway from another site's member 3 ("Batches across sites").
    sealControl(encodeBatchPacket({ sender: 9, releaseId: streamRid, batch: 1, origin: 3, file: batch1.raw }), batchKey, 7n),
  ],
  run(input) {
    const r = decodeBatchPacket(input);
    if (!r.ok) return;
    const again = encodeBatchPacket(r.packet);
    again.set(input.subarray(input.length - AUTH_TRAILER_BYTES), again.length - AUTH_TRAILER_BYTES);
    if (Buffer.compare(Buffer.from(again), Buffer.from(input)) !== 0) throw new Error('accepted BATCH packet does not round-trip');
    // The MAC (its trailer): taken exactly when it is the group key's over the bytes before it.
    const peers = new PeerTable();
    peers.groupKey = batchKey;
    const macOk = Buffer.from(sealControl(Uint8Array.from(input), batchKey, r.packet.auth!.seq)).equals(Buffer.from(input));
    if ((peers.admitBatch(r.packet.sender, r.packet.auth!) === null) !== macOk) throw new Error(`a BATCH packet whose MAC is ${macOk ? 'good' : 'bad'} was ${macOk ? 'dropped' : 'taken'}`);
    // The follower behind that check, fed every decoded packet (so that mutated batches reach it).
    let last = batchSeed;
    // Half the inputs as if by unicast from another site (a gateway forwards what it takes).
    const across = input.length % 2 === 0;
    const forwarded: number[] = [];
    const core = {
      onBatchPacket: null as null | ((p: BatchPacket, now: number, across: boolean) => void),
      window: { unitCount: 2 },
      relayBatch: () => false,
      forwardBatch: (origin: number) => forwarded.push(origin) > 0,
    };
    const host = { http: null, core, trusted: [keys.publicKey], log: silentLogger, last: () => last, take: (b: StreamBatch) => (checkChain(last, b), (last = b)), finished: () => false, kick: () => undefined } as unknown as FollowerHost;
    const f = new BatchFollower(host, 5);
    core.onBatchPacket!(r.packet, 0, across); // never throws: a bad batch is counted, not fatal
    f.close();
    if (last !== batchSeed && (last.batch !== 1 || last.hash !== batch1.hash)) throw new Error(`took batch ${last.batch} that is not the one signed after batch 0`);
    if (f.passive && (r.packet.origin ?? r.packet.sender) >= 5) throw new Error('a larger sender (or origin) id made the follower passive');
    if (f.counts.fromLan + f.counts.refused + f.counts.limited > 1) throw new Error('one packet counted twice');
    if (forwarded.length > (across ? 1 : 0) || (forwarded.length && (forwarded[0] !== r.packet.sender || f.counts.refused + f.counts.limited > 0))) {
      throw new Error(`forwarded ${JSON.stringify(forwarded)} (by unicast: ${across}; refused ${f.counts.refused}, limited ${f.counts.limited})`);
    }
  },
};

/** The stream heartbeat's body (server side) and answer (agent side), and an agent's stream position file (docs/protocol.md, "Streams on the LAN"). */
const streamAlloc = new StreamAllocation();
const streamHead = { stream: 'cam', id: 'ab'.repeat(16), unitSize: 4096, firstUnit: 2, firstBatch: 1, lastBatch: 3, nextUnit: 40, bytes: 163840, time: '2026-01-01T00:00:00Z', ended: false };
/** An answer an agent holds, which lean answers (docs/protocol.md, "Lean answers") complete from. */
const streamKept = parseStreamBeatAnswer(Buffer.from(JSON.stringify({ v: 1, heartbeatMs: 1000, groupKey: Buffer.alloc(32, 7).toString('base64'), firstUnit: 2, nextUnit: 40, ended: false, lease: { units: [] }, members: [{ id: 'm1', group: 'g1', address: '10.0.0.5', dataPort: 4000, role: 'gateway', verifiedUnits: 3, complete: false }], holdersFrom: 38, holders: [0, -1], copyTo: [], mapToken: 'AAAAAAAAAAAAAAAA' })));
const streamControl: Target = {
  name: 'stream-control',
  seeds: [
    Buffer.from(JSON.stringify({ v: 1, group: 'g1', member: 'm1', address: '10.0.0.5', dataPort: 4000, haveFrom: 3, have: '/wA=', receipts: [4, 5], receiptAgesMs: [1, 2], fetching: [6], fetchingBytes: [100], lease: 4, join: true })),
    Buffer.from(JSON.stringify({ v: 1, group: 'g1', member: 'm2', wideGroup: 'w', haveFrom: 0, have: '' })),
    Buffer.from(JSON.stringify({ v: 1, group: 'g1', member: 'm3', wideGroup: 'w', haveFrom: 0, have: '', mapToken: 'AAAAAAAAAAAAAAAA' })),
    Buffer.from(JSON.stringify({ v: 1, group: 'g1', member: 'm4', wideGroup: 'w', haveFrom: 0, have: '', lease: 2, mapToken: '', lean: true })),
    Buffer.from(JSON.stringify({ v: 1, lease: { units: [39] }, holdersFrom: 38, holders: [0, -1] })),
    Buffer.from(JSON.stringify({ v: 1, heartbeatMs: 1000, firstUnit: 2, nextUnit: 40, ended: false, lease: { units: [], retryAfterMs: 0 }, holdersFrom: 38, holders: [0, -1], mapToken: 'AAAAAAAAAAAAAAAA' })),
    Buffer.from(JSON.stringify({ v: 1, heartbeatMs: 1000, groupKey: Buffer.alloc(32, 7).toString('base64'), firstUnit: 2, nextUnit: 40, ended: false, lease: { units: [38, 39], retryAfterMs: 0 }, members: [{ id: 'm1', group: 'g1', address: '10.0.0.5', dataPort: 4000, role: 'gateway', verifiedUnits: 3, complete: false }], holdersFrom: 2, holders: [0, -1, 0], copyTo: [{ group: 'g2', member: 'x', address: '10.0.2.1', port: 5000 }] })),
    Buffer.from(JSON.stringify({ v: 1, stream: 'cam', id: 'ab'.repeat(16), nextUnit: 2, sinkBytes: 8192, batch: '{}' })),
  ],
  run(input) {
    const b = parseStreamBeat(input);
    if (typeof b !== 'string') {
      if (b.receipts.length !== b.receiptAgesMs.length && b.receiptAgesMs.length) throw new Error('accepted receipts and ages of different lengths');
      // What the server does with an accepted body: never throws, and leases only published units.
      const a = streamAlloc.heartbeat('cam', streamHead, b, 1_000_000);
      for (const u of a.lease?.units ?? []) if (u < streamHead.firstUnit || u >= streamHead.nextUnit) throw new Error(`leased unit ${u} outside the retained units`);
      parseStreamBeatAnswer(Buffer.from(JSON.stringify(a)));
    }
    for (const kept of [null, streamKept]) {
      try {
        const a = parseStreamBeatAnswer(input, kept);
        for (const h of a.holders) if (h >= a.members.length) throw new Error('accepted a holder index out of range');
        if (a.holdersFrom + a.holders.length > a.nextUnit || a.firstUnit > a.nextUnit) throw new Error('accepted a window past nextUnit');
      } catch (err) {
        if (!(err instanceof Error) || !err.message.startsWith('stream heartbeat answer')) throw err;
      }
    }
    try {
      parseStreamPosition(Buffer.from(input).toString('utf8'), 'position');
    } catch (err) {
      if (!(err instanceof FleetcastError)) throw err;
    }
  },
};

const httpBodies: Target = {
  name: 'http-bodies',
  seeds: [
    Buffer.from(JSON.stringify({ release: 'ab'.repeat(16), group: 'g', member: 'm1', have: 'AAE=', fetching: [1, 2] })),
    Buffer.from(JSON.stringify({ release: 'ab'.repeat(16), group: 'g', member: 'm1', unit: 5 })),
    Buffer.from(JSON.stringify({ release: 'ab'.repeat(16), group: 'g', member: 'm1', mapEpoch: 9, mapVersion: 12, receipts: [3, 4], receiptAgesMs: [10, 250], lease: 64 })),
    Buffer.from(JSON.stringify({ release: 'ab'.repeat(16), group: 'g', member: 'm1', sha256: 'c'.repeat(64) })),
  ],
  run(input) {
    for (const schema of Object.values(SCHEMAS)) {
      const r = parseBody(input, schema as never);
      if (typeof r.ok !== 'boolean') throw new Error('no verdict');
    }
  },
};

const bitmapJournal: Target = {
  name: 'bitmap-journal',
  seeds: [Buffer.concat([encodeJournalHeader(rid), encodeJournalRecords(rid, [0, 20, 7])]), encodeJournalHeader(rid)],
  run(input) {
    const r = decodeJournal(input, rid, 21);
    if (r.ok && r.units.some((u) => !Number.isInteger(u) || u < 0 || u >= 21)) throw new Error('a unit out of range accepted');
  },
};

const bitmapFile: Target = {
  name: 'bitmap-file',
  seeds: [encodeBitmapFile(rid, 21, new Uint8Array([0xff, 0x01, 0x80]))],
  run(input) {
    const r = decodeBitmapFile(input, rid, 21);
    if (r.ok && r.bits.length !== 3) throw new Error('wrong bitmap length accepted');
  },
};

const configSeeds = [
  'server: http://127.0.0.1:7600\ngroup: lab\ninterface: lo\nmulticast: 239.1.2.3:7700\nstorage: /var/lib/fleetcast\ntrust: [/etc/k.pub]\nchannel: stable\nrate: 100\n',
  '# comment\nserver: "http://x"\ntrust:\n  - a.pub\n  - b.pub\nrelease: 0123456789abcdef0123456789abcdef\nkeep: 3\non_complete: >\n  echo "$FLEETCAST_FILE"\n',
  'store: /srv\nlisten: 0.0.0.0:7600\nheartbeat_ms: 1000\nmetrics: 127.0.0.1:9600\n',
  'a: &x {b: [1, 2]}\nc: *x\n? complex\n: key\n--- \nsecond: doc\n',
];

const config: Target = {
  name: 'config',
  ciShare: 0.2,
  seeds: configSeeds.map((s) => Buffer.from(s)),
  run(input) {
    const text = Buffer.from(input).toString('utf8');
    for (const spec of [agent.spec, server.spec]) {
      try {
        resolveFlags(spec, {}, parseConfig(text, 'fuzz.yaml', spec));
      } catch (err) {
        if (!(err instanceof ConfigError)) throw err;
        if (!/^fuzz\.yaml:\d+:\d+: /.test(err.message)) throw new Error(`error without a location: ${err.message}`);
      }
    }
  },
};

const rangeHeader: Target = {
  name: 'range-header',
  seeds: ['bytes=0-99', 'bytes=-10', 'bytes=5-', 'bytes=9-3'].map((x) => Buffer.from(x)),
  run(input) {
    const len = input.length ? input[0] * 131 : 0;
    const r = parseRange(Buffer.from(input).toString('latin1'), len);
    if (r && !(Number.isSafeInteger(r.start) && Number.isSafeInteger(r.end) && r.start >= 0 && r.start <= r.end && r.end < len)) throw new Error(`range ${JSON.stringify(r)} outside 0..${len - 1}`);
  },
};

const identitiesFile: Target = {
  name: 'identities-file',
  seeds: [Buffer.from(JSON.stringify({ 'box-1': 'box-1', a: 'fleet' }))],
  run(input) {
    const b = new IdentityBindings(false, 10);
    let j: unknown;
    try {
      j = JSON.parse(Buffer.from(input).toString('utf8'));
    } catch {
      return; // the server logs and ignores a file that is not JSON
    }
    try {
      if (b.load(j, 100) > 100) throw new Error('cap ignored');
    } catch (err) {
      if ((err as Error).message === 'cap ignored') throw err;
    }
  },
};

const channelHead: Target = {
  name: 'channel-file',
  seeds: [Buffer.from(JSON.stringify({ channel: 'stable', release: 'ab'.repeat(16), name: 'fw.bin', publishedAt: 1 }))],
  run(input) {
    const h = parseChannelHead(input);
    if (typeof h !== 'string' && typeof h.release !== 'string') throw new Error('accepted without a release');
  },
};

const distributionFile: Target = {
  name: 'distribution-file',
  seeds: [Buffer.from(JSON.stringify({ policy: 'group', start: 'immediate', origins: ['https://cdn.example/fleet', 'http://10.0.0.1:8080'] }))],
  run(input) {
    const d = parseDistribution(Buffer.from(input).toString('utf8'));
    if (d === null) return;
    for (const o of d.origins ?? []) if (originUrlProblem(o) !== null) throw new Error(`accepted a bad origin ${o}`);
    if ((d.origins?.length ?? 0) > MAX_ORIGINS) throw new Error('more origins than allowed');
  },
};

const keyedBody: Target = {
  name: 'keyed-request',
  seeds: [
    Buffer.from(JSON.stringify({ release: 'ab'.repeat(16), group: 'east', member: 'e1', wideGroup: 'eu', have: 'AA==' })),
    Buffer.from(JSON.stringify({ release: 'ab'.repeat(16), group: 'east', member: 'e1', unit: 3, address: '10.0.0.1' })),
  ],
  run(input) {
    const r = keyedRef(input);
    if (r === null) return;
    for (const v of [r.release, r.group, r.member, r.wideGroup ?? 'x']) if (typeof v !== 'string' || v === '' || v.includes('/')) throw new Error(`accepted a field an allocation key cannot hold: ${JSON.stringify(v)}`);
    if (r.group.startsWith('*')) throw new Error('accepted a LAN group that reads as a wide-area key');
  },
};

const rolloutRoute: Target = {
  name: 'rollout-route',
  seeds: [Buffer.from(JSON.stringify({ channel: 'stable', group: 'g', member: 'm1' })), Buffer.from(JSON.stringify({ channel: 'stable', release: 'ab'.repeat(16), waves: '10%,100%', maxFailures: '1' }))],
  run(input) {
    // The coordinators route a rollout request by its body's channel: the key it names must be a channel key.
    const c = bodyChannel(input);
    if (c !== null && !CHANNEL_RE.test(c)) throw new Error(`accepted a channel no key can hold: ${JSON.stringify(c)}`);
  },
};

const igmp: Target = {
  name: 'igmp',
  seeds: [
    Buffer.concat([Buffer.from('46000028000000000102000a0a000005e000000194040000', 'hex'), buildGeneralQuery({ maxRespMs: 10_000, robustness: 2, intervalS: 125 })]),
  ],
  run(input) {
    const m = parseIgmpPacket(input);
    if (m && (m.version !== 2 && m.version !== 3)) throw new Error('bad version');
  },
};

const fleetFile: Target = {
  name: 'fleet-file',
  seeds: [
    Buffer.from(
      JSON.stringify({
        hooks: [
          { release: 'ab'.repeat(16), group: 'g1', member: 'box1', at: 1, durationMs: 12, exitCode: 0 },
          { release: 'cd'.repeat(16), group: 'g', member: 'm', at: 2, durationMs: 1, signal: 'SIGKILL', error: 'x' },
        ],
        overheads: { [`${'ab'.repeat(16)}/g1/box1`]: 170.5 },
      }),
    ),
  ],
  run(input) {
    const r = parseFleetMemory(Buffer.from(input).toString('utf8'));
    if (typeof r === 'string') return;
    for (const x of r.hooks) if (typeof x.release !== 'string' || typeof x.at !== 'number' || (x.error !== undefined && x.error.length > 512)) throw new Error('accepted a malformed hook result');
    for (const [k, v] of r.overheads) if (typeof k !== 'string' || !Number.isFinite(v) || v < 0) throw new Error('accepted a malformed overhead');
  },
};

const rolloutSeed = (() => {
  const r = createRollout(
    { id: 'r-0123456789ab', channel: 'stable', release: 'b'.repeat(32), previous: 'a'.repeat(32), waves: parseWaves('25%,100%') as never, maxFailures: { count: 1 }, waveWaitMs: 60_000, window: 'Mon-Fri 02:00-04:00', createdAt: 1 },
    [{ id: 'm0', group: 'g' }, { id: 'm1', group: 'h' }],
    1,
  );
  report(r, 'm0', 'g', 'failed', 'exit 3', 2);
  return Buffer.from(JSON.stringify(r));
})();

/** The server's rollout state file (<store>/rollouts/ID.json): what it accepts must hold together. */
const rolloutFile: Target = {
  name: 'rollout-file',
  seeds: [rolloutSeed],
  ciShare: 0.3,
  run(input) {
    const r = parseRollout(input);
    if (typeof r === 'string') return;
    if (r.openWave >= r.waves.length || r.openedAt.length !== r.openWave + 1) throw new Error('accepted an open wave out of range');
    for (const m of Object.values(r.members)) if (m.wave >= r.waves.length) throw new Error('accepted a member wave out of range');
  },
};

/** The server's answer to an agent's rollout poll, and the agent's install record. */
const rolloutPoll: Target = {
  name: 'rollout-poll',
  seeds: [
    Buffer.from(JSON.stringify({ rollout: { rollout: 'r-0123456789ab', release: 'b'.repeat(32), previous: 'a'.repeat(32), state: 'running', wave: 0, waveOpen: true, stage: true, install: true, rollback: false, window: 'Sat,Sun 22:00-02:00' } })),
    Buffer.from(JSON.stringify({ version: 1, release: 'b'.repeat(32), rollout: 'r-0123456789ab', state: 'installed', reason: null, rollbackRan: false, path: '/x' })),
  ],
  run(input) {
    const d = parsePollAnswer(input);
    if (d && typeof d !== 'string' && (typeof d.install !== 'boolean' || !/^[0-9a-f]{32}$/.test(d.release))) throw new Error('accepted a malformed directive');
    const rec = parseInstallRecord(input);
    if (typeof rec !== 'string' && typeof rec.path !== 'string') throw new Error('accepted a record without a path');
    const text = Buffer.from(input).toString('latin1').slice(0, 600);
    const w = parseWindow(text);
    if (typeof w !== 'string' && w.some((p) => p.start < 0 || p.start >= 1440 || p.end > 1440)) throw new Error('accepted a time out of range');
    const waves = parseWaves(text);
    if (typeof waves !== 'string' && waves.length === 0) throw new Error('accepted no waves');
  },
};

/** Request bodies of the rollout endpoints: accepted, or refused with ApiError 400 and nothing else. */
const rolloutBodies: Target = {
  name: 'rollout-bodies',
  seeds: [
    Buffer.from(JSON.stringify({ channel: 'stable', group: 'site-a', member: 'm1', release: 'b'.repeat(32), state: 'failed', reason: 'exit 3' })),
    Buffer.from(JSON.stringify({ channel: 'stable', release: 'b'.repeat(32), waves: '1%,10%,100%', maxFailures: '5%', waveWait: '1h30m', window: 'Mon-Fri 02:00-04:00' })),
    Buffer.from(JSON.stringify({ channel: 'stable', release: 'b'.repeat(32), waves: 'site-a,*', maxFailures: '2' })),
  ],
  run(input) {
    for (const parse of [parsePollBody, parseStartBody]) {
      try {
        parse(jsonObject(input));
      } catch (err) {
        if (!(err instanceof ApiError) || err.status !== 400) throw err;
      }
    }
  },
};

/**
 * A 1.4 heartbeat answer as the agent applies it (MapMirror): a whole map first, then the
 * input as the next answer. It is applied, or refused with a plain Error naming the field,
 * and the map it leaves names only members it lists.
 */
const mapFull = { mapEpoch: 7, mapVersion: 3, full: true, groupComplete: false, allHeld: false, heartbeatMs: 1000, lanStart: true, holderSlots: [0, 1, -1, 0], members: [{ slot: 0, id: 'a', group: 'g', address: '10.0.0.1', dataPort: 4000, role: 'gateway', overheadMsPerMiB: 3.5, verifiedUnits: 2, leases: 1, complete: false, forwarded: 0, lanBytes: 0, gatewayDemotions: 0, undeliveredClaims: 0 }, { slot: 1, id: 'b', group: 'g', address: null, dataPort: null, role: 'member', overheadMsPerMiB: null, verifiedUnits: 0, leases: 1, complete: false, forwarded: 0, lanBytes: 0, gatewayDemotions: 0, undeliveredClaims: 0 }] };
const mapAnswer: Target = {
  name: 'map-answer',
  seeds: [
    Buffer.from(JSON.stringify(mapFull)),
    Buffer.from(JSON.stringify({ mapEpoch: 7, mapVersion: 5, full: false, groupComplete: false, allHeld: true, members: [{ ...mapFull.members[1], slot: 2, id: 'c' }], gone: [1], holderChanges: [2, 2, 1, -1] })),
    Buffer.from(JSON.stringify({ mapEpoch: 7, mapVersion: 3, full: false, groupComplete: false, allHeld: false, members: [] })),
  ],
  run(input) {
    let answer: unknown;
    try {
      answer = JSON.parse(Buffer.from(input).toString('utf8'));
    } catch {
      return;
    }
    const mirror = new MapMirror();
    mirror.apply(mapFull);
    try {
      mirror.apply(answer);
    } catch (err) {
      if ((err as Error).constructor !== Error) throw err;
    }
    const v = mirror.view();
    if (v.holders.some((h) => !Number.isInteger(h) || h < -1 || h >= v.members.length)) throw new Error('a holder that is not a listed member');
    if (v.members.some((m) => typeof m.id !== 'string' || (m.overheadMsPerMiB !== null && !Number.isFinite(m.overheadMsPerMiB)))) throw new Error('a malformed member record kept');
  },
};

export const TARGETS: Target[] = [keyedBody, rolloutRoute, mapAnswer, packet, lanDatagram, batchPacket, manifest, streamBatch, streamControl, httpBodies, rangeHeader, identitiesFile, bitmapFile, bitmapJournal, config, channelHead, distributionFile, igmp, fleetFile, rolloutFile, rolloutPoll, rolloutBodies];

/** Run `cases` inputs through a target; returns the number run. Throws with the replay seed on failure. */
export function fuzz(t: Target, cases: number, seed: number): number {
  const rnd = prng(seed);
  for (let i = 0; i < cases; i++) {
    const input = rnd() < 0.85 ? mutate(t.seeds[Math.floor(rnd() * t.seeds.length)], rnd) : new Uint8Array(Math.floor(rnd() * 300)).map(() => Math.floor(rnd() * 256));
    try {
      t.run(input);
    } catch (err) {
      throw new Error(`${t.name}: case ${i} (seed ${seed}) broke the parser: ${(err as Error).message}; input ${Buffer.from(input).toString('hex').slice(0, 400)}`);
    }
  }
  return cases;
}
