import test from 'ava';
import { randomBytes, randomInt } from 'node:crypto';
import * as dgram from 'node:dgram';
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { sha256File } from '../src/storage/partial-store';
import { sealControl } from '../src/wire/auth';
import { decodePacket, encodeNack, PacketType } from '../src/wire/packet';
import { startFleet } from './helpers/fleet';

/**
 * Issue 13's attacks on the agents, each on loopback. After each: the transfer
 * completes, bytes from the origin stay within the existing bound (1.02x the release
 * per LAN group, as in e2e), and the agents' counters show the attack.
 */
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

interface Report {
  path: string;
  drops: Record<string, number>;
  repairBytesSent: number;
  crossGroupBytesSent: number;
}

type FleetView = { groups: { members: { id: string; address: string | null; dataPort: number | null; complete: boolean }[] }[] };

test('replayed NACKs are refused for the life of the release (not only 5 s), and repairs never go to a NACK\'s unregistered source', async (t) => {
  const f = await startFleet(t, { size: 4 * 1024 * 1024, unitSize: 256 * 1024 });
  const [group, portStr] = f.multicast.split(':');
  const port = Number(portStr);
  // A compromised member ("blocker"): it holds the group key and keeps the group
  // incomplete, so a and b stay to serve repairs while we attack them.
  // Two of them: an agent counts a departed peer as complete for up to 5 s, and c leaves.
  let groupKey: Buffer | null = null;
  let beating = true;
  const beat = async () => {
    while (beating) {
      for (const member of ['blocker1', 'blocker2']) {
        const ref = { release: f.manifest.id, group: 'g1', member };
        const r = await fetch(`${f.url}/v1/heartbeat`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(ref) }).catch(() => null);
        if (r?.ok) groupKey = Buffer.from(((await r.json()) as { groupKey: string }).groupKey, 'base64');
      }
      await sleep(150);
    }
  };
  const beater = beat();
  t.teardown(async () => {
    beating = false;
    await beater;
  });
  // Capture every NACK on the LAN, and when each sender was last heard.
  const sniff = dgram.createSocket({ type: 'udp4', reuseAddr: true });
  const nacks: { sender: number; bytes: Buffer }[] = [];
  const lastHeard = new Map<number, number>();
  sniff.on('message', (m) => {
    const d = decodePacket(m);
    if (!d.ok) return;
    lastHeard.set(d.packet.sender, Date.now());
    if (d.packet.type === PacketType.NACK) nacks.push({ sender: d.packet.sender, bytes: Buffer.from(m) });
  });
  await new Promise<void>((r) => sniff.bind(port, () => (sniff.addMembership(group, '127.0.0.1'), r())));
  t.teardown(() => sniff.close());
  const attacker = dgram.createSocket({ type: 'udp4' });
  let reflected = 0;
  attacker.on('message', (m) => (reflected += m.length));
  await new Promise<void>((r) => attacker.bind(0, '127.0.0.1', () => r()));
  attacker.setMulticastInterface('127.0.0.1');
  t.teardown(() => attacker.close());

  const report = (id: string) => path.join(f.dir, `${id}.json`);
  const a = f.spawnAgent('a', ['--linger', '60', '--report', report('a')]);
  const b = f.spawnAgent('b', ['--linger', '60', '--report', report('b')]);
  await sleep(300);
  // c loses a fifth of what it receives, so it NACKs; it finishes and leaves.
  const c = f.spawnAgent('c', ['--loss', '20', '--linger', '0', '--report', report('c')]);
  t.is(await c.exit, 0, c.stderr());
  const cLeft = Date.now();
  t.true(nacks.length > 0, 'c sent NACKs');
  // Replay them after c has been silent longer than the old 5 s peer timeout.
  await sleep(Math.max(0, cLeft + 6500 - Date.now()));
  const stale = nacks.filter((n) => Date.now() - (lastHeard.get(n.sender) ?? 0) > 6000);
  t.true(stale.length > 0, 'NACKs of a sender silent for 6 s');
  const view = f.server.fleet() as FleetView;
  const endpoints = view.groups[0].members.filter((m) => (m.id === 'a' || m.id === 'b') && m.dataPort && m.address).map((m) => ({ address: m.address!, port: m.dataPort! }));
  t.is(endpoints.length, 2, 'a and b are still serving');
  for (const n of stale) {
    attacker.send(n.bytes, port, group);
    for (const e of endpoints) attacker.send(n.bytes, e.port, e.address);
  }
  // A fresh, properly sealed NACK (a compromised member) from an address no member registered:
  // no repairs come back to it (no reflection onto a third party).
  t.truthy(groupKey);
  // The agents' fragment grid, from a captured NACK (every unit here is full-size).
  const grid = decodePacket(nacks[0].bytes);
  if (!grid.ok || grid.packet.type !== PacketType.NACK) return t.fail('captured NACK does not decode');
  const { fragmentCount, fragmentBytes } = grid.packet;
  const fresh = (unit: number) =>
    sealControl(encodeNack({ sender: randomInt(1, 2 ** 32), releaseId: f.manifest.idBytes, unit, fragmentCount, fragmentBytes, missing: new Uint8Array(Math.ceil(fragmentCount / 8)).fill(0xff) }), groupKey!, BigInt(Date.now()) * 1000n + 1n);
  for (let u = 0; u < f.manifest.unitCount; u++) for (const e of endpoints) attacker.send(fresh(u), e.port, e.address);
  await sleep(1500);
  t.is(reflected, 0, 'no repair bytes reached the spoofed source');
  // Let the group finish: the blocker stops and d goes; both time out, and a and b end their linger.
  beating = false;
  const codes = await Promise.all([a.exit, b.exit]);
  t.deepEqual(codes, [0, 0], a.stderr() + b.stderr());
  let replayed = 0;
  let unregistered = 0;
  for (const id of ['a', 'b', 'c']) {
    const rep = JSON.parse(await fs.readFile(report(id), 'utf8')) as Report;
    t.is(await sha256File(rep.path), f.manifest.sha256, id);
    replayed += rep.drops.replayed ?? 0;
    unregistered += rep.drops['unregistered-source'] ?? 0;
  }
  t.log(`${stale.length} NACKs replayed to 2 agents by multicast and unicast: ${replayed} dropped as replays; ${unregistered} fresh NACKs from an unregistered source dropped`);
  t.true(replayed >= 4 * stale.length, 'every replay (2 agents x multicast and unicast) was dropped');
  t.true(unregistered >= f.manifest.unitCount, 'the unregistered source is counted');
  t.true(f.server.stats.unitBytesSent <= 1.02 * f.manifest.size, `origin sent ${f.server.stats.unitBytesSent} bytes for a ${f.manifest.size}-byte release`);
});

