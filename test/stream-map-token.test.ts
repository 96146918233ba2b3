import test from 'ava';
import { randomBytes, randomInt } from 'node:crypto';
import { promises as fs } from 'node:fs';
import * as http from 'node:http';
import * as path from 'node:path';
import { MapTokens } from '../src/agent/stream-beat';
import { loadPrivateKey, loadPublicKey } from '../src/release/keys';
import type { StreamHead } from '../src/release/stream-manifest';
import { StreamPublisher } from '../src/release/stream-publish';
import { MAP_TOKEN_REFRESH_MS, StreamAllocation } from '../src/server/stream-alloc';
import { streamRoutes } from '../src/server/stream-routes';
import { silentLogger } from '../src/util/log';
import { parseStreamBeat, parseStreamBeatAnswer, StreamBeatAnswer, StreamBeatBody, StreamBeatReply } from '../src/wire/stream-control';
import { loopbackStreamAgent, startStreamServer } from './helpers/stream-server';

/*
 * Map tokens in stream heartbeats (docs/protocol.md, "Map tokens"): an agent that sends
 * `mapToken` gets the member list, the group key and the copy destinations only when they
 * changed since the answer it holds; one that does not send it gets today's whole answer.
 * Bounds are on bytes, fields and counts.
 */

const head = (nextUnit: number, firstUnit = 0): StreamHead => ({ stream: 'cam', id: 'ab'.repeat(16), unitSize: 65536, firstUnit, firstBatch: 0, lastBatch: nextUnit, nextUnit, bytes: nextUnit * 65536, time: '2026-01-01T00:00:00Z', ended: false });
const body = (member: string, extra: Partial<StreamBeatBody> = {}): StreamBeatBody => ({ v: 1, group: member.startsWith('x') ? 'g2' : 'g1', member, wideGroup: 'w', address: `10.0.${member.startsWith('x') ? 2 : 1}.${member.charCodeAt(member.length - 1)}`, dataPort: 4000, haveFrom: 0, have: new Uint8Array(0), receipts: [], receiptAgesMs: [], fetching: [], fetchingBytes: [], lease: 0, forwarded: 0, lanBytes: 0, join: false, ...extra });
/** Holders by member id (what an index means is the list's business). */
const holderIds = (a: StreamBeatAnswer) => a.holders.map((h) => (h < 0 ? null : a.members[h].id));

/** Four members of a wide-area group (two LAN groups) beating against a growing stream; `lean`: their bodies ask for lean answers. */
function group(lean = false, at: (n: number) => StreamHead = (n) => head(n)) {
  const alloc = new StreamAllocation();
  let now = 1_000_000;
  const tokens = new Map<string, MapTokens>();
  const beat = (m: string, n: number, extra: Partial<StreamBeatBody> = {}, opt = true) => {
    const t = tokens.get(m) ?? Object.assign(new MapTokens(), { lean });
    tokens.set(m, t);
    const reply: StreamBeatReply = alloc.heartbeat('cam', at(n), body(m, { ...extra, ...(opt ? t.field() : {}) }), (now += 7));
    const wire = Buffer.from(JSON.stringify(reply));
    return { reply, wire, whole: opt ? t.parse(wire) : parseStreamBeatAnswer(wire) };
  };
  return { alloc, beat, tick: (ms: number) => (now += ms) };
}

