import test from 'ava';
import { spawn } from 'node:child_process';
import { spawnSync } from './helpers/sync';
import { randomInt } from 'node:crypto';
import * as path from 'node:path';
import { loadNativeAddon, nativeAddonError } from '../src/transport/binding';
import { sdNotify } from '../src/util/sd-notify';

const root = path.join(__dirname, '..', '..');
const addon = loadNativeAddon();

test('the native addon loads (npm install builds it)', (t) => {
  t.truthy(addon?.UdpSocket, nativeAddonError());
  t.is(typeof addon?.sdNotify, 'function');
});

test('worker threads that exit with open native sockets do not crash the process', (t) => {
  const r = spawnSync(process.execPath, [path.join(root, 'test', 'fixtures', 'worker-teardown.js')], {
    env: { ...process.env, GROUP: `239.255.${randomInt(0, 256)}.${randomInt(1, 255)}`, PORT: String(randomInt(20000, 60000)) },
    encoding: 'utf8',
    timeout: 60_000,
  });
  t.is(r.status, 0, `signal ${r.signal}, stderr ${r.stderr}`);
  t.regex(r.stdout, /workers done 20/);
});

/** A fake systemd: python3 listens on a unix datagram socket and prints what arrives. */
async function notifyRoundTrip(address: string): Promise<string> {
  const py = spawn('python3', ['-c', `
import socket, sys
a = sys.argv[1]
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind("\\0" + a[1:] if a.startswith("@") else a)
print("ready", flush=True)
s.settimeout(10)
print(s.recv(4096).decode(), flush=True)
`, address], { stdio: ['ignore', 'pipe', 'inherit'] });
  let out = '';
  await new Promise<void>((resolve) => py.stdout.on('data', (d) => ((out += d), out.includes('ready') && resolve())));
  const prev = process.env.NOTIFY_SOCKET;
  process.env.NOTIFY_SOCKET = address;
  try {
    if (sdNotify('READY=1\nSTATUS=testing') !== 1) throw new Error('sdNotify did not send');
  } finally {
    if (prev === undefined) delete process.env.NOTIFY_SOCKET;
    else process.env.NOTIFY_SOCKET = prev;
  }
  await new Promise((r) => py.on('exit', r));
  return out.replace(/^ready\n/, '').trim();
}

test('sdNotify reaches $NOTIFY_SOCKET at a path and at an abstract @ address', async (t) => {
  if (spawnSync('python3', ['--version']).status !== 0) return t.fail('python3 is needed to stand in for systemd');
  const abstract = `@fleetcast-test-${process.pid}-${randomInt(1e9)}`;
  t.is(await notifyRoundTrip(abstract), 'READY=1\nSTATUS=testing');
  const file = path.join(require('node:os').tmpdir(), `fleetcast-notify-${process.pid}-${randomInt(1e9)}.sock`);
  t.teardown(() => require('node:fs').rmSync(file, { force: true }));
  t.is(await notifyRoundTrip(file), 'READY=1\nSTATUS=testing');
  delete process.env.NOTIFY_SOCKET;
  t.is(sdNotify('READY=1'), 0, 'no NOTIFY_SOCKET: nothing sent');
});
