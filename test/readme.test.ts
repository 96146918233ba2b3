import test, { ExecutionContext } from 'ava';
import { createHash, randomBytes } from 'node:crypto';
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { commandBlocks, section } from './helpers/doc-blocks';
import { tmpdir } from './helpers/fleet';
import { inNetns, namespaceTest, netns } from './helpers/netns';

/**
 * The README's "Using it" and "Running a fleet" run as written, as a new operator would,
 * one after the other on one machine that plays the origin and box1 (issue 14: they did
 * not run). Every command line is the README's, byte for byte; what the test provides is
 * the machine around them, in a network namespace and a private mount namespace, so the
 * host is never touched:
 *   - the LAN interface eth0 (one end of a veth pair) and the name origin.example (/etc/hosts);
 *   - /etc, /var/lib, /opt and /usr/local as copy-on-write layers, /run as a tmpfs;
 *   - the release files fw.img and fw-2.4.img;
 *   - `sudo`: the test runs as root, so it runs the command as it is;
 *   - `npm`: runs in the checkout, which is already installed (`npm install` needs the
 *     registry, so it is skipped; `npm link` runs, into a temporary prefix on PATH);
 *     `npm run install-service` and `systemctl` need a booted systemd (the service
 *     container test runs them), so here they stand in: the first makes the fleetcast
 *     group and /etc/fleetcast and links fleetcast into /usr/local/bin as the script does, the second starts the unit's ExecStart
 *     line with the directories systemd would give it.
 * Long-running commands (a server, an agent without --once) run in the background, as in
 * another terminal.
 */

const ROOT = path.join(__dirname, '..', '..');

const sha256 = (b: Buffer) => createHash('sha256').update(b).digest('hex');

/** Single-quote for bash. */
const q = (s: string) => `'${s.replace(/'/g, `'\\''`)}'`;

function script(o: { tmp: string; work: string; lines: string[]; unit: string; after?: string }): string {
  const execStart = /^ExecStart=(.*)$/m.exec(o.unit)![1];
  const steps = o.lines.map((line, i) => {
    const longRunning = /^(sudo )?fleetcast (server|agent)\b/.test(line) && !/ --once\b/.test(line);
    // `fleet` right after the agent's service started may come before its first join (as
    // for an operator, who looks again): as written, again each second until it lists a group.
    const fleet = /^fleetcast fleet\b/.test(line);
    return [
      `echo ${q(`::cmd ${i} ${line}`)}`,
      longRunning ? `${line} > ${q(`${o.tmp}/bg-${i}.log`)} 2>&1 &` : fleet ? `for _ in $(seq 60); do out=$(${line}); grep -q ' group ' <<<"$out" && break; sleep 1; done; echo "$out"` : line,
      // A server in the background: wait until it listens (its port from its config).
      longRunning && /fleetcast server/.test(line) ? `wait_listen "$(sed -n 's/^listen: .*:\\([0-9]*\\)$/\\1/p' ${line.match(/--config (\S+)/)?.[1] ?? ''})"` : '',
    ].filter(Boolean).join('\n');
  });
  return `set -euo pipefail
T=${q(o.tmp)}
# This mount namespace only: /etc, /var/lib, /opt and /usr/local copy-on-write, a private /run.
mkdir -p "$T/ovl"
mount -t tmpfs tmpfs "$T/ovl"
for d in etc var/lib opt usr/local; do
  mkdir -p "$T/ovl/$d/up" "$T/ovl/$d/work"
  mount -t overlay overlay -o "lowerdir=/$d,upperdir=$T/ovl/$d/up,workdir=$T/ovl/$d/work" "/$d"
