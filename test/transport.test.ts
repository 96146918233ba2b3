import test from 'ava';
import { randomInt } from 'node:crypto';
import * as os from 'node:os';
import { readFileSync } from 'node:fs';
import { DgramTransport } from '../src/transport/dgram-transport';
import { ipv6Text, NativeTransport, NativeUdpAddon } from '../src/transport/native-transport';
import { loadNativeAddon, nativeAddonError } from '../src/transport/binding';
import { Transport, TransportOptions } from '../src/transport/transport';

/**
 * The transport contract. Written against the interface so the native transport
 * runs the same cases when it lands.
 */
const addon = loadNativeAddon();
const factories: [string, (o: TransportOptions) => Transport][] = [['dgram', (o) => new DgramTransport(o)]];
if (addon?.UdpSocket) factories.push(['native', (o) => new NativeTransport(addon as NativeUdpAddon, o)]);
else test('native transport suite', (t) => t.fail(`the native addon did not load: ${nativeAddonError()}`));

/**
 * IPv6 multicast on lo needs ::1 and lo's MULTICAST flag (IFF_MULTICAST, 0x1000): the
 * kernel has no ff00::/8 route on lo otherwise. Some machines lack it; then the case
 * is skipped, with the reason in its title.
 */
function ipv6LoopbackMulticast(): string | null {
  if (!Object.values(os.networkInterfaces()).some((l) => l?.some((a) => a.address === '::1'))) return 'no ::1 on lo';
  try {
    const flags = parseInt(readFileSync('/sys/class/net/lo/flags', 'utf8'), 16);
    if (!(flags & 0x1000)) return 'lo has no MULTICAST flag here, so IPv6 multicast cannot use it';
  } catch {
    return 'cannot read /sys/class/net/lo/flags';
  }
  return null;
}
const ipv6Missing = ipv6LoopbackMulticast();

function group(): { group: string; port: number } {
  return { group: `239.255.${randomInt(0, 256)}.${randomInt(1, 255)}`, port: randomInt(20000, 60000) };
}

/**
 * What `tr` receives until it has `want` datagrams, or until nothing arrived for `ms`
 * (an idle timeout, restarted by each batch: on a busy box the datagrams come late,
 * not never, and a fixed deadline from the start cut them off).
 */
async function collect(tr: Transport, want: number, ms = 2000): Promise<Buffer[]> {
  const got: Buffer[] = [];
  return new Promise((resolve) => {
    let timer = setTimeout(() => resolve(got), ms);
    tr.onBatch((b) => {
      for (let i = 0; i < b.count; i++) got.push(Buffer.from(b.data(i))); // copy: views die with the batch
      clearTimeout(timer);
      if (got.length >= want) resolve(got);
      else timer = setTimeout(() => resolve(got), ms);
    });
  });
}

