import type { ExecutionContext } from 'ava';
import { Container, ok } from './container';

/**
 * A fleet of one origin and one agent on the container's lo, as an operator sets it up
 * after installing (the units, the package): configs, key, token, a release.
 */

export const serverYaml = `store: /var/lib/fleetcast-server
listen: 127.0.0.1:7600
plain_http: true
tokens_file: /etc/fleetcast/tokens
heartbeat_ms: 500
log_level: info
`;

export const agentYaml = (extra: string) => `server: http://127.0.0.1:7600
plain_http: true
token_file: /etc/fleetcast/token
group: site-a
interface: 127.0.0.1
multicast: 239.192.0.1:7601
storage: /var/lib/fleetcast
trust:
  - /etc/fleetcast/server.pub
channel_poll: 1
log_level: info
${extra}`;

/** A shell line that writes `text` to `file` (a quoted here-document: nothing in it is expanded). */
export const writeFile = (file: string, text: string) => `cat > ${file} <<'FLEETCAST_EOF'\n${text}FLEETCAST_EOF`;

/**
 * In the container, as root: the origin's signing key, a device token in
 * /etc/fleetcast/token and /etc/fleetcast/tokens (0640, group fleetcast through the
 * directory's setgid bit), and a 3 MB release published on channel stable.
 */
export async function makeOrigin(t: ExecutionContext, c: Container): Promise<{ id: string; sha: string }> {
  await ok(t, c, [
    'set -e',
    'fleetcast keygen --out /etc/fleetcast >/dev/null',
    'tok=$(head -c 16 /dev/urandom | od -An -tx1 | tr -d " \\n")',
    'umask 027',
    'printf "%s\\n" "$tok" > /etc/fleetcast/token',
    'printf "box1 %s\\n" "$tok" > /etc/fleetcast/tokens',
    'chmod 0640 /etc/fleetcast/token /etc/fleetcast/tokens /etc/fleetcast/server.pub',
  ].join('\n'));
  const modes = await ok(t, c, 'stat -c "%a %G" /etc/fleetcast/token /etc/fleetcast/server.pub');
  t.is(modes.trim(), '640 fleetcast\n640 fleetcast', 'files put in /etc/fleetcast take its group');
  const pub = await ok(t, c, [
    'set -e',
    'head -c 3000000 /dev/urandom > /root/fw.img',
    'fleetcast publish /root/fw.img --store /var/lib/fleetcast-server --key /etc/fleetcast/server.key --unit-size 262144 --channel stable',
  ].join('\n'));
  const id = pub.trim().split('\n').at(-1)!;
  const sha = (await ok(t, c, 'sha256sum /root/fw.img')).split(' ')[0];
  return { id, sha };
}

/** The agent's release once `fleetcast status` says it is complete, else null. */
export async function completedRelease(c: Container): Promise<{ id: string; path: string } | null> {
  const st = JSON.parse((await c.sh('fleetcast status --json')).stdout) as { release: { id: string; complete: boolean; path: string } | null };
  return st.release?.complete ? st.release : null;
}