test('an agent that echoes the map token gets members, groupKey and copyTo only when they changed; holders still name the right members', (t) => {
  const g = group();
  for (const m of ['a1', 'a2', 'x1', 'x2']) g.beat(m, 4, { lease: 2, join: true });
  let full = 0;
  let left = 0;
  let sizeLeft = 0;
  let sizeFull = 0;
  for (let n = 5; n < 60; n++) {
    for (const m of ['a1', 'a2', 'x1', 'x2']) {
      const { reply, wire, whole } = g.beat(m, n, { lease: 2, receipts: n > 6 ? [n - 2] : [], receiptAgesMs: n > 6 ? [3] : [] });
      t.truthy(reply.mapToken, 'every answer to a body with mapToken carries one');
      if (reply.members === undefined) {
        t.is(reply.groupKey, undefined);
        t.is(reply.copyTo, undefined);
        left++;
        sizeLeft += wire.length;
      } else {
        full++;
        sizeFull += wire.length;
      }
      // The whole answer the agent builds names the same holders as an answer to a body without a token.
      t.is(whole.members.length, 4);
      t.is(whole.copyTo.length, 1, 'one other LAN group: one gateway to copy to');
      t.deepEqual(holderIds(whole), holderIds(g.beat(m, n, {}, false).whole));
    }
  }
  t.log(`answers with the map: ${full} (mean ${Math.round(sizeFull / full)} B), without: ${left} (mean ${Math.round(sizeLeft / left)} B)`);
  t.true(left >= 0.9 * (left + full), `most answers (${left} of ${left + full}) leave the unchanged map out`);
  t.true(sizeLeft / left < 0.4 * (sizeFull / full), 'and are well under half the size');
  t.is(g.alloc.tokenHits, left);
});

test('the map is sent again when it changes: a member joins, moves to another address or leaves, or the refresh period passes', (t) => {
  const g = group();
  for (const m of ['a1', 'x1', 'x2']) g.beat(m, 4, { join: true });
  t.is(g.beat('a1', 5).reply.members?.length, 3, 'x1 and x2 joined after a1 first beat: the whole list');
  t.is(g.beat('a1', 5).reply.members, undefined, 'unchanged: left out');
  g.beat('a2', 5, { join: true }); // a member joins
  const joined = g.beat('a1', 5);
  t.is(joined.reply.members?.length, 4, 'a member joined: the whole list again');
  t.is(g.beat('a1', 6).reply.members, undefined);
  // A member comes back on another address (a new DHCP lease): its record and the copy destinations change.
  g.beat('x1', 6, { address: '10.0.2.99' });
  const moved = g.beat('a1', 6);
  t.truthy(moved.reply.members, 'a member record changed: sent');
  t.is(moved.whole.members.find((m) => m.id === 'x1')?.address, '10.0.2.99');
  t.is(moved.whole.copyTo[0].address, '10.0.2.99', "the other group's gateway, at its new address");
  t.is(g.beat('a1', 7).reply.members, undefined);
  // A refresh period later the list comes again (other members' verifiedUnits are at most that old).
  g.tick(MAP_TOKEN_REFRESH_MS);
  t.truthy(g.beat('a1', 8).reply.members, 'refreshed');
  t.is(g.beat('a1', 8).reply.members, undefined);
  // A member that falls silent leaves at its timeout while the others beat: their lists lose it.
  for (let i = 0; i < 60; i++) {
    g.tick(500);
    for (const m of ['a2', 'x1']) g.beat(m, 9);
    g.beat('a1', 9);
  }
  t.deepEqual(g.beat('a1', 9).whole.members.map((m) => m.id), ['a1', 'a2', 'x1'], 'x2 left the list the agent holds, by id');
});

