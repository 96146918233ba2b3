import { spawnSync } from './helpers/sync';
import { existsSync, promises as fs } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { bootContainer, containerUnsupported, ok, until } from './helpers/container';
import { rootTest } from './helpers/netns';
import { agentYaml, completedRelease, makeOrigin, serverYaml, writeFile } from './helpers/units';

/**
 * `npm run deb` builds a package that `apt-get install ./fleetcast_*.deb` installs in a
 * booted systemd container; the agent it installs completes a release from the server
 * it installs. Heavy: flock /tmp/fleetcast-heavy.lock npx ava dist/test/deb.test.js
 *
 * The container boots this machine's /usr (test/helpers/container.ts), so apt resolves
 * the package's `nodejs (>= 20)` against this machine's installed nodejs package. Where
 * node is not installed from a Debian package of version 20 or later (Debian 12's own
 * nodejs is 18), the package cannot be installed and the test says so in its title.
 */

const root = path.join(__dirname, '..', '..');

function debUnsupported(): string | null {
  const why = containerUnsupported();
  if (why) return why;
  if (spawnSync('dpkg-deb', ['--version']).status !== 0) return 'needs dpkg-deb';
  const v = spawnSync('dpkg-query', ['-W', '-f=${Version}', 'nodejs'], { encoding: 'utf8' });
  if (v.status !== 0 || !v.stdout) return 'needs node from a Debian package nodejs (the .deb depends on it); this node is not from one';
  if (spawnSync('dpkg', ['--compare-versions', v.stdout, 'ge', '20']).status !== 0) return `the installed Debian package nodejs is ${v.stdout}; the .deb needs nodejs (>= 20) (Debian 13, or NodeSource's)`;
  return null;
}

