import test from 'ava';
import { CrossGroupState } from '../src/agent/core/cross-group';
import { AGENT_DEFAULTS } from '../src/agent/core/defaults';
import { bitmapBytes, setBit } from '../src/wire/packet';

function bits(fc: number, fs: number[]): Uint8Array {
  const b = new Uint8Array(bitmapBytes(fc));
  for (const f of fs) setBit(b, f);
  return b;
}

const gw = { address: '10.0.2.5', port: 7700 };

test('a cross-group requester NACKing the same fragments again within the window gets no second repair', (t) => {
  const s = new CrossGroupState();
  t.deepEqual(s.repairable(3, gw, bits(40, [1, 2, 30]), 40, 300, 1000), [1, 2, 30]);
  // The gateway NACKs again ~110 ms later while the repair is still on a 200 ms round trip:
  // only the fragment it newly lacks goes out.
  t.deepEqual(s.repairable(3, gw, bits(40, [1, 2, 7, 30]), 40, 300, 1110), [7]);
  t.is(s.repairable(3, gw, bits(40, [1, 2, 30]), 40, 300, 1250), null);
  // Past the window, a fragment still missing was lost again: repaired again.
  t.deepEqual(s.repairable(3, gw, bits(40, [2, 30]), 40, 300, 1301), [2, 30]);
  // Another requester, or another unit, is its own account.
  t.deepEqual(s.repairable(3, { ...gw, port: 7701 }, bits(40, [2]), 40, 300, 1302), [2]);
  t.deepEqual(s.repairable(4, gw, bits(40, [2]), 40, 300, 1302), [2]);
});

test('the window is at least unicastRepairDedupMs, whatever the path says, and under the soonest a gateway asks again', (t) => {
  const d = AGENT_DEFAULTS.unicastRepairDedupMs;
  const s = new CrossGroupState();
  t.deepEqual(s.repairable(0, gw, bits(8, [0]), 8, 0, 0), [0]);
  t.is(s.repairable(0, gw, bits(8, [0]), 8, 0, d / 2), null);
  t.deepEqual(s.repairable(0, gw, bits(8, [0]), 8, 0, d + 1), [0]);
  // A gateway's re-ask comes a holdoff (at least nackHoldoffMinMs) after its NACK: a repair
  // lost on the way must be sent again for it, or the unit waits for a later round.
  t.true(d < AGENT_DEFAULTS.nackHoldoffMinMs);
  t.deepEqual(s.repairable(0, gw, bits(8, [0]), 8, 0, d + 1 + AGENT_DEFAULTS.nackHoldoffMinMs), [0]);
});
