import test from 'ava';
import { generateKeyPairSync, randomBytes } from 'node:crypto';
import { promises as fs } from 'node:fs';
import * as http from 'node:http';
import * as path from 'node:path';
import { BatchFollower, FollowerHost } from '../src/agent/stream-follow';
import { loadPrivateKey, loadPublicKey } from '../src/release/keys';
import { batchFromCompact, compactAfter, parseBatch, parseBatchEnvelope, signBatch, StreamBatch } from '../src/release/stream-manifest';
import { StreamPublisher } from '../src/release/stream-publish';
import { streamRoutes } from '../src/server/stream-routes';
import { runCli } from './helpers/fleet';
import { startStreamServer } from './helpers/stream-server';

/*
 * Compact batches (docs/protocol.md, "Compact batches"): a receiver that says which batch
 * it holds gets the next ones as what each adds to the one before (unit hashes, length,
 * time, signature), rebuilds the exact signed body and verifies it as any batch. A batch it
 * could not rebuild exactly goes whole. Bounds are on bytes and counts.
 */

/** A stream of batches as the publisher writes them: full units, a partial one, and a final batch. */
async function published(t: import('ava').ExecutionContext) {
  const s = await startStreamServer(t);
  const key = await loadPrivateKey(s.keyPath);
  const trusted = [await loadPublicKey(s.pubPath)];
  const pub = await StreamPublisher.open(s.store, 'cam', key, { unitSize: 4096, flushMs: 50 });
  for (const n of [4096, 8192, 5000, 4096, 100, 12288]) {
    await pub.push(randomBytes(n));
    await pub.flush();
  }
  await pub.end();
  await pub.close();
  const dir = path.join(s.store, 'streams', 'cam', 'batches');
  const files = (await fs.readdir(dir)).map(Number).sort((a, b) => a - b);
  const raws = await Promise.all(files.map((i) => fs.readFile(path.join(dir, String(i)))));
  const batches = raws.map((r) => parseBatch(r, trusted));
  return { ...s, key, trusted, raws, batches };
}

test('each batch in compact form rebuilds into the batch file itself, and is well under half its bytes', async (t) => {
  const { trusted, raws, batches } = await published(t);
  t.true(batches.length >= 7, `${batches.length} batches`);
  t.true(batches.at(-1)!.final, 'the last is the end marker');
  t.true(batches.some((b) => b.lastLength !== b.unitSize && b.count > 0), 'one ends in a partial unit');
  for (let i = 1; i < batches.length; i++) {
    const prev = batches[i - 1];
    const c = compactAfter(prev, parseBatchEnvelope(prev.raw).key, batches[i], parseBatchEnvelope(raws[i]));
    if (!c) return t.fail(`batch ${i} could not be compacted`);
    const b = batchFromCompact(prev, JSON.parse(JSON.stringify(c)), trusted);
    t.true(b.raw.equals(raws[i]), `batch ${i}: the same file bytes`);
    t.is(b.hash, batches[i].hash);
    if (batches[i].count === 1) t.true(JSON.stringify(c).length < 0.45 * raws[i].length, `batch ${i}: ${JSON.stringify(c).length} of ${raws[i].length} bytes`);
  }
});

