import test from 'ava';
import { Sim } from './clock';
import { bernoulli, burstyLoss, gilbertElliott, makeLossModel, stationaryRate } from './loss';
import { Network } from './network';
import { Prng } from './prng';
import { SimServer } from './server';
import { CoreEvent, SimCore } from './core-api';
import { World } from './world';
import { TraceDigest } from './trace';

// Tests of the simulator itself: its clock, PRNG, loss models and links. All
// bounds are on counts and simulated time; none depends on the machine's speed.

test('events run in time order, ties in the order they were scheduled; cancelled ones never run', (t) => {
  const sim = new Sim();
  const seen: string[] = [];
  sim.at(5, () => seen.push('a5'));
  sim.at(1, () => seen.push('b1'));
  sim.at(5, () => seen.push('c5'));
  const h = sim.at(3, () => seen.push('cancelled'));
  sim.at(2, () => {
    seen.push('d2');
    sim.after(0, () => seen.push('e2'));
    sim.after(10, () => seen.push('f12'));
  });
  h.cancel();
  t.is(sim.run({ until: 6 }), 'until');
  t.is(sim.now, 6);
  t.deepEqual(seen, ['b1', 'd2', 'e2', 'a5', 'c5']);
  t.is(sim.run(), 'idle');
  t.is(sim.now, 12);
  t.deepEqual(seen.slice(-1), ['f12']);
});

test('a run stops on its event budget and on its predicate', (t) => {
  const sim = new Sim();
  let n = 0;
  const tick = (): void => {
    n++;
    sim.after(1, tick);
  };
  tick();
  t.is(sim.run({ maxEvents: 100 }), 'maxEvents');
  t.is(n, 101);
  t.is(sim.run({ stopWhen: () => n >= 150 }), 'stopWhen');
  t.is(n, 150);
  t.is(sim.now, 149);
});

test('the PRNG: a seed fixes the stream, forks are independent of the parent and of each other', (t) => {
  const a = new Prng(42);
  const b = new Prng(42);
  const xs = Array.from({ length: 1000 }, () => a.next());
  t.deepEqual(xs, Array.from({ length: 1000 }, () => b.next()));
  t.notDeepEqual(xs.slice(0, 10), Array.from({ length: 10 }, () => new Prng(43).next()));
  t.true(xs.every((x) => x >= 0 && x < 1));
  // uniform: mean of 1000 draws within 5 sigma of 0.5 (sigma = sqrt(1/12/1000) ~ 0.0091)
  const mean = xs.reduce((s, x) => s + x, 0) / xs.length;
  t.true(Math.abs(mean - 0.5) < 0.046, `mean ${mean}`);
  const parent = new Prng(7);
  const before = new Prng(7).next();
  const f1 = parent.fork('link-a');
  const f2 = parent.fork('link-b');
  t.is(parent.next(), before, 'forking does not advance the parent');
  t.not(f1.next(), f2.next());
  t.is(new Prng(7).fork('link-a').next(), new Prng(7).fork('link-a').next());
});

/** Loss pattern of `n` packets through a model built from `spec` and `seed`. */
function pattern(spec: Parameters<typeof makeLossModel>[0], seed: number, n: number): Uint8Array {
  const m = makeLossModel(spec, new Prng(seed));
  const out = new Uint8Array(n);
  for (let i = 0; i < n; i++) out[i] = m.lose() ? 1 : 0;
  return out;
}

function stats(p: Uint8Array) {
  let lost = 0;
  let bursts = 0;
  let afterLoss = 0;
  let lostAfterLoss = 0;
  for (let i = 0; i < p.length; i++) {
    if (!p[i]) continue;
    lost++;
    if (i === 0 || !p[i - 1]) bursts++;
  }
  for (let i = 1; i < p.length; i++) {
    if (!p[i - 1]) continue;
    afterLoss++;
    if (p[i]) lostAfterLoss++;
  }
  return { rate: lost / p.length, meanBurst: lost / bursts, pLossAfterLoss: lostAfterLoss / afterLoss };
}

