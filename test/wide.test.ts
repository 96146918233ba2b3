import test, { ExecutionContext } from 'ava';
import { randomInt } from 'node:crypto';
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { sha256File } from '../src/storage/partial-store';
import { AgentProc, Fleet, startFleet } from './helpers/fleet';

/**
 * Wide-area groups on loopback: three LAN groups, each its own multicast group on lo,
 * three agents each, one wide-area group. (docs/wide-area.md)
 */
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const GROUPS = ['east', 'west', 'north'];

interface FleetView {
  groups: { release: string; group: string; wide: boolean; members: { id: string; group: string; role: string; complete: boolean }[] }[];
}

function startGroups(f: Fleet, extra: (id: string, group: string) => string[] = () => []): { id: string; group: string; a: AgentProc }[] {
  const base = randomInt(20000, 50000);
  const out: { id: string; group: string; a: AgentProc }[] = [];
  for (const [gi, group] of GROUPS.entries()) {
    const mc = `239.254.${randomInt(0, 256)}.${gi + 1}:${base + gi}`;
    for (let i = 1; i <= 3; i++) {
      const id = `${group}${i}`;
      const args = ['--group', group, '--multicast', mc, '--wide-group', 'fleet', '--report', path.join(f.dir, `${id}.json`), ...extra(id, group)];
      out.push({ id, group, a: f.spawnAgent(id, args) });
    }
  }
  return out;
}

async function reports(f: Fleet, ids: string[]) {
  return Promise.all(ids.map(async (id) => JSON.parse(await fs.readFile(path.join(f.dir, `${id}.json`), 'utf8')) as Record<string, number> & { path: string }));
}

async function allVerify(t: ExecutionContext, f: Fleet, agents: { id: string; a: AgentProc }[]): Promise<void> {
  const codes = await Promise.all(agents.map((x) => x.a.exit));
  t.deepEqual(codes, agents.map(() => 0), agents.map((x) => `${x.id}: ${x.a.stderr().slice(-400)}`).join("\n"));
  for (const r of await reports(f, agents.map((x) => x.id))) t.is(await sha256File(r.path), f.manifest.sha256);
}

test.serial('policy wide: 3 LAN groups x 3 agents get every unit from the server once for the whole wide-area group', async (t) => {
  const f = await startFleet(t, { size: 8 * 1024 * 1024 + 11, unitSize: 256 * 1024 });
  const agents = startGroups(f, () => ['--rate', '100']);
  // Gateways are chosen among members with a measured overhead: wait for the view that
  // has all 9 members and a gateway in each group (within the transfer).
  let view: FleetView | null = null;
  const gateways = (v: FleetView | null) => v?.groups[0]?.members.filter((m) => m.role === 'gateway').length ?? 0;
  for (let i = 0; i < 600 && !(view?.groups[0]?.members.length === 9 && gateways(view) === 3); i++) {
    view = f.server.fleet() as FleetView;
    await sleep(25);
  }
  await allVerify(t, f, agents);
  const g = view!.groups.find((x) => x.release === f.manifest.id)!;
  t.true(g.wide, 'one allocation for the wide-area group');
  t.is(g.group, 'fleet');
  t.deepEqual([...new Set(g.members.map((m) => m.group))].sort(), [...GROUPS].sort());
  for (const lg of GROUPS) t.is(g.members.filter((m) => m.group === lg && m.role === 'gateway').length, 1, `one gateway in ${lg}`);
  const sent = f.server.stats.unitBytesSent;
  // On a failure, each agent's warnings (a stall or relay says why it asked the server again).
  const why = () => agents.flatMap((x) => x.a.stderr().split('\n').filter((l) => /^warn/.test(l)).map((l) => `${x.id}: ${l.slice(0, 600)}`)).join('\n');
  t.true(sent <= 1.05 * f.manifest.size, `server sent ${sent} bytes for ${f.manifest.size} (${(sent / f.manifest.size).toFixed(3)}x) to 3 LAN groups; sent again: ${JSON.stringify(f.server.stats.resent)}\n${why()}`);
  const reps = await reports(f, agents.map((x) => x.id));
  t.true(reps.reduce((s, r) => s + r.crossGroupBytesSent, 0) > 0, 'copies crossed to other groups');
  t.true(reps.reduce((s, r) => s + r.fragmentsForwarded, 0) > 0, 'gateways re-multicast them');
  const sum = (k: string) => reps.reduce((s, r) => s + Number(r[k] ?? 0), 0);
  t.log(`cross-group sent ${(sum('crossGroupBytesSent') / f.manifest.size).toFixed(2)}x the release, received ${(sum('crossGroupBytes') / f.manifest.size).toFixed(2)}x; LAN repairs ${(sum('repairBytesSent') / f.manifest.size).toFixed(2)}x; copies ${(sum('copyBytesSent') / f.manifest.size).toFixed(2)}x`);
});

