import { readPersistedBitmap, sha256File } from '../src/storage/partial-store';
import { namespaceTest } from './helpers/netns';
import { netFleet, MCAST_PORT } from './netns/fleet';
import { lan, sites } from './netns/topology';

const MIB = 1024 * 1024;
/**
 * One fleet at a time: three of them at once (24 agent processes and three servers on 2
 * cores, beside the other test files) tripped the wide-area test's bytes bound twice in
 * three CI passes, by the stall path (a group waited 15 s on a holder's units and asked
 * the server), which says more about the box than about the protocol.
 */
const serial = { serial: true };

namespaceTest('sites: 2 sites x 3 agents, 50 Mbit/s WAN, 2% loss, 16 MiB: all verify, <= 1.05x per group, LAN rate held', async (t) => {
  const topo = sites(2, 3, 50);
  t.teardown(() => topo.destroy());
  await topo.setLoss(2, MCAST_PORT);
  const f = await netFleet(topo, { sizeBytes: 16 * MIB });
  t.teardown(() => f.cleanup());
  const rateMbit = 20;
  const before = await Promise.all(topo.agents.map((h) => topo.txBytes(h)));
  const started = Date.now();
  const agents = topo.sites.flatMap((hosts, k) => hosts.map((h, i) => f.startAgent(h, `s${k + 1}a${i + 1}`, `site${k + 1}`, ['--rate', String(rateMbit)])));
  const codes = await Promise.all(agents.map((a) => a.exit));
  const seconds = (Date.now() - started) / 1000;
  t.deepEqual(codes, agents.map(() => 0), agents.map((a) => `${a.id}: ${a.stderr()}`).join('\n'));
  for (const a of agents) t.is(await sha256File((await a.report()).path), f.sourceSha, a.id);
  const stats = await f.serverStats();
  for (const g of ['site1', 'site2']) {
    t.true(stats.unitBytesSentByGroup[g] <= 1.05 * f.manifest.size, `${g}: server sent ${stats.unitBytesSentByGroup[g]} for ${f.manifest.size}`);
  }
  // LAN rate: everything an agent put on its LAN interface (copies, repairs, NACKs,
  // announces, plus its HTTP requests and TCP ACKs, which share the interface here)
  // stays within the token bucket's rate x time + burst, with 1 MiB for the TCP share.
  const after = await Promise.all(topo.agents.map((h) => topo.txBytes(h)));
  for (const [i, a] of agents.entries()) {
    const sent = after[i] - before[i];
    const bound = ((rateMbit * 1e6) / 8) * seconds + 256 * 1024 + MIB;
    t.true(sent <= bound, `${a.id} sent ${sent} bytes in ${seconds.toFixed(1)} s; bound ${Math.round(bound)}`);
  }
  const reps = await Promise.all(agents.map((a) => a.report()));
  t.true(reps.some((r) => Number(r.nacksSent) > 0), 'the 2% loss was repaired with NACKs');
}, serial);

namespaceTest('lan: one agent joins late and one is killed mid-transfer and restarted: all verify', async (t) => {
  const topo = lan(4);
  t.teardown(() => topo.destroy());
  const f = await netFleet(topo, { sizeBytes: 24 * MIB, unitSize: 512 * 1024 });
  t.teardown(() => f.cleanup());
  const [h1, h2, h3, h4] = topo.agents;
  const rate = ['--rate', '40'];
  const a1 = f.startAgent(h1, 'a1', 'lan', rate);
  const a2 = f.startAgent(h2, 'a2', 'lan', rate);
  const victim = f.startAgent(h3, 'a3', 'lan', rate);
  // Kill a3 once it holds some units (its bitmap and journal name one), then start it again.
  const releaseDir = `${f.dir}/a3/${f.manifest.id}`;
  for (let i = 0; i < 400; i++) {
    const bits = await readPersistedBitmap(releaseDir, f.manifest.idBytes, f.manifest.unitCount);
    if (bits && bits.some((b) => b !== 0)) break;
    await new Promise((r) => setTimeout(r, 25));
  }
  victim.child.kill('SIGKILL');
  await victim.exit;
  const late = f.startAgent(h4, 'a4', 'lan', rate);
  const again = f.startAgent(h3, 'a3', 'lan', rate);
  const all = [a1, a2, again, late];
  const codes = await Promise.all(all.map((a) => a.exit));
  t.deepEqual(codes, [0, 0, 0, 0], all.map((a) => `${a.id}: ${a.stderr()}`).join('\n'));
  for (const a of all) t.is(await sha256File((await a.report()).path), f.sourceSha, a.id);
  const rep = await again.report();
  t.true(Number(rep.unitsResumed) > 0, 'the restarted agent resumed from its bitmap');
  const stats = await f.serverStats();
  t.true(stats.unitBytesSent <= 1.1 * f.manifest.size, `server sent ${stats.unitBytesSent} for ${f.manifest.size}`);
}, serial);

/** What held an agent's downloads for the copy backlog: in flight (the longest too), and before a new lease. */
const holds = (r: Record<string, unknown>) => `downloads paused ${r.downloadPauses} times, ${r.downloadPausedMs} ms, longest ${r.downloadPauseMaxMs} ms; leases held ${r.leaseHolds} times, ${r.leaseHeldMs} ms`;

