import test from 'ava';
import { randomBytes } from 'node:crypto';
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { AgentDaemon } from '../src/agent/daemon';
import { splitHostPort } from '../src/cli/args';
import { ServerAccess } from '../src/net/server-access';
import { setChannel } from '../src/release/channels';
import { loadPrivateKey, loadPublicKey } from '../src/release/keys';
import { publishRelease } from '../src/release/publish';
import { FleetcastServer } from '../src/server/server';
import { silentLogger } from '../src/util/log';
import { runCli, startFleet } from './helpers/fleet';

const until = async (cond: () => boolean | Promise<boolean>, what: string, limitMs = 60_000): Promise<void> => {
  const t0 = Date.now();
  while (!(await cond())) {
    if (Date.now() - t0 > limitMs) throw new Error(`never happened: ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
};

// Issue 14: peer ids never matched fleet's member ids, "role gateway" showed in a plain
// group, superseded releases lingered, hook results vanished with a server restart, and
// "ms/MiB" was not explained.
test('status and fleet: the same member ids, role only where it means something, superseded groups gone, hook results kept across a server restart, units explained', async (t) => {
  const f = await startFleet(t, { size: 300_000, unitSize: 65536, heartbeatMs: 100 });
  const store = path.join(f.dir, 'store');
  await setChannel(store, { channel: 'stable', release: f.manifest.id, name: f.manifest.name, publishedAt: Date.now() });
  const mc = splitHostPort(f.multicast) as { host: string; port: number };
  const trusted = [await loadPublicKey(f.pubPath)];
  const daemons = ['box1', 'box2'].map(
    (id) =>
      new AgentDaemon({
        agent: { server: new ServerAccess({ url: f.url, plainHttp: true }), group: 'g1', member: id, interface: '127.0.0.1', multicast: { address: mc.host, port: mc.port }, storageDir: path.join(f.dir, id), trustedKeys: trusted, lingerMs: 0 },
        channel: 'stable',
        keep: 2,
        onComplete: 'true',
        hookTimeoutMs: 10_000,
        channelPollMs: 100,
        logger: silentLogger,
      }),
  );
  t.teardown(() => Promise.all(daemons.map((d) => d.stop())));
  const sock = path.join(f.dir, 'box1.sock');
  await daemons[0].serveStatus(sock);
  for (const d of daemons) void d.runForever();
  const onRelease = (id: string) => daemons.every((d) => d.currentRelease === id && d.state === 'complete' && d.lastHook?.release === id);
  await until(() => onRelease(f.manifest.id), 'both complete the first release and run the hook');

  const st = await runCli(['status', '--socket', sock]);
  t.is(st.code, 0, st.stderr);
  t.regex(st.stdout, /^agent box1 in group g1, state complete/m);
  t.notRegex(st.stdout, /role/, 'a plain group: no role');
  await until(async () => /^members +box2 done/m.test((await runCli(['status', '--socket', sock])).stdout), 'status names box2 as fleet does');
  const json = JSON.parse((await runCli(['status', '--socket', sock, '--json'])).stdout) as { release: { verifiedBytes: number; etaSeconds: number | null; size: number }; members: { id: string }[] };
  t.is(json.release.verifiedBytes, f.manifest.size);
  t.is(json.release.etaSeconds, 0);
  t.deepEqual(json.members.map((m) => m.id), ['box2']);

  const fleet = async () => runCli(['fleet', '--server', f.url, '--plain-http']);
  let fl = await fleet();
  t.is(fl.code, 0, fl.stderr);
  t.regex(fl.stdout, /^ {2}MEMBER +RANK +UNITS +OVERHEAD +HOOK +LAST SEEN$/m);
  t.notRegex(fl.stdout, /ROLE|gateway/);
  t.regex(fl.stdout, /^ {2}box1 +#\d +5\/5 done .*exit 0/m);
  t.regex(fl.stdout, /^ {2}box2 +#\d +5\/5 done .*exit 0/m);
  t.regex(fl.stdout, /OVERHEAD: how long the member takes per MiB/);

  // A new release on the channel: both move, and the first release's group is gone from fleet.
  await fs.writeFile(path.join(f.dir, 'v2.bin'), randomBytes(200_000));
  const m2 = await publishRelease(path.join(f.dir, 'v2.bin'), store, await loadPrivateKey(f.keyPath), { unitSize: 65536 });
  await setChannel(store, { channel: 'stable', release: m2.id, name: m2.name, publishedAt: Date.now() });
  await until(() => onRelease(m2.id), 'both complete the second release and run its hook');
  await until(async () => !(await fleet()).stdout.includes(f.manifest.id), 'the superseded release leaves fleet');
  fl = await fleet();
  t.regex(fl.stdout, new RegExp(`^v2\\.bin \\(${m2.id}\\) group g1: 2 member\\(s\\), complete`, 'm'));

  // The server restarts on the same store and port: the agents rejoin, and their hook
  // results (reported once, never again) are still there.
  const port = Number(new URL(f.url).port);
  await f.server.stop();
  // The agents keep connecting to the closed port meanwhile, and on loopback such a connect
  // can take that very port as its own source (a TCP self-connect) until it fails: the
  // listen is retried then, as an operator's restart would be.
  let again!: FleetcastServer;
  for (let attempt = 1; ; attempt++) {
    const s = new FleetcastServer({ storeDir: store, host: '127.0.0.1', port, heartbeatMs: 100, allocator: { memberTimeoutMs: 2000 } });
    try {
      await s.start();
      again = s;
      break;
    } catch (err) {
      await s.stop().catch(() => undefined);
      if ((err as NodeJS.ErrnoException).code !== 'EADDRINUSE' || attempt >= 50) throw err;
      await new Promise((r) => setTimeout(r, 100));
    }
  }
  t.teardown(() => again.stop());
  await until(async () => /^ {2}box2 .*exit 0/m.test((await fleet()).stdout) && /^ {2}box1 .*exit 0/m.test((await fleet()).stdout), 'both rejoin with their hook results');
  // Overheads measured before the restart are shown (marked) until measured again.
  const view = JSON.parse((await runCli(['fleet', '--server', f.url, '--plain-http', '--json'])).stdout) as { groups: { release: string; members: { id: string; overheadMsPerMiB: number | null; overheadBeforeRestart?: boolean }[] }[] };
  const g2 = view.groups.find((g) => g.release === m2.id)!;
  t.true(g2.members.some((m) => m.overheadMsPerMiB !== null && m.overheadBeforeRestart === true), JSON.stringify(g2.members));
  for (const m of g2.members) if (m.overheadBeforeRestart) t.is(typeof m.overheadMsPerMiB, 'number');
});
