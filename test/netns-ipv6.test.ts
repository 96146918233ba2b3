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
