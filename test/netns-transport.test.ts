import { randomInt } from 'node:crypto';
import * as path from 'node:path';
import { inNetns, namespaceTest, netns } from './helpers/netns';

const fixture = path.join(__dirname, '..', '..', 'test', 'fixtures', 'ipv6-multicast.js');

// lo on this kind of machine has no MULTICAST flag, so IPv6 multicast is tested on a
// veth pair inside a namespace of our own: Ethernet-like, with the ff00::/8 route.
for (const kind of ['native', 'dgram']) {
  namespaceTest(`IPv6 multicast over a veth in a namespace: ${kind} transport delivers to two receivers`, async (t) => {
    const ns = await netns(t, [
      'ip link set lo up',
      'ip link add v0 type veth peer name v1',
      'ip link set v0 up',
      'ip link set v1 up',
      'ip -6 addr add fd01::1/64 dev v0 nodad',
    ]);
    const group = `ff15::${randomInt(1, 0xffff).toString(16)}`;
    const r = await inNetns(ns, process.execPath, [fixture, group, String(randomInt(20000, 60000)), 'fd01::1'], { env: { FLEETCAST_TRANSPORT: kind } });
    t.is(r.code, 0, r.stderr);
    const out = JSON.parse(r.stdout.trim());
    t.is(out.kind, kind);
    const want = Array.from({ length: 50 }, (_, i) => String(i));
    t.deepEqual(out.got, [want, want]);
  });
}

const backpressure = path.join(__dirname, '..', '..', 'test', 'fixtures', 'send-backpressure.js');

for (const kind of ['native', 'dgram']) {
  namespaceTest(`${kind} transport: a full send queue takes part of a batch and resumes on writability (tbf-shaped veth)`, async (t) => {
    const ns = await netns(t, [
      'ip link set lo up',
      'ip link add v0 type veth peer name v1',
      'ip link set v0 up',
      'ip link set v1 up',
      'ip addr add 10.201.0.1/24 brd + dev v0',
      'ip route add 224.0.0.0/4 dev v0',
      'tc qdisc add dev v0 root tbf rate 10mbit burst 16kb latency 2s',
    ]);
    const r = await inNetns(ns, process.execPath, [backpressure, '239.201.0.1', String(randomInt(20000, 60000)), '10.201.0.1'], { env: { FLEETCAST_TRANSPORT: kind }, timeoutMs: 60_000 });
    t.is(r.code, 0, r.stderr);
    const out = JSON.parse(r.stdout.trim());
    t.is(out.kind, kind);
    t.true(out.partial > 0, 'the send queue filled');
    t.is(out.bad, 0);
    t.is(out.sendErrors, 0);
    t.is(out.got, 2000);
    t.true(out.inOrder);
  });
}
