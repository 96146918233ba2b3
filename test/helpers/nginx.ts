import { ChildProcess, spawn } from 'node:child_process';
import { spawnSync } from './sync';
import { promises as fs } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import type { ExecutionContext } from 'ava';
import { freePort } from './ports';

/**
 * A real nginx (Debian's package; .ci/run installs it) serving a directory as a static
 * HTTP origin on loopback, for the tests of unit bytes from any HTTP range origin
 * (docs/scale-out.md). Its access log records each request's status, body bytes, path,
 * query and Range header, so a test can count what the origin served and to whom (agents
 * name their group and member in the query string, which a static server ignores).
 * Stopped in t.teardown, by its master's PID, also when the test fails.
 */
export interface NginxRequest {
  status: number;
  bytes: number;
  uri: string;
  args: URLSearchParams;
  range: string;
}

export interface Nginx {
  url: string;
  pid: number;
  requests(): Promise<NginxRequest[]>;
  stop(): Promise<void>;
}

/** The nginx binary, or null when it is not installed. */
export function nginxBinary(): string | null {
  for (const p of ['/usr/sbin/nginx', '/usr/local/sbin/nginx', '/usr/bin/nginx']) {
    if (spawnSync(p, ['-v']).status === 0) return p;
  }
  return null;
}

export async function startNginx(t: ExecutionContext, root: string): Promise<Nginx> {
  const bin = nginxBinary();
  if (!bin) throw new Error('nginx is not installed (apt-get install nginx; .ci/run does)');
  const prefix = await fs.mkdtemp(path.join(os.tmpdir(), 'fleetcast-nginx-'));
  for (const d of ['body', 'proxy', 'fastcgi', 'uwsgi', 'scgi']) await fs.mkdir(path.join(prefix, d));
  const port = await freePort();
  const asRoot = process.getuid?.() === 0;
  const conf = [
    'daemon off;',
    'worker_processes 1;',
    `pid ${prefix}/nginx.pid;`,
    `error_log ${prefix}/error.log warn;`,
    // As root, workers would run as nobody, which cannot read a test's 0700 temp dirs.
    ...(asRoot ? ['user root;'] : []),
    'events { worker_connections 512; }',
    'http {',
    `  log_format fc '$status $body_bytes_sent "$uri" "$args" "$http_range"';`,
    `  access_log ${prefix}/access.log fc;`,
    ...['client_body', 'proxy', 'fastcgi', 'uwsgi', 'scgi'].map((k) => `  ${k}_temp_path ${prefix}/${k === 'client_body' ? 'body' : k};`),
    '  default_type application/octet-stream;',
    '  sendfile on;',
    `  server { listen 127.0.0.1:${port}; root ${root}; location / { } }`,
    '}',
  ].join('\n');
  const confPath = path.join(prefix, 'nginx.conf');
  await fs.writeFile(confPath, conf + '\n');
  const child: ChildProcess = spawn(bin, ['-p', prefix, '-c', confPath], { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  child.stderr!.on('data', (d) => (stderr += d));
  const exited = new Promise<void>((resolve) => child.on('exit', () => resolve()));
  const stop = async () => {
    if (child.exitCode === null && child.signalCode === null) {
      child.kill('SIGTERM'); // nginx: fast shutdown of the master and its workers
      const timer = setTimeout(() => child.kill('SIGKILL'), 5000);
      await exited;
      clearTimeout(timer);
    }
    await fs.rm(prefix, { recursive: true, force: true });
  };
  t.teardown(stop);
  const url = `http://127.0.0.1:${port}`;
  for (let i = 0; ; i++) {
    if (child.exitCode !== null) throw new Error(`nginx exited ${child.exitCode}: ${stderr}${await fs.readFile(path.join(prefix, 'error.log'), 'utf8').catch(() => '')}`);
    const ok = await fetch(url + '/').then(() => true, () => false);
    if (ok) break;
    if (i > 400) throw new Error('nginx did not answer within 20 s');
    await new Promise((r) => setTimeout(r, 50));
  }
  return {
    url,
    pid: child.pid!,
    stop,
    async requests() {
      const text = await fs.readFile(path.join(prefix, 'access.log'), 'utf8').catch(() => '');
      const out: NginxRequest[] = [];
      for (const line of text.split('\n')) {
        const m = /^(\d+) (\d+) "([^"]*)" "([^"]*)" "([^"]*)"$/.exec(line);
        if (m) out.push({ status: Number(m[1]), bytes: Number(m[2]), uri: m[3], args: new URLSearchParams(m[4] === '-' ? '' : m[4]), range: m[5] === '-' ? '' : m[5] });
      }
      return out;
    },
  };
}
