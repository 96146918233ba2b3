import test from 'ava';
import { benchStream } from '../bench/stream';

/*
 * Issue 19's base case at its full size: a stream fed at 20 Mbit/s for 20 s (50 MB) to 4
 * `fleetcast agent --stream` processes of one LAN group on loopback, each dropping 3% of the
 * datagrams it receives, as `npm run bench -- stream 4 20 20 3 64 1` runs it (bench/stream.ts).
 * Bounds are on bytes and counts, never on time: the latency is the bench's to report. The late
 * joiner, the restarted agent and the forged or reordered units are tested at a lower rate in
 * stream-lan.test.ts, stream-e2e.test.ts and stream-manifest.test.ts.
 */
test('the base case: 20 Mbit/s for 20 s to 4 agent processes at 3% loss; every sink equals the source, no gap, each unit leaves the server once', async (t) => {
  const r = await benchStream({ agents: 4, mbit: 20, seconds: 20, lossPct: 3, unitBytes: 64 * 1024, flushMs: 200 });
  t.log(`${r.streamBytes} stream bytes; server unit bytes ${(r.wanBytes / r.streamBytes).toFixed(4)}x; LAN bytes per agent ${(r.lanBytes / r.agents / r.streamBytes).toFixed(2)}x; ${r.nacks} NACKs; latency p99 per agent ${r.p99Ms.join(', ')} ms (load ${r.load.toFixed(1)})`);
  t.is(r.streamBytes, 50_000_000);
  t.true(r.allEqual, 'every sink holds the source, in order');
  t.is(r.gaps, 0, 'no gap marker');
  // Each unit is downloaded by one member of the group; a lease that ran out can send one again.
  t.true(r.wanBytes >= r.streamBytes && r.wanBytes <= 1.02 * r.streamBytes, `server unit bytes ${r.wanBytes} within 1.00-1.02 x ${r.streamBytes}`);
  // The losses were real: the agents repaired them with NACKs.
  t.true(r.nacks > 0, 'at 3% loss the agents sent NACKs');
  t.true(r.lanBytes > r.streamBytes, 'the agents shared units on the LAN');
});
