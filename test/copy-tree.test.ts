import test from 'ava';
import { createHash, randomBytes } from 'node:crypto';
import { AGENT_DEFAULTS } from '../src/agent/core/defaults';
import { LanCore } from '../src/agent/core/lan-core';
import { sealControl } from '../src/wire/auth';
import { bitmapBytes, encodeAnnounce, encodeData, fragmentCountFor, fragmentSlice } from '../src/wire/packet';
import { copyTreeChildren, copyTreeParent, copyTreeRing, copyTreeTargets } from '../src/wire/copy-tree';
import { CopyTreeView } from '../src/agent/core/copy-tree-view';
import type { CoreSplitMap } from '../src/agent/core/types';

/** For every origin: which positions receive, from whom (BFS from the origin down the tree). */
function deliveries(size: number, k: number, origin: number): number[] {
  const got = new Array<number>(size).fill(0);
  const queue = [origin];
  while (queue.length) {
    const at = queue.shift()!;
    for (const c of copyTreeChildren(size, k, origin, at)) {
      got[c]++;
      queue.push(c);
    }
  }
  return got;
}

test('every group gets every origin\'s units exactly once, and nobody sends a unit to more than k', (t) => {
  let trees = 0;
  for (let size = 1; size <= 40; size++) {
    for (let k = 1; k <= 6; k++) {
      for (let origin = 0; origin < size; origin++) {
        const got = deliveries(size, k, origin);
        for (let p = 0; p < size; p++) {
          if (got[p] !== (p === origin ? 0 : 1)) return t.fail(`size ${size}, k ${k}, origin ${origin}: position ${p} got ${got[p]} copies`);
          const kids = copyTreeChildren(size, k, origin, p);
          if (kids.length > k) return t.fail(`size ${size}, k ${k}: ${kids.length} children`);
          for (const c of kids) if (copyTreeParent(size, k, origin, c) !== p) return t.fail(`size ${size}, k ${k}, origin ${origin}: parent of ${c} is not ${p}`);
        }
        trees++;
      }
    }
  }
  t.is(trees, 6 * (40 * 41) / 2);
});

test('with k >= sites - 1 the tree is the full mesh of 1.4: the origin sends to every other group, nobody forwards', (t) => {
  for (let origin = 0; origin < 3; origin++) {
    t.deepEqual(copyTreeChildren(3, 4, origin, origin), [(origin + 1) % 3, (origin + 2) % 3]);
    for (let p = 0; p < 3; p++) if (p !== origin) t.deepEqual(copyTreeChildren(3, 4, origin, p), []);
  }
});

test('rotation spreads the forwarding: every group forwards for about 1/k of the origins, sending about (S-1)/S of a release in all', (t) => {
  const size = 50;
  const k = 4;
  for (let at = 0; at < size; at++) {
    // copies sent per unit share: its own units to k children, plus what it forwards for other origins
    let sent = 0;
    for (let o = 0; o < size; o++) sent += copyTreeChildren(size, k, o, at).length;
    // each origin's tree has size - 1 edges: summed over positions, size * (size - 1); so each position sends size - 1 shares
    t.is(sent, size - 1, `position ${at}`);
  }
  const targets = copyTreeTargets(size, k, 7);
  t.true(targets.length <= size - 1 && !targets.includes(7));
});

test('out-of-range input gives no children, not an exception', (t) => {
  t.deepEqual(copyTreeChildren(5, 2, 5, 0), []);
  t.deepEqual(copyTreeChildren(5, 0, 0, 0), []);
  t.deepEqual(copyTreeChildren(5, 2, 0, -1), []);
  t.deepEqual(copyTreeChildren(1, 2, 0, 0), []);
  t.is(copyTreeParent(5, 2, 9, 0), -1);
});