test('Bernoulli loss converges to p, and a loss says nothing about the next packet', (t) => {
  const n = 200_000;
  const p = 0.1;
  const sigma = Math.sqrt((p * (1 - p)) / n);
  for (const seed of [1, 2, 3, 4, 5]) {
    const s = stats(pattern(bernoulli(p), seed, n));
    t.true(Math.abs(s.rate - p) < 5 * sigma, `seed ${seed}: rate ${s.rate}`);
    t.true(Math.abs(s.pLossAfterLoss - p) < 0.01, `seed ${seed}: P(loss | loss) ${s.pLossAfterLoss}`);
  }
  t.true(pattern(bernoulli(0), 1, 10_000).every((x) => x === 0));
  t.true(pattern(bernoulli(1), 1, 10_000).every((x) => x === 1));
});

test('Gilbert-Elliott loss converges to its stationary rate, in bursts of 1/r packets', (t) => {
  const n = 400_000;
  // 4% loss in bursts of 4 packets on average
  const spec = burstyLoss(0.04, 4);
  t.true(Math.abs(stationaryRate(spec) - 0.04) < 1e-12);
  for (const seed of [1, 2, 3, 4, 5]) {
    const s = stats(pattern(spec, seed, n));
    // Losses are correlated, so the rate's spread is wider than Bernoulli's by
    // about (1 + q) / (1 - q), q = 1 - p - r the chain's memory (~6.7 here).
    const q = 1 - spec.p - spec.r;
    const sigma = Math.sqrt((0.04 * 0.96 * (1 + q)) / (1 - q) / n);
    t.true(Math.abs(s.rate - 0.04) < 5 * sigma, `seed ${seed}: rate ${s.rate}`);
    t.true(Math.abs(s.meanBurst - 4) < 0.25, `seed ${seed}: mean burst ${s.meanBurst}`);
    // Bursty: after a loss the next packet is lost with probability 1 - r = 0.75, not 0.04.
    t.true(Math.abs(s.pLossAfterLoss - 0.75) < 0.02, `seed ${seed}: P(loss | loss) ${s.pLossAfterLoss}`);
  }
  // The general form: lossy Good and partly lossy Bad.
  const g = gilbertElliott(0.02, 0.1, 0.5, 0.01);
  const expect = (0.1 * 0.01 + 0.02 * 0.5) / 0.12;
  t.true(Math.abs(stationaryRate(g) - expect) < 1e-12);
  const s = stats(pattern(g, 9, n));
  t.true(Math.abs(s.rate - expect) < 0.01, `rate ${s.rate} vs ${expect}`);
});

test('a bad loss parameter is refused, naming it', (t) => {
  t.throws(() => makeLossModel(bernoulli(1.5), new Prng(1)), { message: /p must be a probability/ });
  t.throws(() => makeLossModel(gilbertElliott(0.1, -1), new Prng(1)), { message: /r must be a probability/ });
});

test('a link holds its rate in simulated time, then adds its delay', (t) => {
  const sim = new Sim();
  const net = new Network(sim, 1);
  const lan = net.addLan('lan', { down: { rateBytesPerSec: 1_000_000, delayMs: 3 } });
  const a = net.attach(lan, 'a');
  const b = net.attach(lan, 'b');
  const arrivals: number[] = [];
  b.onReceive = (data, from, via, now) => {
    t.is(from, 'a');
    t.is(via, 'lan');
    t.is(data.length, 1000);
    arrivals.push(now);
  };
  // 2,000 packets of 1,000 bytes at once: 2 MB at 1 MB/s
  for (let i = 0; i < 2000; i++) a.multicast(new Uint8Array(1000));
  sim.run();
  t.is(arrivals.length, 2000);
  t.true(Math.abs(arrivals[0] - (1 + 3)) < 1e-9, 'the first takes 1 ms on the wire plus 3 ms');
  t.true(Math.abs(arrivals[1999] - (2000 + 3)) < 1e-6, `the last at ${arrivals[1999]} ms`);
  // In every window [0, T], delivered bytes stay within rate · (T - delay) + one packet.
  for (let i = 0; i < arrivals.length; i += 97) {
    const T = arrivals[i];
    const bytes = (i + 1) * 1000;
    t.true(bytes <= (1_000_000 * (T - 3)) / 1000 + 1000 + 1e-6, `at ${T} ms: ${bytes} bytes`);
  }
  const c = b.down.counters;
  t.deepEqual([c.sentPackets, c.deliveredPackets, c.lostPackets, c.droppedPackets], [2000, 2000, 0, 0]);
  t.is(c.deliveredBytes, 2_000_000);
});

