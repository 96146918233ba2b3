import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { promises as fs, readFileSync } from 'node:fs';
import * as http from 'node:http';
import * as os from 'node:os';
import * as path from 'node:path';
import type { ExecutionContext } from 'ava';
import { generateKeyPair, loadPrivateKey } from '../src/release/keys';
import { publishRelease } from '../src/release/publish';
import { postgresUnsupported, startPostgres } from '../test/helpers/postgres';
import { freePort } from '../test/helpers/ports';

/**
 * `node dist/bench/coordinators.js [REQUESTS]` (root: it runs PostgreSQL as the postgres
 * user): what proxying to a group's owner costs (docs/scale-out.md, "What a proxied
 * request costs"). Two `fleetcast server` processes share a PostgreSQL; a member of a
 * group owned by A sends REQUESTS heartbeats (one at a time, keep-alive) straight to A,
 * then as many to B, which forwards each to A. Reported: p50 and p99 of each request as the
 * client sees it, and the CPU time A and B spent per 1,000 requests (utime + stime from
 * /proc), so the extra hop is measured where it is paid. 8 members (each its own group,
 * all owned by A) take turns, so A's per-group work is the same in both phases.
 */

const BIN = path.join(__dirname, '..', '..', 'bin', 'fleetcast.js');
const TICK = 100; // USER_HZ on Linux

function cpuSeconds(pid: number): number {
  const f = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const rest = f.slice(f.lastIndexOf(')') + 2).split(' ');
  return (Number(rest[11]) + Number(rest[12])) / TICK;
}

async function main(): Promise<void> {
  const n = Number(process.argv[2] ?? 2000);
  const why = postgresUnsupported();
  if (why) throw new Error(`cannot run: ${why}`);
  const teardowns: (() => Promise<void> | void)[] = [];
  const t = { teardown: (f: () => Promise<void> | void) => void teardowns.push(f) } as unknown as ExecutionContext;
  try {
    const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'fleetcast-bench-coord-'));
    teardowns.push(() => fs.rm(dir, { recursive: true, force: true }));
    const { keyPath } = await generateKeyPair(path.join(dir, 'keys'));
    await fs.writeFile(path.join(dir, 'r.bin'), randomBytes(64 * 1024 * 1024 / 64));
    const m = await publishRelease(path.join(dir, 'r.bin'), path.join(dir, 'store'), await loadPrivateKey(keyPath), { name: 'r.bin', unitSize: 16 * 1024 });
    for (const s of ['a', 'b']) await fs.cp(path.join(dir, 'store'), path.join(dir, s), { recursive: true });
    const pg = await startPostgres(t);
    const start = async (store: string) => {
      const port = await freePort();
      const url = `http://127.0.0.1:${port}`;
      const child = spawn(process.execPath, [BIN, 'server', '--store', store, '--listen', `127.0.0.1:${port}`, '--plain-http', '--engine', pg.url, '--instance-url', url, '--policy', 'group', '--log-level', 'warn'], { stdio: ['ignore', 'ignore', 'inherit'] });
      teardowns.push(() => void child.kill('SIGKILL'));
      for (let i = 0; ; i++) {
        if (await fetch(url + '/v1/releases').then(() => true, () => false)) break;
        if (i > 300) throw new Error('server did not start');
        await new Promise((r) => setTimeout(r, 100));
      }
      return { url, pid: child.pid! };
    };
    const a = await start(path.join(dir, 'a'));
    const b = await start(path.join(dir, 'b'));
    const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
    const have = Buffer.alloc(Math.ceil(m.unitCount / 8)).toString('base64');
    const post = (url: string, route: string, body: unknown) =>
      new Promise<number>((resolve, reject) => {
        const data = Buffer.from(JSON.stringify(body));
        const req = http.request(url + route, { method: 'POST', agent, headers: { 'content-type': 'application/json', 'content-length': data.length } }, (res) => {
          res.resume();
          res.on('end', () => (res.statusCode === 200 ? resolve(res.statusCode) : reject(new Error(`${route}: ${res.statusCode}`))));
        });
        req.on('error', reject);
        req.end(data);
      });
    const members = Array.from({ length: 8 }, (_, i) => ({ release: m.id, group: `g${i}`, member: `m${i}`, have }));
    for (const x of members) await post(a.url, '/v1/join', x); // A owns every group
    const phase = async (url: string) => {
      const lat: number[] = [];
      const cpu0 = [cpuSeconds(a.pid), cpuSeconds(b.pid)];
      for (let i = 0; i < n; i++) {
        const t0 = process.hrtime.bigint();
        await post(url, '/v1/heartbeat', members[i % members.length]);
        lat.push(Number(process.hrtime.bigint() - t0) / 1e6);
      }
      const cpu = [cpuSeconds(a.pid) - cpu0[0], cpuSeconds(b.pid) - cpu0[1]];
      lat.sort((x, y) => x - y);
      return { p50: lat[Math.floor(lat.length / 2)], p99: lat[Math.floor(lat.length * 0.99)], cpuA: (cpu[0] * 1000) / n, cpuB: (cpu[1] * 1000) / n };
    };
    await phase(a.url); // warm both paths
    await phase(b.url);
    const direct = await phase(a.url);
    const proxied = await phase(b.url);
    const row = (name: string, r: typeof direct) => `| ${name} | ${r.p50.toFixed(2)} | ${r.p99.toFixed(2)} | ${r.cpuA.toFixed(2)} | ${r.cpuB.toFixed(2)} |`;
    process.stdout.write(
      [
        `${n} heartbeats each, one at a time, ${os.cpus().length} cores (${os.cpus()[0]?.model ?? '?'}), 8 groups owned by A`,
        '',
        '| path | p50 ms | p99 ms | A: CPU s per 1,000 | B: CPU s per 1,000 |',
        '| --- | --- | --- | --- | --- |',
        row('to the owner A', direct),
        row('to B, proxied to A', proxied),
        '',
      ].join('\n'),
    );
    agent.destroy();
  } finally {
    for (const f of teardowns.reverse()) await f();
  }
}

main().catch((err) => {
  process.stderr.write(`bench coordinators: ${(err as Error).message}\n`);
  process.exit(1);
});