test('a body without mapToken gets the whole answer, ranked, with no token; a wrong or empty token gets the whole answer', (t) => {
  const g = group();
  for (const m of ['a1', 'a2', 'x1', 'x2']) g.beat(m, 4, { join: true, lease: 1 });
  const plain = g.beat('a1', 5, {}, false).reply;
  t.is(plain.mapToken, undefined);
  t.is(plain.members?.length, 4);
  t.truthy(plain.groupKey);
  t.truthy(plain.copyTo);
  t.deepEqual(Object.keys(plain), ['v', 'heartbeatMs', 'groupKey', 'firstUnit', 'nextUnit', 'ended', 'lease', 'members', 'holdersFrom', 'holders', 'copyTo'], 'exactly the fields of before');
  // Fuzz-style: any token that is not the current one, well formed or not, gets everything.
  const alloc = g.alloc;
  for (let i = 0; i < 500; i++) {
    const len = randomInt(0, 65);
    const token = i % 3 === 0 ? randomBytes(len).toString('base64url').slice(0, len) : String.fromCharCode(...Array.from({ length: len }, () => randomInt(1, 0xd7ff)));
    const raw = Buffer.from(JSON.stringify({ ...body('a1'), have: '', join: undefined, mapToken: token }));
    const b = parseStreamBeat(raw);
    if (typeof b === 'string') return t.fail(`a ${len}-character token was refused: ${b}`);
    const reply = alloc.heartbeat('cam', head(5), b, 1_000_500);
    t.is(reply.members?.length, 4);
    t.truthy(reply.groupKey);
    t.truthy(reply.copyTo);
    parseStreamBeatAnswer(Buffer.from(JSON.stringify(reply)));
  }
  t.regex(parseStreamBeat(Buffer.from(JSON.stringify({ ...body('a1'), have: '', join: undefined, mapToken: 'x'.repeat(65) }))) as string, /mapToken must be a string of at most 64/);
  t.regex(parseStreamBeat(Buffer.from(JSON.stringify({ ...body('a1'), have: '', join: undefined, mapToken: 7 }))) as string, /mapToken must be a string/);
});

test('the agent side: an answer without the map needs the token of the answer it holds; a bad one is dropped and the next beat asks for everything', (t) => {
  const g = group();
  g.beat('a1', 4, { join: true });
  const full = g.beat('x1', 4, { join: true }).whole;
  const tokenless: StreamBeatReply = { ...full, mapToken: full.mapToken };
  delete tokenless.members;
  delete tokenless.groupKey;
  delete tokenless.copyTo;
  const wire = Buffer.from(JSON.stringify(tokenless));
  t.throws(() => parseStreamBeatAnswer(wire), { message: /left out, but the mapToken is not the one/ });
  t.throws(() => parseStreamBeatAnswer(wire, { ...full, mapToken: 'other' }), { message: /not the one/ });
  t.deepEqual(parseStreamBeatAnswer(wire, full), full);
  const partial = { ...full } as Partial<StreamBeatAnswer>;
  delete partial.copyTo;
  t.throws(() => parseStreamBeatAnswer(Buffer.from(JSON.stringify(partial)), full), { message: /all be given or all be left out/ });
  // MapTokens: "" first, then the held token; a bad answer forgets it.
  const m = new MapTokens();
  t.deepEqual(m.field(), { mapToken: '', lean: true });
  m.parse(Buffer.from(JSON.stringify(full)));
  t.deepEqual(m.field(), { mapToken: full.mapToken, lean: true });
  t.deepEqual(m.parse(wire), full);
  t.throws(() => m.parse(Buffer.from('{"v":1}')));
  t.deepEqual(m.field(), { mapToken: '', lean: true });
  t.throws(() => m.parse(wire), { message: /not the one/ });
  // A server from 2026-12-01 refuses `lean`: the token goes on alone. One from before refuses the token: both off for good.
  t.false(m.refused(new Error('stream cam: POST /v1/streams/cam/heartbeat: BAD_BODY: unknown field "lease"'), silentLogger));
  t.true(m.refused(new Error('stream cam: POST /v1/streams/cam/heartbeat: BAD_BODY: unknown field "lean"'), silentLogger));
  t.deepEqual(m.field(), { mapToken: '' });
  t.false(m.refused(new Error('stream cam: POST /v1/streams/cam/heartbeat: BAD_BODY: unknown field "lean"'), silentLogger), 'refused once: not sent again');
  t.true(m.refused(new Error('stream cam: POST /v1/streams/cam/heartbeat: BAD_BODY: unknown field "mapToken"'), silentLogger));
  t.deepEqual(m.field(), {});
  const m2 = new MapTokens();
  t.true(m2.refused(new Error('BAD_BODY: unknown field "mapToken"'), silentLogger), 'a server before map tokens names mapToken first');
  t.deepEqual(m2.field(), {}, 'and neither field is sent again');
});

