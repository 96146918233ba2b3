import test from 'ava';
import { createHash, sign } from 'node:crypto';
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { ed25519 } from './helpers/keys';
import { tmpdir } from './helpers/fleet';
import { batchFromObject, checkChain, parseBatch, signBatch, StreamBatch, StreamBatchBody, unitHash, ZERO_HASH } from '../src/release/stream-manifest';
import { parseRetention, StreamPublisher } from '../src/release/stream-publish';
import { StreamStore } from '../src/release/stream-store';
import { FleetcastError } from '../src/util/errors';

const keys = ed25519();
const other = ed25519();
const UNIT = 4096;

/** A chain of `n` batches of 2 full units each, and the unit bytes. */
function chain(n: number, key = keys.privateKey): { batches: StreamBatch[]; units: Buffer[] } {
  const batches: StreamBatch[] = [];
  const units: Buffer[] = [];
  for (let i = 0; i < n; i++) {
    const us = [Buffer.alloc(UNIT, 2 * i), Buffer.alloc(UNIT, 2 * i + 1)];
    units.push(...us);
    const body: StreamBatchBody = { v: 1, stream: 'cam', id: 'ab'.repeat(16), batch: i, first: 2 * i, offset: 2 * i * UNIT, count: 2, unitSize: UNIT, units: us.map(unitHash), lastLength: UNIT, prev: i === 0 ? ZERO_HASH : batches[i - 1].hash, time: new Date(1e12 + i).toISOString() };
    batches.push(signBatch(body, key));
  }
  return { batches, units };
}

const code = (fn: () => unknown): string | undefined => {
  try {
    fn();
  } catch (err) {
    return (err as FleetcastError).code;
  }
  return undefined;
};

test('a unit verifies against the batch that covers it, and batches chain in order', (t) => {
  const { batches, units } = chain(4);
  const parsed = batches.map((b) => parseBatch(b.raw, [keys.publicKey]));
  for (let i = 1; i < parsed.length; i++) t.notThrows(() => checkChain(parsed[i - 1], parsed[i]));
  // Unit 5 is checkable with batch 2 alone.
  t.is(unitHash(units[5]), parsed[2].units[1]);
  t.not(unitHash(Buffer.alloc(UNIT, 9)), parsed[2].units[1]);
  // The batch in an HTTP answer (a parsed JSON object) verifies the same.
  t.is(batchFromObject(JSON.parse(batches[1].raw.toString()), [keys.publicKey]).hash, batches[1].hash);
  t.is(parsed[1].prev, createHash('sha256').update(Buffer.from(JSON.parse(batches[0].raw.toString()).body, 'base64')).digest('hex'));
});

test('a forged batch, one signed by another key, and a batch from outside the chain are refused', (t) => {
  const { batches } = chain(3);
  const env = JSON.parse(batches[1].raw.toString());
  const body = JSON.parse(Buffer.from(env.body, 'base64').toString());
  body.units[0] = 'f'.repeat(64);
  const forged = Buffer.from(JSON.stringify({ ...env, body: Buffer.from(JSON.stringify(body)).toString('base64') }));
  t.is(code(() => parseBatch(forged, [keys.publicKey])), 'BAD_SIGNATURE');
  t.is(code(() => parseBatch(chain(1, other.privateKey).batches[0].raw, [keys.publicKey])), 'UNTRUSTED_KEY');
  // A signature of the release key over the bare body (a manifest's form) is not a batch signature.
  const bare = Buffer.from(JSON.stringify({ ...env, sig: sign(null, Buffer.from(env.body, 'base64'), keys.privateKey).toString('base64') }));
  t.is(code(() => parseBatch(bare, [keys.publicKey])), 'BAD_SIGNATURE');
  t.is(code(() => parseBatch(Buffer.from('{"fleetcast":"stream-batch","v":1}'), [keys.publicKey])), 'BAD_BATCH');
});