test('a link with a bounded queue drops what does not fit, and says so in its counters', (t) => {
  const sim = new Sim();
  const net = new Network(sim, 1);
  const lan = net.addLan('lan', { up: { rateBytesPerSec: 100_000, queueBytes: 10_000 } });
  const a = net.attach(lan, 'a');
  const b = net.attach(lan, 'b');
  let got = 0;
  b.onReceive = () => got++;
  for (let i = 0; i < 100; i++) a.multicast(new Uint8Array(1000));
  // 100 ms later the queue has drained 10 packets and takes 10 more
  sim.at(100, () => {
    for (let i = 0; i < 100; i++) a.multicast(new Uint8Array(1000));
  });
  sim.run();
  const c = a.up.counters;
  t.is(c.sentPackets, 200);
  t.is(c.deliveredPackets, 20);
  t.is(c.droppedPackets, 180);
  t.is(c.droppedBytes, 180_000);
  t.is(got, 20);
  t.is(sim.now, 200, 'two queues of 10 kB at 100 kB/s');
});

test('multicast: loss on the sender`s uplink is shared by all, loss on downlinks is independent', (t) => {
  const run = (up: number, down: number) => {
    const sim = new Sim();
    const net = new Network(sim, 11);
    const lan = net.addLan('lan', { up: { loss: bernoulli(up) }, down: { loss: bernoulli(down) } });
    const s = net.attach(lan, 's');
    const got = ['r1', 'r2', 'r3'].map((name) => {
      const seen = new Set<number>();
      net.attach(lan, name).onReceive = (d) => seen.add(d.readUInt32BE(0));
      return seen;
    });
    for (let i = 0; i < 10_000; i++) {
      const b = Buffer.alloc(4);
      b.writeUInt32BE(i);
      s.multicast(b);
    }
    sim.run();
    return { got, net, s };
  };
  const shared = run(0.3, 0);
  t.deepEqual([...shared.got[0]], [...shared.got[1]]);
  t.deepEqual([...shared.got[0]], [...shared.got[2]]);
  t.true(Math.abs(shared.got[0].size - 7000) < 250);
  t.is(shared.s.up.counters.lostPackets, 10_000 - shared.got[0].size);

  const indep = run(0, 0.3);
  const both = [...indep.got[0]].filter((x) => indep.got[1].has(x)).length;
  // independent: P(both get it) = 0.49
  t.true(Math.abs(both - 4900) < 300, `both received ${both}`);
  const down = indep.net.total((l) => l.name.endsWith('.down'));
  t.is(down.sentPackets, 30_000);
  t.is(down.deliveredPackets + down.lostPackets, 30_000);
  t.is(down.lostBytes, 4 * down.lostPackets);
});

test('unicast: inside a LAN, across a route (via cross), and unroutable; a dead or late member misses traffic', (t) => {
  const sim = new Sim();
  const net = new Network(sim, 3);
  const g1 = net.addLan('g1');
  const g2 = net.addLan('g2');
  const g3 = net.addLan('g3');
  net.connect(g1, g2, { delayMs: 20, rateBytesPerSec: 10_000 });
  const a = net.attach(g1, 'a');
  const b = net.attach(g1, 'b');
  const c = net.attach(g2, 'c');
  const d = net.attach(g3, 'd');
  const log: string[] = [];
  for (const ep of [a, b, c, d]) ep.onReceive = (data, from, via, now) => log.push(`${now} ${from}>${ep.name} ${via} ${data.length}`);
  a.unicast('b', new Uint8Array(10));
  a.unicast('c', new Uint8Array(100));
  a.unicast('c', new Uint8Array(100));
  a.unicast('d', new Uint8Array(10)); // no route g1 -> g3
  a.unicast('nobody', new Uint8Array(10));
  sim.run();
  t.deepEqual(log, ['0 a>b lan 10', '30 a>c cross 100', '40 a>c cross 100']);
  t.is(net.unroutable.sentPackets, 2);
  t.is(net.route(g1, g2)!.counters.deliveredBytes, 200);
  t.is(a.counters.sentPackets, 5);

  // c dies with a packet in flight to it; a late member sees only what reaches the switch after it joined.
  log.length = 0;
  a.unicast('c', new Uint8Array(100));
  sim.after(5, () => c.kill());
  sim.after(50, () => {
    c.unicast('a', new Uint8Array(1)); // a dead endpoint sends nothing
    a.multicast(new Uint8Array(7));
    sim.after(0.5, () => {
      const e = net.attach(g1, 'e');
      e.onReceive = (data, from, via, now) => log.push(`${now} ${from}>e ${via} ${data.length}`);
      a.multicast(new Uint8Array(8));
    });
  });
  sim.run();
  t.deepEqual(log, ['90 a>b lan 7', '90.5 a>b lan 8', '90.5 a>e lan 8']);
  t.is(c.down.counters.droppedPackets, 1);
  t.is(c.counters.sentPackets, 0);
});