test.serial('copy tree of degree 1 (protocol 1.5, a chain over the 3 sites): gateways pass copies on, every unit from the server once, everyone verifies', async (t) => {
  const f = await startFleet(t, { size: 6 * 1024 * 1024 + 3, unitSize: 256 * 1024, allocator: { copyTreeDegree: 1 } });
  const agents = startGroups(f, () => ['--rate', '100']);
  await allVerify(t, f, agents);
  const sent = f.server.stats.unitBytesSent;
  t.true(sent <= 1.05 * f.manifest.size, `server sent ${(sent / f.manifest.size).toFixed(3)}x the release`);
  const reps = await reports(f, agents.map((x) => x.id));
  const size = f.manifest.size;
  // With k = 1 a member copies its own units to one gateway: what it sends across beyond
  // its own WAN bytes is what it passed on (and repairs). Each unit is passed on once, by
  // the gateway of the site after its origin in the ring (how much each passes on follows
  // how much the site before it fetched): about 1x the release in all, none without a tree.
  const passedOn = reps.map((r) => r.crossGroupBytesSent - r.wanBytes);
  const shares = passedOn.map((b) => (b / size).toFixed(2)).join(', ');
  t.true(Math.max(...passedOn) > 0.2 * size, `bytes sent across beyond each one's own fetches: ${shares} x the release`);
  const total = passedOn.reduce((a, b) => a + b, 0) / size;
  // (repairs on a loaded box add some; a unit passed on twice would make it 2x or more)
  t.true(total > 0.8 && total < 1.9, `passed on ${total.toFixed(2)}x the release in all (${shares})`);
  const across = reps.reduce((s, r) => s + r.crossGroupBytesSent, 0) / size;
  // each unit crosses to the 2 other sites once, plus repairs
  t.true(across >= 1.9 && across < 2.9, `cross-group bytes ${across.toFixed(2)}x the release`);
  t.log(`cross-group sent ${across.toFixed(2)}x the release; beyond own fetches per agent: ${passedOn.map((b) => (b / size).toFixed(2)).join(', ')}`);
});

test.serial('policies: group fetches once per LAN group, representative only through each group\'s best member, all-fetched waits for the whole release before the LAN exchange', async (t) => {
  for (const [policy, start] of [
    ['group', 'immediate'],
    ['representative', 'immediate'],
    ['wide', 'all-fetched'],
  ] as const) {
    // The 3 MiB take well under a second: without the start gate, an agent that boots a
    // few seconds late on a loaded box finds its LAN group done and gone and fetches the
    // release again (a CI run saw group at exactly 4.000x). So each allocation waits for
    // its members: 3 per LAN group, 9 for the wide-area group.
    const gate = { minMembers: policy === 'wide' ? 9 : 3, maxWaitMs: 60_000 };
    const f = await startFleet(t, { size: 3 * 1024 * 1024 + 5, unitSize: 256 * 1024, server: { policy, start }, allocator: gate });
    // info: a failure below quotes each agent's stall and relay lines.
    const agents = startGroups(f, () => ['--rate', '100', '--log-level', 'info']);
    await allVerify(t, f, agents);
    const sent = f.server.stats.unitBytesSent;
    const ratio = sent / f.manifest.size;
    const deferred = (await reports(f, agents.map((x) => x.id))).reduce((s, r) => s + r.unitsDeferred, 0);
    if (start === 'all-fetched') t.true(deferred > 0, 'units fetched before the whole release was held waited for the LAN exchange');
    else t.is(deferred, 0, `${policy}: copies go out as units arrive`);
    if (policy === 'wide') {
      t.true(ratio <= 1.05, `${policy}/${start}: ${ratio.toFixed(3)}x; ${JSON.stringify(f.server.stats)}`);
    } else {
      t.true(ratio >= 2.95 && ratio <= 3.15, `${policy}: ${ratio.toFixed(3)}x for 3 LAN groups; ${JSON.stringify(f.server.stats)}\n${agents.map((x) => `${x.id}: ${x.a.stderr().split('\n').filter((l: string) => /no progress|relay|hedg|verif|hash|rejoin|left/i.test(l)).slice(-4).join(' | ')}`).join('\n')}`);
      const reps = await reports(f, agents.map((x) => x.id));
      t.is(reps.reduce((s, r) => s + r.crossGroupBytesSent, 0), 0, `${policy}: nothing crosses between groups`);
    }
    if (policy === 'representative') {
      // Exactly one member per LAN group took bytes from the server.
      for (const lg of GROUPS) {
        const fetched = agents.filter((x) => x.group === lg && f.server.bytesSentTo(f.manifest.id, lg, x.id) > 0);
        t.is(fetched.length, 1, `${lg}: ${fetched.map((x) => x.id).join(', ')} fetched`);
      }
    }
  }
});