function mapOf(groups: string[], perGroup: number, extra: { id: string; group: string }[] = []): CoreSplitMap {
  const members: CoreSplitMap['members'] = [];
  groups.forEach((g, gi) => {
    for (let i = 0; i < perGroup; i++) members.push({ id: `${g}-m${i}`, group: g, address: `10.${gi}.0.${i + 1}`, dataPort: 7700, role: i === 0 ? 'gateway' : 'member', verifiedUnits: 0, complete: false });
  });
  for (const e of extra) members.push({ id: e.id, group: e.group, address: '10.9.9.9', dataPort: 7700, role: 'member', verifiedUnits: 0, complete: false });
  return { members, holders: [], groupComplete: false };
}

test('an agent derives the ring from its map: sorted group names, gateways only; a member joining or leaving changes nothing', (t) => {
  t.deepEqual(copyTreeRing(['s10', 's2', 's1', 's2']), ['s1', 's10', 's2']);
  const groups = ['site-e', 'site-a', 'site-c', 'site-b', 'site-f', 'site-d'];
  const view = new CopyTreeView(mapOf(groups, 3), 'site-c', 2);
  t.is(view.size, 6);
  t.is(view.at, 2);
  const own = view.own();
  t.is(own.origin, 2);
  t.deepEqual(own.dests.map((d) => d.member), ['site-d-m0', 'site-e-m0']);
  // for origin site-a (0), site-c (index 2) sends to indices 5 and 6 > 5: only site-f
  t.deepEqual(view.forwardTo(0).map((d) => d.member), ['site-f-m0']);
  const joined = new CopyTreeView(mapOf(groups, 3, [{ id: 'late', group: 'site-a' }]), 'site-c', 2);
  const left = new CopyTreeView(mapOf(groups, 2), 'site-c', 2);
  for (const v of [joined, left]) {
    t.deepEqual(v.own(), own);
    for (let o = 0; o < 6; o++) t.deepEqual(v.forwardTo(o), view.forwardTo(o));
  }
  // a group without a gateway endpoint is not in the ring; its members send to every gateway, untagged
  const m = mapOf(groups, 2);
  for (const r of m.members) if (r.group === 'site-c') r.dataPort = null;
  const orphan = new CopyTreeView(m, 'site-c', 2);
  t.is(orphan.at, -1);
  t.is(orphan.own().origin, undefined);
  t.is(orphan.own().dests.length, 5);
});

const TREE_UNIT = 64 * 1024;
const TREE_FB = 1200;
const TREE_GROUPS = ['site-a', 'site-b', 'site-c', 'site-d', 'site-e', 'site-f'];

/**
 * The gateway of site-b (ring position 1 of 6), k = 2, that heard site-a-m1 (the origin
 * member, at 10.0.0.2) announce: for origin site-a (0) it passes copies on to site-d and
 * site-e. `forward(u)` hands it every fragment of unit u as site-a-m1's forward copy.
 */
function treeGateway(units: number) {
  const bytes = randomBytes(units * TREE_UNIT);
  const manifest = { idBytes: randomBytes(16), size: bytes.length, unitSize: TREE_UNIT, unitCount: units, units: [...Array(units).keys()].map((u) => createHash('sha256').update(bytes.subarray(u * TREE_UNIT, (u + 1) * TREE_UNIT)).digest('hex')) };
  const key = randomBytes(32);
  const now = 1_000_000;
  const gw = new LanCore({ manifest, member: 'site-b-m0', group: 'site-b', wideGroup: 'w', senderId: 77, fragmentBytes: TREE_FB, have: new Uint8Array(bitmapBytes(units)), rateBytesPerSec: 20e6, crossRateBytesPerSec: 1e6, controlSeqStart: 1n, random: () => 0.5 }, now);
  const setMap = (map: CoreSplitMap, at: number) => gw.setSplitMap({ ...map, holders: Array(units).fill(0), groupKey: key.toString('base64'), copyTree: 2 }, at);
  setMap(mapOf(TREE_GROUPS, 2), now);
  const from = { address: '10.0.0.2', port: 7700 };
  gw.handleDatagram(sealControl(encodeAnnounce({ sender: 5, releaseId: manifest.idBytes, firstUnit: 0, unitCount: units, complete: false, have: new Uint8Array(bitmapBytes(units)) }), key, 1n), now, from);
  const fc = fragmentCountFor(TREE_UNIT, TREE_FB);
  const forward = (u: number) => {
    for (let f = 0; f < fc; f++) gw.handleDatagram(encodeData({ sender: 5, releaseId: manifest.idBytes, repair: false, forward: true, treeOrigin: 0, unit: u, fragment: f, fragmentCount: fc, fragmentBytes: TREE_FB, payload: fragmentSlice(bytes.subarray(u * TREE_UNIT, (u + 1) * TREE_UNIT), f, TREE_FB) }), now, from);
  };
  return { gw, now, fc, forward, setMap };
}