// Lean answers (docs/protocol.md, "Lean answers"): to a body with `lean` the answers also leave out
// what the agent works out or holds; the whole answer the agent builds is the same.
test('lean answers leave out what the agent holds or works out, and the answer it builds names the same units, lease and holders', (t) => {
  const sizes = (lean: boolean) => {
    const g = group(lean);
    for (const m of ['a1', 'a2', 'x1', 'x2']) g.beat(m, 4, { lease: 2, join: true });
    let hits = 0;
    let bytes = 0;
    for (let n = 5; n < 60; n++) {
      for (const m of ['a1', 'a2', 'x1', 'x2']) {
        const { reply, wire, whole } = g.beat(m, n, { lease: 1, receipts: n > 6 ? [n - 2] : [], receiptAgesMs: n > 6 ? [3] : [] });
        t.is(whole.nextUnit, n);
        t.is(whole.firstUnit, 0);
        t.is(whole.heartbeatMs, 1000);
        t.false(whole.ended);
        t.is(whole.members.length, 4);
        t.is(whole.copyTo.length, 1);
        t.deepEqual(whole.lease.units, reply.lease?.units ?? [], 'the units leased are the ones sent');
        t.deepEqual(holderIds(whole), holderIds(g.beat(m, n, {}, false).whole), 'holders name the members an answer without a token names');
        if (reply.members !== undefined) continue;
        hits++;
        bytes += wire.length;
        if (lean) {
          t.is(reply.mapToken, undefined, 'the token the member sent is not sent back');
          t.deepEqual(Object.keys(reply).filter((k) => !['v', 'lease', 'holdersFrom', 'holders'].includes(k)), [], `only what changes: ${wire}`);
          if (!reply.lease) t.is(whole.lease.units.length, 0);
        }
      }
    }
    t.true(hits >= 150, `most of the 220 answers left the map out (${hits})`);
    return bytes / hits;
  };
  const token = sizes(false);
  const lean = sizes(true);
  t.log(`mean answer without the map: ${token.toFixed(0)} B with the token alone, ${lean.toFixed(0)} B lean`);
  // What a lean answer leaves out: heartbeatMs, firstUnit 0, nextUnit, ended, retryAfterMs 0 and the token (~106 bytes),
  // and the whole lease when it leases nothing. Its holders window is the same.
  t.true(token - lean >= 100, `lean answers (${lean.toFixed(0)} B) are at least 100 bytes shorter than token-only ones (${token.toFixed(0)} B)`);
});

test('lean answers: firstUnit is sent when not 0, ended and heartbeatMs come with a new token, and the agent needs the answer it holds', (t) => {
  let ended = false;
  let first = 0;
  const g = group(true, (n) => ({ ...head(n, first), ended }));
  for (const m of ['a1', 'x1']) g.beat(m, 4, { join: true });
  g.beat('a1', 5);
  const hit = g.beat('a1', 6);
  t.is(hit.reply.members, undefined);
  t.is(hit.reply.firstUnit, undefined, 'firstUnit 0: left out');
  first = 3; // retention dropped units 0-2
  const kept = g.beat('a1', 7);
  t.is(kept.reply.members, undefined, 'retention does not change the token');
  t.is(kept.reply.firstUnit, 3);
  t.is(kept.whole.firstUnit, 3);
  ended = true; // the end marker
  const end = g.beat('a1', 7);
  t.truthy(end.reply.mapToken, 'ended changed: a new token and the whole map');
  t.is(end.reply.ended, true);
  t.is(end.reply.heartbeatMs, 1000);
  const after = g.beat('a1', 7);
  t.is(after.reply.ended, undefined, 'then left out again');
  t.true(after.whole.ended, 'and taken from the answer held');
  // The parser: a lean answer that leaves the map out needs the answer whose token was sent.
  const wire = Buffer.from(JSON.stringify({ v: 1, holdersFrom: 5, holders: [0, -1] }));
  t.throws(() => parseStreamBeatAnswer(wire), { message: /left out, but the mapToken is not the one/ });
  t.throws(() => parseStreamBeatAnswer(wire, { ...after.whole, mapToken: undefined }), { message: /not the one/ });
  const whole = parseStreamBeatAnswer(wire, after.whole);
  t.like(whole, { firstUnit: 0, nextUnit: 7, ended: true, heartbeatMs: 1000, lease: { units: [], retryAfterMs: 0 }, mapToken: after.whole.mapToken });
  t.is(parseStreamBeatAnswer(Buffer.from(JSON.stringify({ v: 1, nextUnit: 9, holdersFrom: 5, holders: [0, -1] })), after.whole).nextUnit, 9, 'nextUnit when sent');
  t.throws(() => parseStreamBeatAnswer(Buffer.from(JSON.stringify({ v: 1, nextUnit: 6, holdersFrom: 5, holders: [0, -1] })), after.whole), { message: /past nextUnit/ });
  t.throws(() => parseStreamBeatAnswer(Buffer.from(JSON.stringify({ v: 1, groupKey: after.whole.groupKey, members: [], copyTo: [], holdersFrom: 5, holders: [] }))), { message: /ended must be true or false/ }, 'a whole map needs ended and heartbeatMs');
  // The body: lean only with a token, and only true.
  const raw = (o: object) => parseStreamBeat(Buffer.from(JSON.stringify({ ...body('a1'), have: '', join: undefined, ...o })));
  t.regex(raw({ lean: true }) as string, /lean needs mapToken/);
  t.regex(raw({ lean: false, mapToken: '' }) as string, /lean must be true/);
  t.like(raw({ lean: true, mapToken: '' }), { lean: true, mapToken: '' });
});