test('a heartbeat under a real member\'s id with another token (a spoofed join, a lying have) is refused; the group completes', async (t) => {
  const tokens: Record<string, string> = {};
  for (const id of ['a', 'b', 'c', 'liar']) tokens[id] = randomBytes(16).toString('hex');
  const f = await startFleet(t, { size: 4 * 1024 * 1024, unitSize: 128 * 1024, server: { tokens } });
  const report = (id: string) => path.join(f.dir, `${id}.json`);
  const agents = ['a', 'b', 'c'].map((id) => {
    const tf = path.join(f.dir, `${id}.token`);
    return { id, tf };
  });
  for (const x of agents) await fs.writeFile(x.tf, tokens[x.id]);
  const procs = agents.map((x) => f.spawnAgent(x.id, ['--token-file', x.tf, '--linger', '5', '--report', report(x.id)]));
  // The liar: every 100 ms, all ones under each real member's id, and a spoofed join.
  const all = Buffer.alloc(Math.ceil(f.manifest.unitCount / 8), 0xff).toString('base64');
  let lying = true;
  let refused = 0;
  const lie = (async () => {
    while (lying) {
      for (const victim of ['a', 'b', 'c']) {
        for (const p of ['/v1/heartbeat', '/v1/join']) {
          const r = await fetch(`${f.url}${p}`, {
            method: 'POST',
            headers: { 'content-type': 'application/json', authorization: `Bearer ${tokens.liar}` },
            body: JSON.stringify({ release: f.manifest.id, group: 'g1', member: victim, have: all }),
          }).catch(() => null);
          if (r?.status === 403) refused++;
        }
      }
      await sleep(100);
    }
  })();
  t.teardown(async () => {
    lying = false;
    await lie;
  });
  const codes = await Promise.all(procs.map((p) => p.exit));
  lying = false;
  await lie;
  for (const [i, x] of agents.entries()) {
    t.is(codes[i], 0, procs[i].stderr());
    const rep = JSON.parse(await fs.readFile(report(x.id), 'utf8')) as Report;
    t.is(await sha256File(rep.path), f.manifest.sha256);
  }
  t.true(refused > 0);
  t.is(f.server.stats.limits.member_of_other_token, refused, 'each refusal is counted');
  t.true(f.server.stats.unitBytesSent <= 1.02 * f.manifest.size, `origin sent ${f.server.stats.unitBytesSent} bytes for a ${f.manifest.size}-byte release`);
});