test('a gateway passes forward copies on to its children in the origin\'s tree, and stops passing on once its uplink queue is past the cap', (t) => {
  const units = 48;
  const { gw, fc, forward } = treeGateway(units);
  const queued = () => gw.crossPaths().reduce((s, p) => s + p.queued, 0);
  let sent = 0;
  for (let u = 0; u < units; u++) {
    forward(u);
    sent += fc;
    if (u === 0) {
      const to = gw.crossPaths().filter((p) => p.queued > 0).map((p) => p.to).sort();
      t.deepEqual(to, ['10.3.0.1:7700', '10.4.0.1:7700'], 'the first unit goes on to site-d and site-e\'s gateways');
      t.is(queued(), 2 * fc);
    }
  }
  // nothing transmitted (the uplink never drains here): the queue stops near the cap, the rest is not passed on
  const capDatagrams = Math.ceil(AGENT_DEFAULTS.treeForwardQueueMaxBytes / TREE_FB);
  t.true(queued() < capDatagrams + 2 * fc, `${queued()} datagrams queued to other sites`);
  t.true((gw.stats.drops['tree-forward-queue-full'] ?? 0) > 0);
  t.is(gw.stats.fragmentsForwarded, sent, 'every fragment still re-multicast on its LAN');
});

test('a group\'s gateway moves: copies still queued for the old one go to the new one, and nothing is queued twice', (t) => {
  const units = 4;
  // site-d is also a child in site-b's own tree, site-e only a forward target
  const { gw, now, fc, forward, setMap } = treeGateway(units);
  for (let u = 0; u < units; u++) forward(u);
  const view = () => new Map(gw.crossPaths().map((p) => [p.to, p]));
  const before = view();
  t.is(before.get('10.3.0.1:7700')?.queued, units * fc, 'site-d\'s gateway has every fragment queued');
  t.is(before.get('10.4.0.1:7700')?.queued, units * fc, 'and site-e\'s');
  // site-d's and site-e's gateways move to their second members (the provisional first gateway gave way to a measured one)
  const moved = mapOf(TREE_GROUPS, 2);
  for (const m of moved.members) if (m.group === 'site-d' || m.group === 'site-e') m.role = m.id.endsWith('-m1') ? 'gateway' : 'member';
  setMap(moved, now + 10);
  const after = view();
  for (const [old, next] of [['10.3.0.1:7700', '10.3.0.2:7700'], ['10.4.0.1:7700', '10.4.0.2:7700']]) {
    t.is(after.get(old)?.queued, 0, `nothing left for the old gateway ${old}`);
    t.is(after.get(old)?.movedAway, units * fc, `${old}: every queued copy counted as moved`);
    t.is(after.get(next)?.queued, units * fc, `the new gateway ${next} gets them, once`);
  }
  t.is(after.get('10.2.0.1:7700')?.movedAway ?? 0, 0, 'site-c\'s gateway did not move: its copies stay');
});