/** A small busy network whose traffic depends on the seed everywhere it can. */
function busyRun(seed: number) {
  const sim = new Sim();
  const net = new Network(sim, seed);
  const digest = new TraceDigest(net);
  const rng = new Prng(seed).fork('senders');
  const g1 = net.addLan('g1', { down: { loss: burstyLoss(0.05, 3), rateBytesPerSec: 5_000_000, delayMs: 0.2 } });
  const g2 = net.addLan('g2', { down: { loss: bernoulli(0.1), rateBytesPerSec: 5_000_000 } });
  net.connect(g1, g2, { delayMs: 15, rateBytesPerSec: 1_000_000, loss: bernoulli(0.02) });
  const eps = [...Array(6)].map((_, i) => net.attach(i < 3 ? g1 : g2, `m${i}`));
  let received = 0;
  for (const ep of eps) {
    ep.onReceive = (data) => {
      received++;
      // an echo on some packets, so the traffic depends on what arrived
      if (data[0] === 1 && received % 7 === 0) ep.multicast(new Uint8Array([2, 0, 0]));
    };
    const send = (): void => {
      const n = 100 + rng.int(1300);
      if (rng.next() < 0.2) ep.unicast(eps[rng.int(eps.length)].name, new Uint8Array(n).fill(1));
      else ep.multicast(new Uint8Array(n).fill(1));
      if (sim.now < 2000) sim.after(rng.next() * 5, send);
    };
    sim.after(rng.next(), send);
  }
  sim.run();
  const c = net.total();
  return { digest: digest.digest(), events: digest.events, counters: c, now: sim.now, received };
}

test('the same seed gives the identical trace; another seed another', (t) => {
  const a = busyRun(2024);
  const b = busyRun(2024);
  const c = busyRun(2025);
  t.true(a.events > 10_000, `${a.events} events`);
  t.true(a.counters.lostPackets > 0);
  t.is(a.digest, b.digest);
  t.deepEqual(a.counters, b.counters);
  t.is(a.now, b.now);
  t.not(a.digest, c.digest);
});

test('the simulated server: static shares, gateways, copy destinations, expiry re-leases what only the dead held', (t) => {
  const leases = new Map<string, number[][]>();
  const s = new SimServer({ unitCount: 8, groupKey: Buffer.alloc(32, 7), memberTimeoutMs: 3000, wide: true });
  const join = (id: string, group: string, n: number) =>
    s.join({ id, group, address: `10.0.0.${n}`, port: 7700 }, 0, (g) => leases.set(id, [...(leases.get(id) ?? []), g.units]));
  join('a', 'g0', 1);
  join('b', 'g0', 2);
  join('c', 'g1', 3);
  join('d', 'g1', 4);
  const shares = s.assignShares();
  t.deepEqual(Object.fromEntries(shares), { a: [0, 4], b: [1, 5], c: [2, 6], d: [3, 7] });
  const bits = (...units: number[]) => {
    const b = new Uint8Array(1);
    for (const u of units) b[0] |= 0x80 >>> u;
    return b;
  };
  const map = s.heartbeat('a', 100, bits(0, 4), 2, false);
  t.deepEqual(map.holders, [0, 1, 2, 3, 0, 1, 2, 3]);
  t.deepEqual(
    map.members.map((m) => `${m.id}:${m.role}`),
    ['a:gateway', 'b:member', 'c:gateway', 'd:member'],
  );
  t.deepEqual(map.copyTo, [{ member: 'c', address: '10.0.0.3', port: 7700 }]);
  t.is(map.groupKey, Buffer.alloc(32, 7).toString('base64'));
  t.false(map.groupComplete);
  // c (g1's gateway) falls silent holding unit 2; b has 6 from the LAN, so only 2 is leased again.
  s.heartbeat('b', 3000, bits(1, 5, 6), 3, false);
  s.heartbeat('d', 3000, bits(3, 7), 2, false);
  s.heartbeat('a', 3000, bits(0, 4), 2, false);
  t.deepEqual(s.expire(3000), [], 'silent for 3000 ms, not more');
  t.deepEqual(s.expire(3101), ['c']);
  t.is(s.releasedUnits, 1);
  t.deepEqual(Object.fromEntries(leases), { a: [[2]] }, 'leased to the first live member');
  const after = s.map('a');
  t.deepEqual(after.members.map((m) => `${m.id}:${m.role}`), ['a:gateway', 'b:member', 'd:gateway']);
  t.deepEqual(after.copyTo, [{ member: 'd', address: '10.0.0.4', port: 7700 }]);
  t.is(after.holders[6], 1, 'unit 6 now held by b');
  const grant = s.relay('d', [5], 'relayed');
  t.deepEqual(grant, { units: [5], relayed: [5], copyTo: [{ member: 'a', address: '10.0.0.1', port: 7700 }] });
});

