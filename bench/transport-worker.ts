import { createTransport } from '../src/transport/binding';

/**
 * One process of the transport benchmark:
 *   receiver GROUP PORT            counts datagrams until SIGTERM, then prints JSON
 *   sender GROUP PORT SIZE SECONDS floods the group for SECONDS, then prints JSON
 * The transport comes from FLEETCAST_TRANSPORT.
 */
async function main() {
  const [role, group, portStr, sizeStr, secondsStr] = process.argv.slice(2);
  const port = Number(portStr);
  const tr = createTransport({ group, port, interfaceAddress: '127.0.0.1', loopback: true, recvBufferBytes: 8 << 20, sendBufferBytes: 4 << 20 });
  await tr.open();
  if (role === 'receiver') {
    let n = 0;
    let bytes = 0;
    tr.onBatch((b) => {
      for (let i = 0; i < b.count; i++) bytes += b.data(i).length;
      n += b.count;
    });
    process.on('SIGTERM', () => {
      const cpu = process.cpuUsage();
      process.stdout.write(JSON.stringify({ received: n, bytes, cpuSeconds: (cpu.user + cpu.system) / 1e6, kind: tr.info.kind, features: tr.info.features }) + '\n');
      void tr.close().then(() => process.exit(0));
    });
    process.stdout.write('ready\n');
    return;
  }
  const size = Number(sizeStr);
  const seconds = Number(secondsStr);
  const batch = Array.from({ length: 64 }, () => new Uint8Array(size).fill(0x5a));
  let sent = 0;
  const end = Date.now() + seconds * 1000;
  await new Promise<void>((resolve) => {
    const pump = () => {
      while (Date.now() < end) {
        const k = tr.sendBatch(batch, tr.groupEndpoint);
        sent += k;
        if (k < batch.length) return; // wait for writable
        if ((sent & 0xfff) < 64) return void setImmediate(pump); // let the loop breathe
      }
      resolve();
    };
    tr.onWritable(pump);
    pump();
  });
  const cpu = process.cpuUsage();
  process.stdout.write(JSON.stringify({ sent, cpuSeconds: (cpu.user + cpu.system) / 1e6, kind: tr.info.kind }) + '\n');
  await tr.close();
  process.exit(0);
}
main().catch((err) => {
  process.stderr.write(`transport-worker: ${(err as Error).message}\n`);
  process.exit(1);
});