/** A server from before a field (map tokens, or lean answers), as agents meet it: the real server behind a proxy that refuses bodies with that field as that server's parser does. */
async function oldServer(url: string, field = 'mapToken'): Promise<{ url: string; refused: () => number; close: () => Promise<void> }> {
  let refused = 0;
  const target = new URL(url);
  const proxy = http.createServer((req, res) => {
    const parts: Buffer[] = [];
    req.on('data', (c: Buffer) => parts.push(c));
    req.on('end', () => {
      const data = Buffer.concat(parts);
      if (req.url?.endsWith('/heartbeat') && data.includes(`"${field}"`)) {
        refused++;
        res.writeHead(400, { 'content-type': 'application/json' }).end(JSON.stringify({ error: 'BAD_BODY', message: `unknown field "${field}"` }));
        return;
      }
      const up = http.request({ host: target.hostname, port: target.port, path: req.url, method: req.method, headers: req.headers }, (r) => {
        res.writeHead(r.statusCode ?? 502, r.headers);
        r.pipe(res);
      });
      up.on('error', () => res.destroy());
      up.end(data);
    });
  });
  await new Promise<void>((r) => proxy.listen(0, '127.0.0.1', r));
  const port = (proxy.address() as { port: number }).port;
  return { url: `http://127.0.0.1:${port}`, refused: () => refused, close: () => new Promise((r) => (proxy.closeAllConnections(), proxy.close(() => r()))) };
}