test('a lying server: a unit that fails verification is fetched again with backoff, reported after 3 failures, logged and shown in `fleet`; it completes once the store is fixed', async (t) => {
  const lines: string[] = [];
  const logger = { debug: () => undefined, info: () => undefined, warn: (m: string) => lines.push(m), error: (m: string) => lines.push(m) };
  const f = await startFleet(t, { size: 1024 * 1024, unitSize: 128 * 1024, server: { logger: logger as never } });
  const data = path.join(f.dir, 'store', 'releases', f.manifest.id, 'data');
  const bad = 3;
  const fd = await fs.open(data, 'r+');
  const good = Buffer.alloc(64);
  await fd.read(good, 0, 64, bad * 128 * 1024);
  await fd.write(randomBytes(64), 0, 64, bad * 128 * 1024);
  const a = f.spawnAgent('a', ['--linger', '0', '--report', path.join(f.dir, 'a.json')]);
  const fetches = () => f.server.fetchCount(f.manifest.id, 'g1', 'a', bad);
  for (let i = 0; i < 400 && f.server.stats.badUnitReports === 0; i++) await sleep(25);
  t.is(f.server.stats.badUnitReports, 1, 'reported after its third failure');
  const atReport = fetches();
  t.is(atReport, 3);
  // Backoff: 0.5, 1, 2, 4 s (x0.75-1.25): within the next 3 s at most 2 more fetches (no backoff: dozens).
  await sleep(3000);
  t.true(fetches() - atReport <= 2, `${fetches() - atReport} fetches in 3 s after the report`);
  t.regex(lines.join('\n'), new RegExp(`member a got unit ${bad} from this server 3 times and it failed verification every time`));
  const view = await runCliJson(f.url);
  t.regex(view, new RegExp(`! a: unit ${bad} from the server failed verification 3 times in a row`));
  // The operator fixes the store: the next refetch verifies and the agent completes.
  await fd.write(good, 0, 64, bad * 128 * 1024);
  await fd.close();
  t.is(await a.exit, 0, a.stderr());
  const rep = JSON.parse(await fs.readFile(path.join(f.dir, 'a.json'), 'utf8')) as Report & { badUnitReports: number; unitsRejected: number };
  t.is(await sha256File(rep.path), f.manifest.sha256);
  t.true(rep.badUnitReports >= 1);
  t.true(rep.unitsRejected >= 3);
  t.true(f.server.stats.unitBytesSent <= f.manifest.size + fetches() * 128 * 1024, 'only the bad unit was sent again');
});

async function runCliJson(url: string): Promise<string> {
  const { runCli } = await import('./helpers/fleet');
  const r = await runCli(['fleet', '--server', url, '--plain-http']);
  return r.stdout;
}