rootTest(
  'the Debian package: apt-get install ./fleetcast_*.deb in a booted systemd; its group, configs, man pages; the agent it installs completes a release; remove stops it',
  async (t) => {
    t.timeout(8 * 60_000);
    const work = await fs.mkdtemp(path.join(os.tmpdir(), 'fleetcast-deb-'));
    t.teardown(() => fs.rm(work, { recursive: true, force: true }));
    const out = path.join(work, 'out');
    const build = spawnSync('sh', [path.join(root, 'scripts', 'build-deb.sh'), '--out', out], { encoding: 'utf8' });
    t.is(build.status, 0, build.stderr);
    const deb = build.stdout.trim().split('\n').at(-1)!;
    const version = JSON.parse(await fs.readFile(path.join(root, 'package.json'), 'utf8')).version;
    const arch = spawnSync('dpkg', ['--print-architecture'], { encoding: 'utf8' }).stdout.trim();
    t.is(path.basename(deb), `fleetcast_${version}_${arch}.deb`);
    const info = spawnSync('dpkg-deb', ['-f', deb, 'Depends'], { encoding: 'utf8' }).stdout;
    t.regex(info, /^nodejs \(>= 20\)/);

    // apt and dpkg write the package database and /usr: the container gets its own copy of
    // the database and a throwaway overlay on /usr. Its /etc starts empty (only systemd's
    // own users and groups), so this machine's dpkg-statoverride entries, which name
    // groups it lacks, are left out of the copy.
    const dpkgDb = path.join(work, 'dpkg');
    t.is(spawnSync('cp', ['-a', '/var/lib/dpkg', dpkgDb]).status, 0);
    await fs.writeFile(path.join(dpkgDb, 'statoverride'), '');
    const c = await bootContainer(t, {
      bind: [`${dpkgDb}:/var/lib/dpkg`],
      bindRo: [out, '/etc/ssl', ...(existsSync('/etc/manpath.config') ? ['/etc/manpath.config'] : [])],
      extra: ['--overlay=/usr::/usr'],
    });
    await ok(t, c, 'systemctl mask --runtime --now systemd-networkd-wait-online.service >/dev/null 2>&1');

    const inst = await ok(t, c, `mkdir -p /var/cache/apt/archives/partial /var/lib/apt/lists/partial /var/log/apt /etc/apt
      DEBIAN_FRONTEND=noninteractive apt-get install -y ${deb} 2>&1`, 180_000);
    t.regex(inst, /Setting up fleetcast/);
    t.regex(await ok(t, c, "dpkg-query -W -f='${Status}' fleetcast"), /install ok installed/);

    // The maintainer scripts' group and configs; the command, man pages and completion.
    t.is((await ok(t, c, 'getent group fleetcast')).split(':')[0], 'fleetcast');
    t.is((await ok(t, c, 'stat -c "%a %U %G" /etc/fleetcast /etc/fleetcast/agent.yaml /etc/fleetcast/server.yaml')).trim(), '2750 root fleetcast\n640 root fleetcast\n640 root fleetcast');
    t.is((await ok(t, c, 'readlink -f "$(command -v fleetcast)"')).trim(), '/usr/lib/fleetcast/bin/fleetcast.js');
    t.regex(await ok(t, c, 'fleetcast --help'), /Usage: fleetcast COMMAND/);
    const doc = (await c.show('fleetcast-agent', ['Documentation', 'FragmentPath'])) as { Documentation: string; FragmentPath: string };
    t.regex(doc.Documentation, /man:fleetcast-agent\(1\)/);
    t.is(doc.FragmentPath, '/lib/systemd/system/fleetcast-agent.service');
    for (const page of doc.Documentation.match(/man:[a-z-]+\(1\)/g)!) {
      const name = /man:([a-z-]+)\(1\)/.exec(page)![1];
      t.regex(await ok(t, c, `zcat /usr/share/man/man1/${name}.1.gz`), new RegExp(`^\\.TH ${name.toUpperCase()} 1`, 'm'), `${page} exists`);
    }
    t.regex(await ok(t, c, `bash -c '. /usr/share/bash-completion/completions/fleetcast; COMP_WORDS=(fleetcast ag); COMP_CWORD=1; _fleetcast; echo "\${COMPREPLY[@]}"'`), /^agent$/m);
    t.regex(await ok(t, c, 'cat /usr/share/doc/fleetcast/copyright'), /License: MIT/);

    // Configured and started: the agent from the package completes a release from the server.
    const { id, sha } = await makeOrigin(t, c);
    await ok(t, c, [writeFile('/etc/fleetcast/server.yaml', serverYaml), writeFile('/etc/fleetcast/agent.yaml', agentYaml('channel: stable\n'))].join('\n'));
    await ok(t, c, 'systemctl enable --now fleetcast-server fleetcast-agent 2>&1', 120_000);
    for (const u of ['server', 'agent']) {
      const s = await c.show(`fleetcast-${u}`, ['ActiveState', 'SubState']);
      t.is(`${s.ActiveState}/${s.SubState}`, 'active/running', u);
    }
    const done = await until('the agent to complete the release', 90_000, () => completedRelease(c));
    t.is(done.id, id);
    t.is((await ok(t, c, `sha256sum ${done.path}`)).split(' ')[0], sha);
    const st = JSON.parse(await ok(t, c, 'fleetcast status --json')) as { transport: { kind: string; fallbackReason: string | null } };
    t.is(st.transport.kind, 'native', `the packaged addon loads (${st.transport.fallbackReason})`);

    // Removing the package stops and disables the units; purging removes the configs it wrote.
    const pids = [(await c.show('fleetcast-agent', ['MainPID'])).MainPID, (await c.show('fleetcast-server', ['MainPID'])).MainPID];
    t.true(pids.every((p) => Number(p) > 0));
    await ok(t, c, 'DEBIAN_FRONTEND=noninteractive apt-get remove -y fleetcast 2>&1', 120_000);
    for (const p of pids) t.not((await c.sh(`kill -0 ${p}`)).code, 0, `process ${p} stopped on remove`);
    t.is((await c.sh('systemctl is-enabled fleetcast-agent')).stdout.trim() === 'enabled', false, 'not enabled after remove');
    t.is((await c.sh('test -e /usr/bin/fleetcast')).code, 1, 'the command is gone');
    await ok(t, c, 'DEBIAN_FRONTEND=noninteractive apt-get purge -y fleetcast 2>&1', 120_000);
    t.is((await c.sh('ls /etc/fleetcast/agent.yaml')).code, 2, 'purge removed the config it wrote');
  },
  debUnsupported(),
);