test('nobody can reorder or rewrite history: a batch whose index or prev does not chain is refused', (t) => {
  const { batches } = chain(4);
  // Reordered: batch 2 straight after batch 0, batch 1 after batch 2.
  t.is(code(() => checkChain(batches[0], batches[2])), 'BAD_CHAIN');
  t.is(code(() => checkChain(batches[2], batches[1])), 'BAD_CHAIN');
  // Rewritten: the key holder re-signs batch 1 with other units; batch 2 no longer chains to it,
  // and a receiver holding the original batch 1 refuses a batch 2 made for the rewrite.
  const body1: StreamBatchBody = { ...batches[1], units: [unitHash(Buffer.alloc(UNIT, 7)), batches[1].units[1]] };
  delete (body1 as Partial<StreamBatch>).hash;
  delete (body1 as Partial<StreamBatch>).raw;
  const rewritten = signBatch(body1, keys.privateKey);
  t.is(code(() => checkChain(rewritten, batches[2])), 'BAD_CHAIN');
  const body2 = { ...stripped(batches[2]), prev: rewritten.hash };
  t.is(code(() => checkChain(batches[1], signBatch(body2, keys.privateKey))), 'BAD_CHAIN');
  // Nothing follows a final batch.
  const fin = signBatch({ ...stripped(batches[3]), final: true }, keys.privateKey);
  const after = signBatch({ ...stripped(batches[3]), batch: 4, first: 8, offset: 8 * UNIT, prev: fin.hash }, keys.privateKey);
  t.is(code(() => checkChain(fin, after)), 'BAD_CHAIN');
  // A gap in the units or the bytes.
  t.is(code(() => checkChain(batches[0], signBatch({ ...stripped(batches[1]), first: 3 }, keys.privateKey))), 'BAD_CHAIN');
  t.is(code(() => checkChain(batches[0], signBatch({ ...stripped(batches[1]), offset: 3 * UNIT }, keys.privateKey))), 'BAD_CHAIN');
});

function stripped(b: StreamBatch): StreamBatchBody {
  const { hash: _h, raw: _r, ...body } = b;
  return body;
}

test('the publisher batches units as they fill, cuts a short unit after --flush-ms, and ends with a final batch', async (t) => {
  const dir = await tmpdir(t);
  const pub = await StreamPublisher.open(dir, 'cam', keys.privateKey, { unitSize: UNIT, flushMs: 20 });
  t.teardown(() => pub.close());
  const data = Buffer.from(Array.from({ length: 3 * UNIT + 100 }, (_, i) => (i * 7) & 255));
  await pub.push(data);
  const store = new StreamStore(dir, 'cam');
  // The three full units are in a batch (verifiable now), before the stream ends.
  const b0 = (await store.readBatch(0))!;
  t.is(b0.count, 3);
  for (let i = 0; i < 3; i++) t.is(unitHash(await fs.readFile(store.unitPath(i))), b0.units[i]);
  // The 100 bytes left are cut by the flush timer into a short unit of their own batch.
  for (let i = 0; i < 500 && !(await store.readBatch(1).catch(() => null)); i++) await new Promise((r) => setTimeout(r, 10));
  const b1 = (await store.readBatch(1))!;
  t.deepEqual([b1.first, b1.count, b1.lastLength, b1.offset], [3, 1, 100, 3 * UNIT]);
  t.notThrows(() => checkChain(b0, b1));
  await pub.end();
  const fin = (await store.readBatch(2))!;
  t.true(fin.final);
  t.is(fin.count, 0);
  t.deepEqual((await store.head())!.ended, true);
  const all = Buffer.concat(await Promise.all([0, 1, 2, 3].map((n) => fs.readFile(store.unitPath(n)))));
  t.true(all.equals(data));
});