done
mount -t tmpfs tmpfs /run
echo '127.0.0.1 origin.example' >> /etc/hosts
export npm_config_prefix="$T/prefix" npm_config_ignore_scripts=true npm_config_offline=true npm_config_audit=false npm_config_fund=false npm_config_update_notifier=false
export PATH="$T/prefix/bin:$PATH"
sudo() { "$@"; }
npm() {
  if [ "$*" = install ]; then echo "(npm install: the checkout is installed)"; return 0; fi
  if [ "$*" = "run install-service" ]; then
    echo "(install-service stands in: the fleetcast group, /etc/fleetcast, fleetcast on PATH)"
    getent group fleetcast >/dev/null || groupadd --system fleetcast
    mkdir -p /usr/local/bin && ln -sf ${q(path.join(ROOT, 'bin', 'fleetcast.js'))} /usr/local/bin/fleetcast
    mkdir -p /etc/fleetcast && chgrp fleetcast /etc/fleetcast && chmod 2750 /etc/fleetcast
    return 0
  fi
  (cd ${q(ROOT)} && command npm "$@")
}
systemctl() {
  [ "$*" = "enable --now fleetcast-agent" ] || { echo "systemctl $*: not stood in for" >&2; return 1; }
  mkdir -p /run/fleetcast /var/lib/fleetcast
  CONFIGURATION_DIRECTORY=/etc/fleetcast RUNTIME_DIRECTORY=/run/fleetcast STATE_DIRECTORY=/var/lib/fleetcast \\
    bash -c ${q(`exec ${execStart}`)} > "$T/unit-agent.log" 2>&1 &
}
wait_listen() {
  for _ in $(seq 300); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done
  echo "nothing listens on port $1" >&2; return 1
}
cd ${q(o.work)}
${steps.join('\n')}
echo '::cmd end'
${o.after ?? ''}
kill $(jobs -p) 2>/dev/null || true
wait || true
`;
}

/** Run `lines` in a fresh namespace (see the top of this file); the shell's output. */
async function runAsWritten(t: ExecutionContext, lines: string[], files: Record<string, Buffer>, after?: string) {
  const tmp = await tmpdir(t);
  const work = path.join(tmp, 'work');
  await fs.mkdir(work);
  for (const [name, data] of Object.entries(files)) await fs.writeFile(path.join(work, name), data);
  const ns = await netns(t, ['ip link set lo up', 'ip link add eth0 type veth peer name eth0-peer', 'ip addr add 10.200.77.1/24 dev eth0', 'ip link set eth0-peer up', 'ip link set eth0 up multicast on']);
  const file = path.join(tmp, 'readme.sh');
  await fs.writeFile(file, script({ tmp, work, lines, after, unit: await fs.readFile(path.join(ROOT, 'systemd', 'fleetcast-agent.service'), 'utf8') }));
  const r = await inNetns(ns, 'unshare', ['--mount', '--propagation', 'private', 'bash', file], { timeoutMs: 240_000 });
  const log = async (f: string) => fs.readFile(path.join(tmp, f), 'utf8').catch(() => '');
  const last = [...r.stdout.matchAll(/^::cmd (\d+|end)/gm)].at(-1)?.[1];
  t.is(last, 'end', `stopped at: ${last === undefined ? '(setup)' : lines[Number(last)]}\n${r.stdout.slice(-1500)}\n${r.stderr.slice(-3000)}\n${await log('unit-agent.log')}`);
  t.is(r.code, 0, r.stderr.slice(-3000));
  if (process.env.FLEETCAST_TEST_VERBOSE) t.log(r.stdout);
  return { ...r, log };
}

namespaceTest('README "Using it" then "Running a fleet", every command as written, deliver both releases', async (t) => {
  const readme = await fs.readFile(path.join(ROOT, 'README.md'), 'utf8');
  const lines = [...commandBlocks(section(readme, 'Using it')), ...commandBlocks(section(readme, 'Running a fleet'))].flat();
  t.true(lines.length >= 10, `${lines.length} command lines`);
  const fw = randomBytes(3 * 1024 * 1024 + 5);
  const fw2 = randomBytes(2 * 1024 * 1024 + 7);
  // The unit's agent moves to the release published on its channel: wait for it, then
  // hand out what the box holds.
  const after = `for _ in $(seq 600); do
  fleetcast status --json > "$T/status.json" 2>/dev/null && grep -q '"name":"fw-2.4.img"' "$T/status.json" && grep -q '"complete":true' "$T/status.json" && break
  sleep 0.2
done
find /var/lib/fleetcast -type f \\( -name fw.img -o -name fw-2.4.img \\) -exec sha256sum {} + > "$T/sums"`;
  const r = await runAsWritten(t, lines, { 'fw.img': fw, 'fw-2.4.img': fw2 }, after);
  // agent --once printed the path of the verified file.
  t.regex(r.stdout, /^\/var\/lib\/fleetcast\/[0-9a-f]{32}\/fw\.img$/m);
  // config check (as the service user) and doctor passed on the installed agent.yaml; fleet saw box1's group.
  t.regex(r.stdout, /agent\.yaml: valid agent config/);
  t.regex(r.stdout, /^OK +server +https:\/\/origin\.example:7600 answers/m);
  t.regex(r.stdout, /fw(-2\.4)?\.img \([0-9a-f]{32}\) group site-a/);
  // Both releases on the box, byte for byte.
  const sums = (await r.log('sums')).trim().split('\n').map((l) => l.split(/\s+/));
  const byName = new Map(sums.map(([h, p]) => [path.basename(p), h]));
  t.is(byName.get('fw.img'), sha256(fw));
  t.is(byName.get('fw-2.4.img'), sha256(fw2), `status: ${await r.log('status.json')}\n${await r.log('unit-agent.log')}`);
});

namespaceTest('docs/operations.md: every command block runs as written (install, init, bring your own PKI)', async (t) => {
  const doc = await fs.readFile(path.join(ROOT, 'docs', 'operations.md'), 'utf8');
  const lines = commandBlocks(doc).flat();
  t.true(lines.some((l) => l.startsWith('fleetcast init server')));
  t.true(lines.some((l) => l.startsWith('openssl x509 -req')));
  const r = await runAsWritten(t, lines, {});
  t.regex(r.stdout, /origin\/server\.yaml: valid server config/);
  t.regex(r.stdout, /^server\.yaml: valid server config/m);
});

test('the README command blocks parse into the lines the namespace test runs', async (t) => {
  const readme = await fs.readFile(path.join(ROOT, 'README.md'), 'utf8');
  const using = commandBlocks(section(readme, 'Using it')).flat();
  t.true(using.some((l) => l.startsWith('fleetcast init server ')));
  t.true(using.some((l) => /^fleetcast server --config /.test(l)));
  t.true(using.some((l) => /fleetcast agent --config .* --once$/.test(l)));
  const fleet = commandBlocks(section(readme, 'Running a fleet')).flat();
  t.true(fleet.some((l) => /^fleetcast fleet --server https:\S+ --ca \S+ --token-file \S+$/.test(l)));
  t.false([...using, ...fleet].some((l) => l.includes('#')), 'comments are stripped');
});