/**
 * A scripted stand-in for the protocol core, to check the driver alone: it records
 * the calls it gets and answers from a script. (The real core is driven in
 * protocol.test.ts.)
 */
function scriptedCore(script: { timeoutAt?: () => number | null; events?: CoreEvent[] }) {
  const calls: string[] = [];
  const events = [...(script.events ?? [])];
  const core: SimCore = {
    handleDatagram: (_b, now) => void calls.push(`datagram@${now}`),
    handleTimeout: (now) => void calls.push(`timeout@${now}`),
    setSplitMap: (_m, now) => void calls.push(`map@${now}`),
    leaseGranted: (g, now) => void calls.push(`lease ${g.units.join(',')}@${now}`),
    relayFailed: () => undefined,
    takeLeased: () => undefined,
    leasedCount: 0,
    takeBuffer: (len) => Buffer.alloc(len),
    giveBuffer: () => undefined,
    fetchStarted: () => undefined,
    fetchProgress: () => undefined,
    fetchEnded: () => undefined,
    unitFetched: () => undefined,
    unitStored: (u, now) => void calls.push(`stored ${u}@${now}`),
    unitRead: (u, b, now) => void calls.push(`read ${u} ${b ? b.length : 'null'}@${now}`),
    fileComplete: (now) => void calls.push(`fileComplete@${now}`),
    fileFailed: () => undefined,
    writable: () => undefined,
    setRate: () => undefined,
    pollTransmit: () => null,
    transmitted: () => undefined,
    pollTimeout: () => script.timeoutAt?.() ?? null,
    pollEvent: () => events.shift() ?? null,
    has: () => false,
    holdsAll: false,
    backlogged: () => false,
    drained: () => true,
  };
  return { core, calls };
}

test('the driver answers store, read and complete events at once and arms the core`s timer', (t) => {
  let fired = false;
  const { core, calls } = scriptedCore({
    timeoutAt: () => (fired ? null : 250),
    events: [{ type: 'store', unit: 1, bytes: Buffer.alloc(16, 1) }, { type: 'read', unit: 1 }, { type: 'read', unit: 0 }, { type: 'complete' }],
  });
  const w = new World({ seed: 1, makeCore: () => core, groups: [{ name: 'g0', members: 1 }], unitCount: 2, unitSize: 16, fragmentBytes: 64 });
  const m = w.members[0];
  const handle = core.handleTimeout;
  core.handleTimeout = (now) => {
    fired = true;
    handle(now);
  };
  w.sim.run({ until: 500 });
  t.deepEqual(calls.slice(0, 6), ['map@0', 'stored 1@0', 'read 1 16@0', 'read 0 null@0', 'fileComplete@0', 'lease 0,1@0']);
  t.true(calls.includes('timeout@250'), calls.join(' '));
  t.is(m.completedAt, 0);
  t.deepEqual(m.store.get(1), Buffer.alloc(16, 1));
});

test('the driver stops a core whose timeout is always due, naming the member', (t) => {
  const { core } = scriptedCore({ timeoutAt: () => 0 });
  t.throws(() => new World({ seed: 1, makeCore: () => core, groups: [{ name: 'g0', members: 1 }], unitCount: 1, unitSize: 16, fragmentBytes: 64 }).sim.run({ until: 10 }), {
    message: /member g0-m0 woke .* times at 0 ms without time moving/,
  });
});