test('a compact batch that was altered, or read after another batch, does not verify; one the receiver could not rebuild goes whole', async (t) => {
  const { key, trusted, raws, batches } = await published(t);
  const prev = batches[1];
  const c = compactAfter(prev, parseBatchEnvelope(prev.raw).key, batches[2], parseBatchEnvelope(raws[2]))!;
  const h = Buffer.from(c.u, 'base64');
  h[0] ^= 1;
  for (const bad of [{ ...c, t: c.t + 1 }, { ...c, u: h.toString('base64') }, { ...c, l: 17 }, { ...c, f: true }]) {
    t.throws(() => batchFromCompact(prev, bad, trusted), { code: 'BAD_SIGNATURE' });
  }
  t.throws(() => batchFromCompact(batches[0], c, trusted), { code: 'BAD_SIGNATURE' }, 'after another batch: another body');
  for (const bad of [null, [], { ...c, x: 1 }, { ...c, u: 'AAA' }, { ...c, s: 'AA==' }, { ...c, t: -1 }, { ...c, f: false }, { ...c, l: 0 }]) {
    t.throws(() => batchFromCompact(prev, bad, trusted), { code: 'BAD_BATCH' });
  }
  t.throws(() => batchFromCompact(prev, c, [generateKeyPairSync('ed25519').publicKey]), { code: 'UNTRUSTED_KEY' });
  // A publisher that orders the body's fields otherwise: its batch verifies, but could not be rebuilt, so it goes whole.
  const b = batches[2];
  const other = signBatch({ units: b.units, v: 1, stream: b.stream, id: b.id, batch: b.batch, first: b.first, offset: b.offset, count: b.count, unitSize: b.unitSize, lastLength: b.lastLength, prev: b.prev, time: b.time }, key);
  t.is(parseBatch(other.raw, trusted).hash, other.hash);
  t.is(compactAfter(prev, parseBatchEnvelope(prev.raw).key, other, parseBatchEnvelope(other.raw)), null);
});

test('the batches endpoint answers compact batches after the one the receiver holds, whole ones otherwise; after needs from and 64 hex', async (t) => {
  const { url, store, raws, batches } = await published(t);
  const get = async (q: string) => {
    const r = await fetch(`${url}/v1/streams/cam/batches?${q}`);
    return { status: r.status, body: (await r.json()) as { batches: Record<string, unknown>[]; error?: string; message?: string }, bytes: Number(r.headers.get('content-length')) };
  };
  const plain = await get('from=1');
  t.true(plain.body.batches.every((b) => b.fleetcast === 'stream-batch'), 'without after: whole batches, as before');
  const compact = await get(`from=1&after=${batches[0].hash}`);
  t.is(compact.body.batches.length, batches.length - 1);
  t.true(compact.body.batches.every((b) => b.fleetcast === undefined), 'every batch compact');
  t.true(compact.bytes < 0.5 * plain.bytes, `${compact.bytes} bytes against ${plain.bytes}`);
  t.is(streamRoutes(store).compactBatches, batches.length - 1);
  // What the receiver rebuilds, in order, is the batch files.
  let prev: StreamBatch = batches[0];
  for (const [i, o] of compact.body.batches.entries()) {
    prev = batchFromCompact(prev, o, [await loadPublicKey(path.join(path.dirname(store), 'keys', 'server.pub'))]);
    t.true(prev.raw.equals(raws[i + 1]));
  }
  const wrong = await get(`from=1&after=${batches[1].hash}`);
  t.is(wrong.body.batches[0].fleetcast, 'stream-batch', 'a hash that is not batch 0: the first goes whole');
  t.true(wrong.body.batches.slice(1).every((b) => b.fleetcast === undefined), 'the rest after it');
  t.is((await get(`from=0&after=${'0'.repeat(64)}`)).body.batches[0].fleetcast, 'stream-batch', 'no batch before batch 0');
  for (const q of [`unit=1&after=${batches[0].hash}`, 'from=1&after=abc', `from=1&after=${batches[0].hash.toUpperCase()}`]) {
    const r = await get(q);
    t.is(r.status, 400, q);
    t.regex(r.body.message ?? '', /after must be 64 lowercase hex/);
  }
});

