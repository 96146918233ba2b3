import { ExecutionContext } from 'ava';
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { tmpdir } from './fleet';
import { inNetns, netns } from './netns';

/**
 * Run documented command lines as written, as a new operator would, one after the other
 * on one machine that plays the origin and box1 (issue 14: the README's did not run).
 * Every command line is the doc's, byte for byte; what the test provides is the machine
 * around them, in a network namespace and a private mount namespace, so the host is never
 * touched:
 *   - the LAN interface eth0 (one end of a veth pair) and the name origin.example (/etc/hosts);
 *   - /etc, /var/lib, /opt and /usr/local as copy-on-write layers, /run as a tmpfs;
 *   - the files the doc assumes (release images), in the working directory;
 *   - `sudo`: the test runs as root, so it runs the command as it is;
 *   - `npm`: runs in the checkout, which is already installed (`npm install` needs the
 *     registry, so it is skipped; `npm link` runs, into a temporary prefix on PATH);
 *     `npm run install-service` and `systemctl` need a booted systemd (the service
 *     container test runs them), so here they stand in: the first makes the fleetcast
 *     group and /etc/fleetcast and links fleetcast into /usr/local/bin as the script does, the second starts the unit's ExecStart
 *     line with the directories systemd would give it.
 * Long-running commands (a server, an agent without --once) run in the background, as in
 * another terminal.
 * (Used by readme.test.ts and rollouts-doc.test.ts.)
 */

const ROOT = path.join(__dirname, '..', '..', '..');

/** Single-quote for bash. */
export const q = (s: string) => `'${s.replace(/'/g, `'\\''`)}'`;

export function script(o: { tmp: string; work: string; lines: string[]; unit: string; after?: string }): string {
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

export interface AsWrittenOptions {
  /** Shell run after the last line, in the same shell (to collect what the lines left behind). */
  after?: string;
  /** Environment for the whole run (every command and what it starts in the background). */
  env?: NodeJS.ProcessEnv;
  timeoutMs?: number;
}

/** Run `lines` in a fresh namespace (see the top of this file); the shell's output. */
export async function runAsWritten(t: ExecutionContext, lines: string[], files: Record<string, Buffer>, o: AsWrittenOptions = {}) {
  const tmp = await tmpdir(t);
  const work = path.join(tmp, 'work');
  await fs.mkdir(work);
  for (const [name, data] of Object.entries(files)) await fs.writeFile(path.join(work, name), data);
  const ns = await netns(t, ['ip link set lo up', 'ip link add eth0 type veth peer name eth0-peer', 'ip addr add 10.200.77.1/24 dev eth0', 'ip link set eth0-peer up', 'ip link set eth0 up multicast on']);
  const file = path.join(tmp, 'readme.sh');
  await fs.writeFile(file, script({ tmp, work, lines, after: o.after, unit: await fs.readFile(path.join(ROOT, 'systemd', 'fleetcast-agent.service'), 'utf8') }));
  const r = await inNetns(ns, 'unshare', ['--mount', '--propagation', 'private', 'bash', file], { timeoutMs: o.timeoutMs ?? 240_000, env: o.env });
  const log = async (f: string) => fs.readFile(path.join(tmp, f), 'utf8').catch(() => '');
  const last = [...r.stdout.matchAll(/^::cmd (\d+|end)/gm)].at(-1)?.[1];
  t.is(last, 'end', `stopped at: ${last === undefined ? '(setup)' : lines[Number(last)]}\n${r.stdout.slice(-1500)}\n${r.stderr.slice(-3000)}\n${await log('unit-agent.log')}`);
  t.is(r.code, 0, r.stderr.slice(-3000));
  if (process.env.FLEETCAST_TEST_VERBOSE) t.log(r.stdout);
  /** What line `i` printed on stdout (up to the next line's marker). */
  const output = (i: number) => {
    const m = new RegExp(`^::cmd ${i} .*\\n([\\s\\S]*?)^::cmd `, 'm').exec(r.stdout);
    return m ? m[1] : '';
  };
  return { ...r, log, output };
}