test.serial('the gateway of a LAN group is killed mid-transfer: the role moves within a heartbeat of its timeout and every other agent completes', async (t) => {
  const f = await startFleet(t, { size: 12 * 1024 * 1024, unitSize: 256 * 1024, memberTimeoutMs: 1500 });
  const agents = startGroups(f, () => ['--rate', '24', '--linger', '30']);
  let gw: string | null = null;
  for (let i = 0; i < 200 && !gw; i++) {
    const g = (f.server.fleet() as FleetView).groups[0];
    if (g?.members.length === 9) gw = g.members.find((m) => m.group === 'west' && m.role === 'gateway')?.id ?? null;
    await sleep(50);
  }
  t.truthy(gw, 'west has a gateway');
  await sleep(800);
  const victim = agents.find((x) => x.id === gw)!;
  victim.a.child.kill('SIGKILL');
  const killedAt = Date.now();
  let next: string | null = null;
  while (!next && Date.now() - killedAt < 60_000) {
    const g = (f.server.fleet() as FleetView).groups[0];
    const w = g.members.find((m) => m.group === 'west' && m.role === 'gateway');
    if (!g.members.some((m) => m.id === gw)) t.truthy(w, 'the dead gateway left and another member holds the role in the same view');
    if (w && w.id !== gw) next = w.id;
    else await sleep(50);
  }
  t.truthy(next, 'a new gateway for west');
  // No wall-clock bound (a loaded box schedules 9 agents on 2 cores as it can): the role
  // moves in the same step that drops the dead member, so no view lists it without a gateway.
  const moved = Date.now() - killedAt;
  t.log(`gateway ${gw} killed; ${next} took over ${moved} ms later`);
  await allVerify(t, f, agents.filter((x) => x !== victim));
  // The other groups' members learned the new gateway from their heartbeats and sent it copies or repairs.
  const [rep] = await reports(f, [next!]);
  t.true(rep.fragmentsForwarded > 0, `${next} re-multicast ${rep.fragmentsForwarded} fragments as the new gateway`);
});

test.serial('a straggler: its overdue leases are hedged to another member, the first verified copy wins, and the hedged bytes are counted', async (t) => {
  const f = await startFleet(t, { size: 4 * 1024 * 1024, unitSize: 256 * 1024, allocator: { hedgeMinMs: 800, hedgeFactor: 3 } });
  const args = (id: string) => ['--report', path.join(f.dir, `${id}.json`), ...(id === 'slow' ? ['--wan-rate', '0.2'] : ['--rate', '200'])];
  // The straggler first, so it holds leases before the fast members take everything else.
  const agents = [{ id: 'slow', a: f.spawnAgent('slow', args('slow')) }];
  const leasesOfSlow = () => ((f.server.fleet() as { groups: { members: { id: string; leases: number }[] }[] }).groups[0]?.members.find((m) => m.id === 'slow')?.leases ?? 0);
  for (let i = 0; i < 300 && leasesOfSlow() === 0; i++) await sleep(50);
  t.true(leasesOfSlow() > 0, 'the straggler holds leases');
  for (const id of ['fast1', 'fast2']) agents.push({ id, a: f.spawnAgent(id, args(id)) });
  await allVerify(t, f, agents);
  const hedgedUnitsNow = [...(f.server as unknown as { groups: Map<string, { hedgedUnits: number }> }).groups.values()].reduce((s, a) => s + a.hedgedUnits, 0);
  t.true(f.server.stats.hedgedBytes > 0, `hedged bytes are counted: ${JSON.stringify(f.server.stats)}, ${hedgedUnitsNow} hedged unit(s)`);
  const g = (f.server as unknown as { groups: Map<string, { hedgedUnits: number }> }).groups;
  const hedged = [...g.values()].reduce((s, a) => s + a.hedgedUnits, 0);
  t.true(hedged >= 1, `${hedged} hedged unit(s)`);
  t.log(`hedged ${hedged} unit(s), ${f.server.stats.hedgedBytes} bytes`);
});