test('the server under slowloris, 4 MiB nested bodies, a group flood and token guessing at once: the transfer completes and every attack shows in a counter', async (t) => {
  const net = await import('node:net');
  const tokens: Record<string, string> = {};
  for (const id of ['a', 'b', 'c', 'mallory']) tokens[id] = randomBytes(16).toString('hex');
  const f = await startFleet(t, { size: 4 * 1024 * 1024, unitSize: 128 * 1024, server: { tokens, limits: { headersTimeoutMs: 2000, bodyTimeoutMs: 2000, maxGroupsPerRelease: 50 } } });
  const { port } = new URL(f.url);
  let attacking = true;
  const socks: import('node:net').Socket[] = [];
  t.teardown(() => {
    attacking = false;
    socks.forEach((s) => s.destroy());
  });
  // Slowloris from 127.0.0.2: connections that never finish their headers, replaced as they are cut.
  const slow = (async () => {
    while (attacking) {
      while (socks.filter((s) => !s.destroyed).length < 200 && attacking) {
        const s = net.connect({ port: Number(port), host: '127.0.0.1', localAddress: '127.0.0.2' });
        s.on('error', () => undefined);
        s.resume();
        s.write('POST /v1/heartbeat HTTP/1.1\r\nhost: x\r\n');
        socks.push(s);
      }
      await sleep(100);
    }
  })();
  // mallory (a valid token) from 127.0.0.3: 4 MiB of nesting, heartbeats naming new groups, a second member id.
  const { Agent: HttpAgent, request } = await import('node:http');
  const viaAddr = new HttpAgent({ localAddress: '127.0.0.3', keepAlive: true } as import('node:http').AgentOptions);
  t.teardown(() => viaAddr.destroy());
  const postFrom = (p: string, body: string | Buffer, token: string) =>
    new Promise<number>((resolve) => {
      const req = request({ host: '127.0.0.1', port: Number(port), path: p, method: 'POST', agent: viaAddr, headers: { 'content-type': 'application/json', authorization: `Bearer ${token}`, 'content-length': Buffer.byteLength(body) } }, (res) => {
        res.resume();
        res.on('end', () => resolve(res.statusCode ?? 0));
      });
      req.on('error', () => resolve(0));
      req.end(body);
    });
  const deep = Buffer.from('['.repeat(2 << 20) + ']'.repeat(2 << 20));
  let groupsAsked = 0;
  const mallory = (async () => {
    while (attacking) {
      await postFrom('/v1/heartbeat', deep, tokens.mallory);
      for (let i = 0; i < 20; i++) await postFrom('/v1/heartbeat', JSON.stringify({ release: f.manifest.id, group: `flood${groupsAsked++}`, member: 'mallory' }), tokens.mallory);
      await postFrom('/v1/heartbeat', JSON.stringify({ release: f.manifest.id, group: 'g1', member: 'mallory2' }), tokens.mallory);
      await sleep(50);
    }
  })();
  // Token guessing from 127.0.0.4.
  const guessAgent = new HttpAgent({ localAddress: '127.0.0.4', keepAlive: true } as import('node:http').AgentOptions);
  t.teardown(() => guessAgent.destroy());
  const guess = (async () => {
    while (attacking) {
      await new Promise<void>((resolve) => {
        const req = request({ host: '127.0.0.1', port: Number(port), path: '/v1/releases', agent: guessAgent, headers: { authorization: `Bearer ${randomBytes(16).toString('hex')}` } }, (res) => {
          res.resume();
          res.on('end', () => resolve());
        });
        req.on('error', () => resolve());
        req.end();
      });
    }
  })();
  await sleep(500);
  const procs = ['a', 'b', 'c'].map((id) => {
    const tf = path.join(f.dir, `${id}.token`);
    return { id, tf };
  });
  for (const p of procs) await fs.writeFile(p.tf, tokens[p.id]);
  const agents = procs.map((p) => f.spawnAgent(p.id, ['--token-file', p.tf, '--linger', '5', '--report', path.join(f.dir, `${p.id}.json`)]));
  const codes = await Promise.all(agents.map((a) => a.exit));
  // Keep the slow connections past one header timeout before looking at the counters.
  await sleep(2500);
  attacking = false;
  await Promise.all([slow, mallory, guess]);
  for (const [i, p] of procs.entries()) {
    t.is(codes[i], 0, agents[i].stderr());
    const rep = JSON.parse(await fs.readFile(path.join(f.dir, `${p.id}.json`), 'utf8')) as Report;
    t.is(await sha256File(rep.path), f.manifest.sha256);
  }
  const L = f.server.stats.limits;
  t.log(JSON.stringify(Object.fromEntries(Object.entries(L).filter(([, v]) => v > 0))));
  t.true(f.server.stats.unitBytesSent <= 1.02 * f.manifest.size, `origin sent ${f.server.stats.unitBytesSent} bytes for a ${f.manifest.size}-byte release`);
  t.true(L.connections_per_client > 0, 'slowloris hit the per-client cap');
  t.true(L.header_timeout > 0, 'slowloris connections were cut');
  t.true(L.body_too_large > 0, 'nested bodies refused by size');
  // mallory's one member moves from group to group (it is in one per release); the empty
  // groups it leaves are reclaimed at the cap, so the flood never locks real groups out.
  t.true(L.empty_groups_reclaimed > 0, 'the group flood made the server reclaim empty groups');
  t.is(L.groups_per_release, 0, 'no real group was refused');
  t.true(L.token_bound_to_other_member > 0, 'a second member id under mallory\'s token was refused');
  t.true(L.auth_throttled > 0, 'token guessing was throttled');
  const groups = (f.server.fleet() as { groups: unknown[] }).groups.length;
  t.true(groups <= 50, `${groups} groups kept`);
});