test('the follower asks for compact batches, takes them as the files, and asks for whole ones once a server refuses after', async (t) => {
  const { url, trusted, raws, batches } = await published(t);
  const queries: string[] = [];
  const taken: StreamBatch[] = [];
  const logs: string[] = [];
  let refuse = false;
  const host = {
    http: {
      batches: async (q: string) => {
        queries.push(q);
        if (refuse && q.includes('after=')) throw new Error('stream cam: GET /v1/streams/cam/batches: BAD_QUERY: unknown query parameter after');
        const r = await fetch(`${url}/v1/streams/cam/batches?${q.replace(/&waitMs=\d+/, '')}`);
        return ((await r.json()) as { batches: unknown[] }).batches;
      },
    },
    core: { onBatchPacket: null },
    trusted,
    log: { debug: () => undefined, info: (m: string) => logs.push(m) },
    last: () => taken.at(-1) ?? batches[0],
    take: (b: StreamBatch) => taken.push(b),
    finished: () => taken.at(-1)?.final === true,
    kick: () => undefined,
  } as unknown as FollowerHost;
  const f = new BatchFollower(host, 1);
  f['relay'] = () => undefined;
  await f.run();
  t.deepEqual(taken.map((b) => b.raw), raws.slice(1), 'every batch after the first, as its file');
  t.is(f.counts.compact, batches.length - 1);
  t.regex(queries[0], new RegExp(`^from=1&waitMs=\\d+&after=${batches[0].hash}$`));
  // A server from before: one refusal, then whole batches.
  taken.length = 0;
  queries.length = 0;
  refuse = true;
  const g = new BatchFollower(host, 1);
  g['relay'] = () => undefined;
  await g.run();
  t.deepEqual(taken.map((b) => b.raw), raws.slice(1));
  t.false(g.compact);
  t.is(g.counts.compact, 0);
  t.is(queries.filter((q) => q.includes('after=')).length, 1, 'after sent once');
  t.is(logs.filter((l) => /does not take after=/.test(l)).length, 1, 'and said once');
});

test('stream fetch takes compact batches, and whole ones from a server that refuses after', async (t) => {
  const { dir, keyPath, pubPath, store, url } = await startStreamServer(t);
  let refused = 0;
  // A server from before 2026-12-03, as receivers meet it: the real one behind a proxy that refuses after= as its parser does.
  const proxy = http.createServer(async (req, res) => {
    if (req.url?.includes('after=')) {
      refused++;
      res.writeHead(400, { 'content-type': 'application/json' }).end(JSON.stringify({ error: 'BAD_QUERY', message: 'unknown query parameter after' }));
      return;
    }
    const r = await fetch(`${url}${req.url}`);
    res.writeHead(r.status, { 'content-type': r.headers.get('content-type') ?? 'application/octet-stream' }).end(Buffer.from(await r.arrayBuffer()));
  });
  await new Promise<void>((r) => proxy.listen(0, '127.0.0.1', r));
  t.teardown(() => new Promise<void>((r) => (proxy.closeAllConnections(), proxy.close(() => r()))));
  const pub = await StreamPublisher.open(store, 'cam', await loadPrivateKey(keyPath), { unitSize: 4096, flushMs: 50 });
  const source = randomBytes(4096 * 12);
  await pub.push(source.subarray(0, 4096));
  // Both start from unit 0 while the stream grows, so their later batches come by long poll.
  const fetches = [url, `http://127.0.0.1:${(proxy.address() as { port: number }).port}`].map((server, i) =>
    runCli(['stream', 'fetch', 'cam', '--server', server, '--plain-http', '--trust', pubPath, '--sink', path.join(dir, `${i}.bin`), '--start', '0']),
  );
  // Once both have written unit 0, every later batch reaches them by a long poll.
  const size = (i: number) => fs.stat(path.join(dir, `${i}.bin`)).then((st) => st.size, () => 0);
  while ((await size(0)) < 4096 || (await size(1)) < 4096) await new Promise((r) => setTimeout(r, 20));
  for (let off = 4096; off < source.length; off += 4096) {
    await new Promise((r) => setTimeout(r, 50));
    await pub.push(source.subarray(off, off + 4096));
  }
  await pub.end();
  await pub.close();
  for (const [i, r] of (await Promise.all(fetches)).entries()) {
    t.is(r.code, 0, r.stderr);
    t.true((await fs.readFile(path.join(dir, `${i}.bin`))).equals(source), `receiver ${i}: the stream's bytes`);
  }
  t.true(streamRoutes(store).compactBatches >= 11, `the first took every batch after unit 0's compact (${streamRoutes(store).compactBatches})`);
  t.is(refused, 1, 'the second sent after once, then whole-batch polls');
});