for (const [name, make] of factories) {
  test(`${name}: multicast on loopback reaches several receivers, in order, intact`, async (t) => {
    const g = group();
    const opts = { ...g, interfaceAddress: '127.0.0.1' };
    const tx = make(opts);
    const rx = [make(opts), make(opts), make(opts)];
    t.teardown(() => Promise.all([tx, ...rx].map((x) => x.close())));
    for (const x of [tx, ...rx]) await x.open();
    const msgs = Array.from({ length: 200 }, (_, i) => Buffer.alloc(100 + i * 40, i));
    const pending = rx.map((r) => collect(r, msgs.length));
    let sent = 0;
    while (sent < msgs.length) {
      sent += tx.sendBatch(msgs.slice(sent), tx.groupEndpoint);
      if (sent < msgs.length) await new Promise<void>((r) => tx.onWritable(r));
    }
    for (const got of await Promise.all(pending)) {
      t.is(got.length, msgs.length);
      t.deepEqual(got.map((b) => b.length), msgs.map((b) => b.length));
      t.true(got.every((b, i) => b.equals(msgs[i])));
    }
    t.is(tx.stats.datagramsSent, msgs.length);
    t.true(tx.info.kind === name);
  });

  test(`${name}: a unicast transport (the cross-group socket) sends and receives on one port, with the sender's endpoint, stats and loss`, async (t) => {
    let seed = 7;
    const random = () => ((seed = (seed * 16807) % 2147483647) / 2147483647);
    const a = make({ group: '', port: 0, unicast: true, interfaceAddress: '127.0.0.1' });
    const b = make({ group: '', port: 0, unicast: true, interfaceAddress: '127.0.0.1', lossPct: 20, random });
    t.teardown(() => Promise.all([a.close(), b.close()]));
    await a.open();
    await b.open();
    const pa = a.localPort!();
    const pb = b.localPort!();
    t.true(pa > 0 && pb > 0 && pa !== pb);
    const from: string[] = [];
    const got = new Promise<number>((resolve) => {
      let n = 0;
      // Idle timeout, as in collect(): restarted by each batch.
      let timer = setTimeout(() => resolve(n), 1500);
      b.onBatch((batch) => {
        for (let i = 0; i < batch.count; i++) from.push(`${batch.address(i)}:${batch.port(i)}`);
        n += batch.count;
        clearTimeout(timer);
        if (n >= 500) resolve(n);
        else timer = setTimeout(() => resolve(n), 1500);
      });
    });
    for (let i = 0; i < 500; i += 50) {
      t.is(a.sendBatch(Array.from({ length: 50 }, () => Buffer.alloc(200, i)), { address: '127.0.0.1', port: pb }), 50);
      await new Promise((r) => setTimeout(r, 10));
    }
    const n = await got;
    t.true(n > 300 && n < 480, `received ${n} of 500 at 20% loss`);
    t.true(from.every((f) => f === `127.0.0.1:${pa}`), 'every datagram names the sender\'s unicast endpoint');
    t.is(a.stats.datagramsSent, 500);
    t.is(b.stats.datagramsDroppedByLoss + n, b.stats.datagramsReceived);
    // And back: the same socket sends.
    const back = collect(a, 1, 1500);
    b.sendBatch([Buffer.from('pong')], { address: '127.0.0.1', port: pa });
    t.is((await back)[0]?.toString(), 'pong');
  });

  test(`${name}: injected loss drops about the configured share`, async (t) => {
    const g = group();
    let seed = 1;
    const random = () => ((seed = (seed * 16807) % 2147483647) / 2147483647);
    const tx = make({ ...g, interfaceAddress: '127.0.0.1' });
    const rx = make({ ...g, interfaceAddress: '127.0.0.1', lossPct: 30, random });
    t.teardown(() => Promise.all([tx.close(), rx.close()]));
    await tx.open();
    await rx.open();
    const got = collect(rx, 1000, 1500);
    for (let i = 0; i < 1000; i += 100) {
      tx.sendBatch(Array.from({ length: 100 }, () => Buffer.alloc(64)), tx.groupEndpoint);
      await new Promise((r) => setTimeout(r, 10));
    }
    const n = (await got).length;
    t.true(n > 550 && n < 850, `received ${n} of 1000 at 30% loss`);
    t.is(rx.stats.datagramsDroppedByLoss + n, rx.stats.datagramsReceived);
  });

  test(`${name}: batches larger than the receive ring arrive whole, across several callbacks`, async (t) => {
    const g = group();
    const tx = make({ ...g, interfaceAddress: '127.0.0.1' });
    const rx = make({ ...g, interfaceAddress: '127.0.0.1', ringSlots: 8 });
    t.teardown(() => Promise.all([tx.close(), rx.close()]));
    await tx.open();
    await rx.open();
    let callbacks = 0;
    const got: number[] = [];
    const done = new Promise<void>((resolve) => {
      const timer = setTimeout(resolve, 2000);
      rx.onBatch((b) => {
        callbacks++;
        t.true(b.count <= 8 * 64, 'at most a ring of coalesced reads'); // UDP_GRO: a slot holds up to 64
        for (let i = 0; i < b.count; i++) got.push(new DataView(b.data(i).buffer, b.data(i).byteOffset).getUint32(0));
        if (got.length >= 500) {
          clearTimeout(timer);
          resolve();
        }
      });
    });
    const msgs = Array.from({ length: 500 }, (_, i) => {
      const m = new Uint8Array(1000);
      new DataView(m.buffer).setUint32(0, i);
      return m;
    });
    let sent = 0;
    while (sent < msgs.length) {
      sent += tx.sendBatch(msgs.slice(sent, sent + 100), tx.groupEndpoint);
      await new Promise((r) => setTimeout(r, 2));
    }
    await done;
    t.deepEqual(got, msgs.map((_, i) => i));
    if (name === 'native') t.true(callbacks < 500, 'batched');
  });

  test(`${name}: a datagram longer than maxDatagramBytes is dropped and counted as truncated, never overflows`, async (t) => {
    const g = group();
    const tx = make({ ...g, interfaceAddress: '127.0.0.1' });
    const rx = make({ ...g, interfaceAddress: '127.0.0.1', maxDatagramBytes: 2048 });
    t.teardown(() => Promise.all([tx.close(), rx.close()]));
    await tx.open();
    await rx.open();
    const got = collect(rx, 2, 1000);
    tx.sendBatch([new Uint8Array(2048).fill(1), new Uint8Array(4000).fill(2), new Uint8Array(10).fill(3)], tx.groupEndpoint);
    const r = await got;
    t.deepEqual(r.map((b) => b.length), [2048, 10]);
    t.is(rx.stats.datagramsTruncated, 1);
  });

  (ipv6Missing ? test.skip : test)(`${name}: IPv6 multicast on loopback${ipv6Missing ? ` (skipped: ${ipv6Missing})` : ''}`, async (t) => {
    const port = randomInt(20000, 60000);
    const grp = `ff15::${randomInt(1, 0xffff).toString(16)}`;
    const tx = make({ group: grp, port, interfaceAddress: '::1' });
    const rx = make({ group: grp, port, interfaceAddress: '::1' });
    t.teardown(() => Promise.all([tx.close(), rx.close()]));
    await tx.open();
    await rx.open();
    const got = collect(rx, 3);
    tx.sendBatch([Buffer.from('one'), Buffer.from('two'), Buffer.from('three')], tx.groupEndpoint);
    t.deepEqual((await got).map((b) => b.toString()), ['one', 'two', 'three']);
  });

  test(`${name}: a bad interface address is a clear error`, async (t) => {
    const tr = make({ ...group(), interfaceAddress: '192.0.2.77' });
    const e = await t.throwsAsync(() => tr.open());
    t.regex(e!.message, /cannot join multicast .* on 192\.0\.2\.77/);
  });
}

test('IPv6 source addresses from the native ring read as node:dgram writes them (RFC 5952)', (t) => {
  t.is(ipv6Text([0xfe80, 0, 0, 0, 0x1, 0, 0, 0x2]), 'fe80::1:0:0:2');
  t.is(ipv6Text([0, 0, 0, 0, 0, 0, 0, 1]), '::1');
  t.is(ipv6Text([0x2001, 0xdb8, 0, 1, 0, 0, 0, 0]), '2001:db8:0:1::');
  t.is(ipv6Text([0x2001, 0xdb8, 0, 1, 1, 1, 1, 1]), '2001:db8:0:1:1:1:1:1');
  t.is(ipv6Text([0, 0, 0, 0, 0, 0, 0, 0]), '::');
});
