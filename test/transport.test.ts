import test from 'ava';
import { randomInt } from 'node:crypto';
import { DgramTransport } from '../src/transport/dgram-transport';
import { Transport, TransportOptions } from '../src/transport/transport';

/**
 * The transport contract. Written against the interface so the native transport
 * runs the same cases when it lands.
 */
const factories: [string, (o: TransportOptions) => Transport][] = [['dgram', (o) => new DgramTransport(o)]];

function group(): { group: string; port: number } {
  return { group: `239.255.${randomInt(0, 256)}.${randomInt(1, 255)}`, port: randomInt(20000, 60000) };
}

async function collect(tr: Transport, want: number, ms = 2000): Promise<Buffer[]> {
  const got: Buffer[] = [];
  return new Promise((resolve) => {
    const timer = setTimeout(() => resolve(got), ms);
    tr.onBatch((b) => {
      for (let i = 0; i < b.count; i++) got.push(Buffer.from(b.data(i))); // copy: views die with the batch
      if (got.length >= want) {
        clearTimeout(timer);
        resolve(got);
      }
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

  test(`${name}: a bad interface address is a clear error`, async (t) => {
    const tr = make({ ...group(), interfaceAddress: '192.0.2.77' });
    const e = await t.throwsAsync(() => tr.open());
    t.regex(e!.message, /cannot join multicast .* on 192\.0\.2\.77/);
  });
}