test('a crash between units and batch leaves no batch naming a missing unit; a restart continues the chain', async (t) => {
  const dir = await tmpdir(t);
  let pub = await StreamPublisher.open(dir, 'cam', keys.privateKey, { unitSize: UNIT });
  await pub.push(Buffer.alloc(2 * UNIT, 1));
  await pub.close();
  const store = new StreamStore(dir, 'cam');
  // What a crash after writing two units but before their batch leaves: unit files no batch names, a stray tmp.
  await fs.writeFile(store.unitPath(2), Buffer.alloc(UNIT, 2));
  await fs.writeFile(store.unitPath(3), Buffer.alloc(10, 3));
  await fs.writeFile(store.batchPath(1) + '.tmp', 'half');
  // And a retention step that moved the head past unit 0 and died before deleting it.
  await store.writeHead({ ...(await store.head())!, firstUnit: 1 });
  pub = await StreamPublisher.open(dir, 'cam', keys.privateKey, {});
  t.teardown(() => pub.close());
  t.deepEqual(await store.listNumbers('units'), [1]);
  t.false(await fs.access(store.batchPath(1) + '.tmp').then(() => true, () => false));
  await pub.push(Buffer.alloc(UNIT, 4));
  await pub.end();
  const b0 = (await store.readBatch(0))!;
  const b1 = (await store.readBatch(1))!;
  t.notThrows(() => checkChain(b0, b1));
  t.is(b1.first, 2);
  t.is(unitHash(await fs.readFile(store.unitPath(2))), b1.units[0]);
  // An ended stream is not continued, and another key cannot continue it.
  await pub.close();
  const e1 = await t.throwsAsync(StreamPublisher.open(dir, 'cam', keys.privateKey, {}));
  t.is((e1 as FleetcastError).code, 'ENDED');
  await fs.rm(store.batchPath(2));
  const e2 = await t.throwsAsync(StreamPublisher.open(dir, 'cam', other.privateKey, {}));
  t.is((e2 as FleetcastError).code, 'OTHER_KEY');
  const e3 = await t.throwsAsync(StreamPublisher.open(dir, 'cam', keys.privateKey, { unitSize: 2 * UNIT }));
  t.is((e3 as FleetcastError).code, 'BAD_UNIT_SIZE');
});

test('retention by units keeps the disk bounded; by age it drops whole old batches', async (t) => {
  const dir = await tmpdir(t);
  const pub = await StreamPublisher.open(dir, 'cam', keys.privateKey, { unitSize: UNIT, retain: { units: 5 } });
  t.teardown(() => pub.close());
  for (let i = 0; i < 40; i++) await pub.push(Buffer.alloc(UNIT, i));
  const store = new StreamStore(dir, 'cam');
  t.deepEqual(await store.listNumbers('units'), [35, 36, 37, 38, 39]);
  t.true((await store.unitBytesOnDisk()) <= 5 * UNIT);
  t.true((await store.listNumbers('batches')).length <= 5);
  const h = (await store.head())!;
  t.deepEqual([h.firstUnit, h.nextUnit], [35, 40]);

  let now = 1_000_000;
  const dir2 = await tmpdir(t);
  const aged = await StreamPublisher.open(dir2, 'cam', keys.privateKey, { unitSize: UNIT, retain: { ms: 10_000 }, now: () => now });
  t.teardown(() => aged.close());
  for (let i = 0; i < 30; i++) {
    await aged.push(Buffer.alloc(UNIT, i));
    now += 1000;
  }
  const s2 = new StreamStore(dir2, 'cam');
  const kept = await s2.listNumbers('units');
  // One batch a second, ten seconds kept (and the batch being written).
  t.true(kept.length >= 10 && kept.length <= 11, `kept ${kept.length}`);
  t.is(kept[kept.length - 1], 29);
});

test('--retain takes a unit count or a duration', (t) => {
  t.deepEqual(parseRetention('500'), { units: 500 });
  t.deepEqual(parseRetention('90s'), { ms: 90_000 });
  t.deepEqual(parseRetention('2h'), { ms: 7_200_000 });
  for (const bad of ['0', '-1', '5x', '', '1.5h']) t.is(parseRetention(bad), null, bad);
});

test('a stored batch file is found for any retained unit by binary search', async (t) => {
  const dir = await tmpdir(t);
  const pub = await StreamPublisher.open(dir, 'cam', keys.privateKey, { unitSize: UNIT });
  t.teardown(() => pub.close());
  for (let i = 0; i < 9; i++) await pub.push(Buffer.alloc(UNIT * (1 + (i % 3)), i));
  const store = new StreamStore(dir, 'cam');
  const h = (await store.head())!;
  for (let u = 0; u < h.nextUnit; u++) {
    const i = (await store.batchFor(u, h))!;
    const b = (await store.readBatch(i))!;
    t.true(u >= b.first && u < b.first + b.count);
  }
  t.is(await store.batchFor(h.nextUnit, h), null);
  t.is(path.basename(store.dir), 'cam');
});