test('a member that lies about what it holds (its own id and token, every unit claimed): its claims expire when the group keeps asking, the group completes, and fleet counts the undelivered claims', async (t) => {
  const tokens: Record<string, string> = {};
  for (const id of ['a', 'b', 'c', 'liar']) tokens[id] = randomBytes(16).toString('hex');
  const f = await startFleet(t, { size: 2 * 1024 * 1024, unitSize: 128 * 1024, server: { tokens } });
  const all = Buffer.alloc(Math.ceil(f.manifest.unitCount / 8), 0xff).toString('base64');
  const lieOnce = () =>
    fetch(`${f.url}/v1/heartbeat`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', authorization: `Bearer ${tokens.liar}` },
      body: JSON.stringify({ release: f.manifest.id, group: 'g1', member: 'liar', have: all }),
    }).then((r) => r.status, () => 0);
  t.is(await lieOnce(), 200, 'the liar is a member in good standing at first');
  let lying = true;
  const lie = (async () => {
    while (lying) {
      await lieOnce();
      await sleep(300);
    }
  })();
  t.teardown(async () => {
    lying = false;
    await lie;
  });
  const procs = [];
  for (const id of ['a', 'b', 'c']) {
    const tf = path.join(f.dir, `${id}.token`);
    await fs.writeFile(tf, tokens[id]);
    procs.push(f.spawnAgent(id, ['--token-file', tf, '--linger', '5', '--report', path.join(f.dir, `${id}.json`)]));
  }
  const codes = await Promise.all(procs.map((p) => p.exit));
  const view = f.server.fleet() as { groups: { members: { id: string; undeliveredClaims: number }[] }[] };
  lying = false;
  await lie;
  t.deepEqual(codes, [0, 0, 0], procs.map((p) => p.stderr()).join('\n'));
  for (const id of ['a', 'b', 'c']) t.is(await sha256File((JSON.parse(await fs.readFile(path.join(f.dir, `${id}.json`), 'utf8')) as Report).path), f.manifest.sha256);
  const liar = view.groups.flatMap((g) => g.members).find((m) => m.id === 'liar');
  t.true((liar?.undeliveredClaims ?? 0) >= f.manifest.unitCount, `the liar's claims expired: ${JSON.stringify(liar)}`);
  t.true(f.server.stats.unitBytesSent <= 1.02 * f.manifest.size, `origin sent ${f.server.stats.unitBytesSent} bytes for a ${f.manifest.size}-byte release`);
});
