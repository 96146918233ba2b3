import * as path from 'node:path';
import { bootContainer, containerUnsupported, journal, ok, until } from './helpers/container';
import { rootTest } from './helpers/netns';
import { agentYaml, completedRelease, makeOrigin, serverYaml, writeFile } from './helpers/units';

/**
 * The units as installed, under a real systemd booted in its own container
 * (test/helpers/container.ts): install-service, start (READY, then the watchdog), a
 * reload that changes the channel and the hook, a release completed from the server,
 * a clean stop, and a bad config that ends with exit 78 and no restart loop. The
 * config, token and keys are 0640 in /etc/fleetcast, read by the units' dynamic user
 * through the fleetcast group. Heavy: run it under the shared lock
 * (flock /tmp/fleetcast-heavy.lock npx ava dist/test/systemd.test.js).
 */

const root = path.join(__dirname, '..', '..');
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

// The units' watchdog is 30 s; a short one here shows within seconds that it is fed.
const shortWatchdog = `[Service]
WatchdogSec=3
`;

rootTest(
  'under a real systemd: install-service, start (READY, watchdog), reload, a release completed, clean stop, exit 78 without a restart loop',
  async (t) => {
    t.timeout(8 * 60_000);
    const t0 = Date.now();
    const step = (what: string) => t.log(`${((Date.now() - t0) / 1000).toFixed(1)} s: ${what}`);
    // /usr is this machine's, read-only; install-service writes /usr/local/bin, so that is a tmpfs.
    const c = await bootContainer(t, { bindRo: [root], extra: ['--tmpfs=/usr/local', '--bind-ro=/etc/ssl'] });

    step('boot done');
    // The container has only lo, so nothing is ever "online": systemd-networkd-wait-online
    // would hold network-online.target (which the units want) for two minutes.
    await ok(t, c, 'systemctl mask --runtime --now systemd-networkd-wait-online.service >/dev/null 2>&1');
    // Installed the way the README says, as root.
    const inst = await ok(t, c, `sh ${root}/scripts/install-service.sh`);
    t.regex(inst, /wrote \/etc\/fleetcast\/agent\.yaml/);
    t.is((await ok(t, c, 'getent group fleetcast')).split(':')[0], 'fleetcast', 'install-service made the group');
    t.is((await ok(t, c, 'stat -c "%a %U %G" /etc/fleetcast /etc/fleetcast/agent.yaml')).trim(), '2750 root fleetcast\n640 root fleetcast');

    step('install-service done');
    // The origin's key, a device token (0640: only root and the fleetcast group read them), a release on channel stable.
    const { id, sha } = await makeOrigin(t, c);

    step('publish done');
    // The agent starts on a channel that has nothing yet; a reload moves it to stable.
    await ok(t, c, [
      'set -e',
      writeFile('/etc/fleetcast/server.yaml', serverYaml),
      writeFile('/etc/fleetcast/agent.yaml', agentYaml('channel: beta\n')),
      'for u in agent server; do mkdir -p /etc/systemd/system/fleetcast-$u.service.d',
      `  printf '${shortWatchdog.replace(/\n/g, '\\n')}' > /etc/systemd/system/fleetcast-$u.service.d/watchdog.conf; done`,
      'systemctl daemon-reload',
      'fleetcast config check /etc/fleetcast/agent.yaml >/dev/null',
    ].join('\n'));

    step('configs done');
    // Type=notify: start returns once READY=1 came.
    await ok(t, c, 'systemctl start fleetcast-server fleetcast-agent', 120_000);
    const props = ['ActiveState', 'SubState', 'MainPID', 'NRestarts', 'WatchdogTimestampMonotonic', 'Result', 'ExecMainStatus'];
    const s0 = { server: await c.show('fleetcast-server', props), agent: await c.show('fleetcast-agent', props) };
    for (const [u, s] of Object.entries(s0)) t.is(`${s.ActiveState}/${s.SubState}`, 'active/running', `${u} after start`);
    // Three watchdog periods later both run as the same process, never restarted, and
    // the watchdog was fed since READY (systemd would have killed them with SIGABRT).
    await sleep(9000);
    for (const u of ['server', 'agent'] as const) {
      const s = await c.show(`fleetcast-${u}`, props);
      t.is(`${s.ActiveState}/${s.SubState}`, 'active/running', `${u} after 3 watchdog periods`);
      t.is(s.MainPID, s0[u].MainPID, `${u} kept its process`);
      t.is(s.NRestarts, '0', `${u} was not restarted`);
      t.true(Number(s.WatchdogTimestampMonotonic) > Number(s0[u].WatchdogTimestampMonotonic), `${u} fed the watchdog (${s0[u].WatchdogTimestampMonotonic} -> ${s.WatchdogTimestampMonotonic})`);
    }
    const status0 = JSON.parse(await ok(t, c, 'fleetcast status --json')) as { channel: string; release: unknown };
    t.is(status0.channel, 'beta');
    t.is(status0.release, null, 'nothing to fetch on channel beta');

    step('started done');
    // systemctl reload: the channel and the hook change in the running process.
    await ok(t, c, writeFile('/etc/fleetcast/agent.yaml', agentYaml('channel: stable\non_complete: echo "$FLEETCAST_SHA256 $FLEETCAST_FILE" > /run/fleetcast/hook.out\n')));
    await ok(t, c, 'systemctl reload fleetcast-agent');
    await until('the reload to be logged', 20_000, async () => /reloaded \/etc\/fleetcast\/agent\.yaml: changed .*channel/.test(await journal(c, 'fleetcast-agent')));

    step('reload done');
    // The agent completes the release from the server; the hook saw the verified file.
    const done = await until('the agent to complete the release', 90_000, () => completedRelease(c));
    t.is(done.id, id);
    const [hookSha, hookFile] = (await until('the hook', 30_000, async () => (await c.sh('cat /run/fleetcast/hook.out')).stdout.trim())).split(' ');
    t.is(hookSha, sha);
    t.is((await ok(t, c, `sha256sum ${hookFile}`)).split(' ')[0], sha, 'the stored file is the published one');
    t.is((await c.show('fleetcast-agent', ['MainPID'])).MainPID, s0.agent.MainPID, 'reload did not restart the agent');

    step('complete done');
    // A bad file on reload: the running config stays, the agent keeps running.
    await ok(t, c, `printf 'rate: fast\\n' >> /etc/fleetcast/agent.yaml`);
    await ok(t, c, 'systemctl reload fleetcast-agent');
    await until('the refused reload to be logged', 20_000, async () => /agent\.yaml:\d+:\d+/.test(await journal(c, 'fleetcast-agent')));
    t.is((await c.show('fleetcast-agent', ['ActiveState'])).ActiveState, 'active');

    step('bad reload done');
    // systemctl stop is clean: the process exits 0 on SIGTERM by itself, within
    // TimeoutStopSec, no SIGKILL. A stopped unit is unloaded (systemctl show forgets
    // its exit), and systemd logs a clean exit only at debug level, so turn that on.
    await ok(t, c, 'systemd-analyze log-level debug');
    await ok(t, c, 'systemctl stop fleetcast-agent fleetcast-server', 60_000);
    for (const u of ['agent', 'server']) {
      t.is((await c.show(`fleetcast-${u}`, ['ActiveState'])).ActiveState, 'inactive');
      const j = await journal(c, `fleetcast-${u}`);
      t.regex(j, new RegExp(`fleetcast-${u}\\.service: Main process exited, code=exited, status=0/SUCCESS`), `${u} exited 0 on stop`);
      t.notRegex(j, /timed out|Killing process|code=killed|code=dumped/, `${u} stopped without force`);
    }
    await ok(t, c, 'systemd-analyze log-level info');

    step('stop done');
    // A bad config: exit 78 (EX_CONFIG), and RestartPreventExitStatus keeps it from looping.
    const start = await c.sh('systemctl start fleetcast-agent', { timeoutMs: 60_000 });
    t.not(start.code, 0, 'start fails on a bad config');
    const s1 = await c.show('fleetcast-agent', ['ActiveState', 'Result', 'ExecMainStatus', 'NRestarts']);
    t.is(s1.ExecMainStatus, '78');
    await sleep(5000); // RestartSec=2: a restart would have happened by now
    const s2 = await c.show('fleetcast-agent', ['ActiveState', 'Result', 'ExecMainStatus', 'NRestarts']);
    t.deepEqual(s2, { ActiveState: 'failed', Result: 'exit-code', ExecMainStatus: '78', NRestarts: '0' });
    step('bad config done');
    t.regex(await journal(c, 'fleetcast-agent'), /agent\.yaml:\d+:\d+.*rate/);
  },
  containerUnsupported(),
);