test('on the LAN: agents that opt in take most heartbeat answers without the map, and agents of servers that refuse a field get every byte with whole or token-only answers', async (t) => {
  const { dir, keyPath, pubPath, store, url } = await startStreamServer(t);
  const key = await loadPrivateKey(keyPath);
  const trusted = [await loadPublicKey(pubPath)];
  const old = await oldServer(url);
  t.teardown(() => old.close());
  const noLean = await oldServer(url, 'lean');
  t.teardown(() => noLean.close());
  const UNIT = 64 * 1024;
  const source = randomBytes(2_000_000);
  const pub = await StreamPublisher.open(store, 'cam', key, { unitSize: UNIT, flushMs: 200 });
  await pub.push(source.subarray(0, 10_000));
  await pub.flush();
  const multicast = { address: `239.255.${randomInt(0, 256)}.${randomInt(1, 255)}`, port: randomInt(20000, 60000) };
  const agents = ['a', 'b', 'c', 'd'].map((id) => loopbackStreamAgent({ url: id === 'c' ? old.url : id === 'd' ? noLean.url : url, dir, stream: 'cam', id, multicast, trusted }));
  t.teardown(async () => {
    for (const a of agents) await a.close();
  });
  const runs = agents.map((a) => a.run());
  const alloc = streamRoutes(store).alloc;
  while (alloc.memberCount('cam') < 4) await new Promise((r) => setTimeout(r, 10));
  for (let off = 10_000; off < source.length; off += 10_000) {
    await pub.push(source.subarray(off, off + 10_000));
    await new Promise((r) => setTimeout(r, 20));
  }
  await pub.end();
  await pub.close();
  await Promise.all(runs);
  for (const id of ['a', 'b', 'c', 'd']) t.true((await fs.readFile(path.join(dir, `${id}.bin`))).equals(source), `agent ${id}: sink equals the source`);
  const beats = alloc.heartbeats.get('cam') ?? 0;
  t.log(`${beats} heartbeats, ${alloc.tokenHits} answered without the map; the old server refused mapToken ${old.refused()} time(s)`);
  t.is(old.refused(), 1, 'the agent of the old server sent mapToken once, then whole-answer bodies');
  t.false(agents[2]['tokens'].on);
  t.is(noLean.refused(), 1, 'the agent of the server from before lean answers sent lean once, then the token alone');
  t.true(agents[3]['tokens'].on);
  t.false(agents[3]['tokens'].lean);
  t.true(agents[0]['tokens'].lean);
  // a, b and d beat about as often as c; with three of four sending the token, well over half the answers leave the map out.
  t.true(alloc.tokenHits >= 0.5 * beats, `answers without the map ${alloc.tokenHits} >= half of ${beats}`);
});

// Issue 19: an answer's framing is as much as a heartbeat answer's body. On a connection that
// stays open the stream routes leave out `Connection: keep-alive` and `Keep-Alive` (HTTP/1.1
// persists by default), and the connection is still reused; one about to close says so.
test('stream answers leave out Connection and Keep-Alive on a kept connection, which is reused; a request that asks to close is told close', async (t) => {
  const { keyPath, store, url, server } = await startStreamServer(t);
  const pub = await StreamPublisher.open(store, 'cam', await loadPrivateKey(keyPath), { unitSize: 4096, flushMs: 50 });
  await pub.push(randomBytes(10_000));
  await pub.flush();
  let connections = 0;
  (server as unknown as { http: http.Server }).http.on('connection', () => connections++);
  const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
  t.teardown(() => agent.destroy());
  const get = (p: string, headers: http.OutgoingHttpHeaders = {}) =>
    new Promise<{ raw: string[]; reused: boolean; status: number; body: Buffer }>((resolve, reject) => {
      const req = http.get(`${url}/v1/streams/cam${p}`, { agent, headers }, (res) => {
        const parts: Buffer[] = [];
        res.on('data', (c: Buffer) => parts.push(c));
        res.on('end', () => resolve({ raw: res.rawHeaders, reused: req.reusedSocket, status: res.statusCode!, body: Buffer.concat(parts) }));
      });
      req.on('error', reject);
    });
  const names = (raw: string[]) => raw.filter((_, i) => i % 2 === 0).map((h) => h.toLowerCase());
  const answers = [await get(''), await get('/batches?from=0'), await get('/units/0'), await get('')];
  for (const a of answers) {
    t.is(a.status, 200);
    t.false(names(a.raw).includes('connection'), `no Connection header: ${names(a.raw).join(', ')}`);
    t.false(names(a.raw).includes('keep-alive'), 'no Keep-Alive header');
  }
  t.is(answers[2].body.length, 4096, 'a unit whole, without the headers');
  t.deepEqual(answers.map((a) => a.reused), [false, true, true, true], 'one connection for the four');
  t.is(connections, 1);
  const closing = await get('', { connection: 'close' });
  const i = closing.raw.findIndex((h) => h.toLowerCase() === 'connection');
  t.is(i >= 0 ? closing.raw[i + 1] : null, 'close', 'asked to close: told close');
  await pub.close();
});