namespaceTest('wide: 3 sites x 3 agents in one wide-area group, 50 Mbit/s WAN, 1% loss, 32 MiB: all verify, <= 1.05x from the server for the whole group besides at most 4 units re-sent by relay', async (t) => {
  const topo = sites(3, 3, 50, { interSite: true });
  t.teardown(() => topo.destroy());
  await topo.setLoss(1, MCAST_PORT);
  const f = await netFleet(topo, { sizeBytes: 32 * MIB });
  t.teardown(() => f.cleanup());
  const agents = topo.sites.flatMap((hosts, k) => hosts.map((h, i) => f.startAgent(h, `w${k + 1}a${i + 1}`, `site${k + 1}`, ['--wide-group', 'fleet', '--rate', '40'])));
  const codes = await Promise.all(agents.map((a) => a.exit));
  t.deepEqual(codes, agents.map(() => 0), agents.map((a) => `${a.id}: ${a.stderr()}`).join('\n'));
  for (const a of agents) t.is(await sha256File((await a.report()).path), f.sourceSha, a.id);
  const stats = await f.serverStats();
  // On a failure, say why the origin sent again: each agent's last lines (stalls, relays, refused requests).
  // (An agent warns of a stall with what it knew of each missing unit: its holder, its forwarded NACKs, its data.)
  const reps = await Promise.all(agents.map((a) => a.report()));
  // Every line: the agents log at warn, so each is a warning or an error (a run that failed so also counted one bad request).
  const why = () => agents.map((a, i) => `${a.id}: ${a.stderr().split('\n').filter((l) => l.trim()).slice(-6).join(' | ')} drops ${JSON.stringify(reps[i].drops)}; ${holds(reps[i])}`).join('\n');
  // Each unit leaves the server once for the whole wide-area group, except those a gateway had
  // the server relay (its forwarded NACK unanswered for 10 s with the holder silent to it, or no
  // progress at all: docs/wide-area.md), the designed fallback. Load beside this test triggers
  // it now and then: 2 and 3 units of 32 in two CI runs on 2026-12-03 that also had a busy loop
  // or other heavy tests beside them (the copies to other sites backed up for over a minute,
  // "leases held" below), and earlier stops saw 1.06x. So the bytes besides those re-sends are
  // bounded, and the re-sends by count: a wide-area group that did not work would send each unit
  // to every site (3x), or relay most of them.
  const resent = (stats as unknown as { resent: Record<'relayed' | 'stalled', { units: number; bytes: number }> }).resent;
  const relayedUnits = resent.relayed.units + resent.stalled.units;
  const firstSends = stats.unitBytesSent - resent.relayed.bytes - resent.stalled.bytes;
  t.true(firstSends <= 1.05 * f.manifest.size, `server sent ${stats.unitBytesSent} for ${f.manifest.size} (${(firstSends / f.manifest.size).toFixed(3)}x besides re-sends by relay) to 3 sites; ${JSON.stringify(stats)}\n${why()}`);
  t.true(relayedUnits <= 4, `${relayedUnits} of 32 units re-sent by relay; ${JSON.stringify(resent)}\n${why()}`);
  const cross = reps.reduce((s, r) => s + Number(r.crossGroupBytesSent), 0);
  t.true(cross > f.manifest.size, `cross-site copies: ${cross} bytes`);
  t.log(`server ${(stats.unitBytesSent / f.manifest.size).toFixed(3)}x; cross-site ${(cross / f.manifest.size).toFixed(2)}x the release; re-sends ${JSON.stringify(resent)}`);
  for (const r of reps) {
    const paths = (r.crossPaths as unknown as { to: string; rateBytesPerSec: number; lastLoss: number; lastRttMs: number | null; congestionEvents: number; copyBytes: number; repairBytes: number; queued: number; movedAway: number }[]) ?? [];
    t.log(`${r.member}: ${Number(r.seconds).toFixed(1)} s; ${holds(r)}; paces ${paths.map((p) => `${p.to} ${((p.rateBytesPerSec * 8) / 1e6).toFixed(1)} Mbit/s loss ${(p.lastLoss * 100).toFixed(1)}% rtt ${p.lastRttMs} ms (${p.congestionEvents} congested) copies ${(p.copyBytes / MIB).toFixed(1)} MiB repairs ${(p.repairBytes / MIB).toFixed(1)} MiB, ${p.queued} left queued${p.movedAway ? `, ${p.movedAway} moved to its group's next gateway` : ''}`).join(', ')}`);
  }
  const sum = (k: 'copyBytes' | 'repairBytes') => reps.reduce((s, r) => s + ((r.crossPaths as unknown as Record<string, number>[]) ?? []).reduce((x, p) => x + p[k], 0), 0);
  t.log(`to other sites: copies ${(sum('copyBytes') / MIB).toFixed(1)} MiB, repairs ${(sum('repairBytes') / MIB).toFixed(1)} MiB (every unit once to each other site: ${((2 * f.manifest.size) / MIB).toFixed(0)} MiB)`);
}, serial);
