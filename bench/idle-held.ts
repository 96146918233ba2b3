import { spawn } from 'node:child_process';
import { promises as fs } from 'node:fs';
import * as http from 'node:http';
import * as os from 'node:os';
import * as path from 'node:path';
import { clockTicks, cpuSeconds, memKiB } from './idle';
import { fleetcastCli, SETTLE_MS } from './idle-fleet';
import { freePort } from '../test/helpers/ports';

/**
 * `npm run bench -- idle-fleet [FOLLOWERS] [SECONDS] held`: where an idle server's CPU goes
 * with idle followers and no request at all (issue 17). One real `fleetcast server` process
 * (plain HTTP on loopback), measured three times for SECONDS each, after a settling pause:
 * 1. the idle server, no connection;
 * 2. plus FOLLOWERS channel polls held (`waitMs` 300000, the longest hold), one connection
 *    each, naming no member;
 * 3. those polls replaced by FOLLOWERS members: each joins (holding the release, so idle)
 *    and holds a 1.7 poll naming it (docs/protocol.md section 19), which stands for its
 *    heartbeats: the server then answers nothing in the window.
 * Each window starts once the server has taken every poll (its /v1/stats request count) and
 * 60 s have passed (SETTLE_MS). CPU is utime + stime of the server process from /proc, in ms
 * per second and in µs per follower-second. FLEETCAST_HELD_BIN=PATH runs another build's bin/fleetcast.js as the
 * server (an A/B against main's checkout); FLEETCAST_SCALE_PROF=DIR profiles it (--cpu-prof);
 * FLEETCAST_SCALE_NODE_ARGS adds node options (--trace-gc: its GCs, with each window's start).
 */

const BIN = process.env.FLEETCAST_HELD_BIN ?? path.join(__dirname, '..', '..', 'bin', 'fleetcast.js');
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const PER_GROUP = 10;
const HOLD_MS = 300_000;
/** Joins in flight at once while row 3 is set up. */
const JOINS_AT_ONCE = 200;

export interface HeldRow {
  row: string;
  followers: number;
  seconds: number;
  cpuSeconds: number;
  /** Requests the bench saw answered in the window (0 when nothing was asked). */
  answered: number;
  rssMiB: number;
}

export async function benchIdleHeld(followers: number, seconds: number): Promise<HeldRow[]> {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'fleetcast-idle-held-'));
  let proc: ReturnType<typeof spawn> | null = null;
  const pools: http.Agent[] = [];
  let answered = 0;
  try {
    const cli = fleetcastCli(BIN);
    cli(['keygen', '--out', path.join(dir, 'keys')]);
    const file = path.join(dir, 'fw.img');
    await fs.writeFile(file, Buffer.alloc(1 << 20, 7));
    const store = path.join(dir, 'store');
    const release = cli(['publish', file, '--store', store, '--key', path.join(dir, 'keys', 'server.key'), '--channel', 'stable']);
    const groups = Math.ceil(followers / PER_GROUP);
    const port = await freePort();
    const prof = process.env.FLEETCAST_SCALE_PROF ? ['--cpu-prof', '--cpu-prof-dir', process.env.FLEETCAST_SCALE_PROF] : [];
    const nodeArgs = (process.env.FLEETCAST_SCALE_NODE_ARGS ?? '').split(' ').filter(Boolean);
    const spawnedAt = Date.now();
    const p = spawn(process.execPath, [...nodeArgs, ...prof, BIN, 'server', '--store', store, '--listen', `127.0.0.1:${port}`, '--plain-http', '--log-level', 'warn', '--max-members-per-release', String(followers * 2), '--max-groups-per-release', String(groups * 2), '--max-connections', String(followers * 2 + 1024), '--max-connections-per-client', '64'], { stdio: ['ignore', nodeArgs.length ? 'inherit' : 'ignore', 'inherit'] });
    proc = p;
    const base = `http://127.0.0.1:${port}`;
    for (let tries = 0; !(await fetch(`${base}/v1/stats`).then((r) => r.ok, () => false)); tries++) {
      if (p.exitCode !== null || tries > 300) throw new Error('the server did not start');
      await sleep(100);
    }
    const hz = clockTicks();
    const rows: HeldRow[] = [];
    const measure = async (row: string, settleMs = SETTLE_MS) => {
      await sleep(settleMs);
      if (nodeArgs.length) process.stderr.write(`idle-fleet held: ${row}: window from ${Date.now() - spawnedAt} ms after the server's start\n`);
      const a0 = answered;
      const c0 = await cpuSeconds(p.pid!, hz);
      const t0 = Date.now();
      await sleep(seconds * 1000);
      const c1 = await cpuSeconds(p.pid!, hz);
      const window = (Date.now() - t0) / 1000;
      const mem = await memKiB(p.pid!);
      rows.push({ row, followers, seconds: window, cpuSeconds: c1.user + c1.system - (c0.user + c0.system), answered: answered - a0, rssMiB: mem.rss / 1024 });
      process.stderr.write(`idle-fleet held: ${row}: ${(((c1.user + c1.system - c0.user - c0.system) / window) * 1000).toFixed(1)} ms of CPU a second\n`);
    };
    const site = (i: number) => Math.floor(i / PER_GROUP);
    const local = (i: number) => {
      const s = site(i);
      return `127.${1 + ((s >> 16) & 0xff)}.${(s >> 8) & 0xff}.${1 + (s & 0xff) === 256 ? 255 : 1 + (s & 0xff)}`;
    };
    const request = (agent: http.Agent, i: number, method: string, p: string, body?: unknown) =>
      new Promise<{ status: number; body: Buffer }>((resolve, reject) => {
        const data = body === undefined ? null : Buffer.from(JSON.stringify(body));
        const req = http.request(`${base}${p}`, { method, agent, localAddress: local(i), headers: data ? { 'content-type': 'application/json', 'content-length': data.length } : {} }, (res) => {
          const chunks: Buffer[] = [];
          res.on('data', (c: Buffer) => chunks.push(c));
          res.on('end', () => {
            answered++;
            resolve({ status: res.statusCode ?? 0, body: Buffer.concat(chunks) });
          });
        });
        req.on('error', reject);
        req.end(data ?? undefined);
      });
    /** Follower i holds polls on its own connection until `stop.on` (its agent destroyed). */
    const holdPolls = (i: number, named: boolean, stop: { on: boolean }) => {
      const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
      pools.push(agent);
      const q = new URLSearchParams({ release, waitMs: String(HOLD_MS), ...(named ? { member: `m${i}`, group: `site${site(i)}` } : {}) });
      void (async () => {
        while (!stop.on) {
          const r = await request(agent, i, 'GET', `/v1/channels/stable?${q}`).catch(() => null);
          if (!r && !stop.on) await sleep(1000);
        }
      })();
      return agent;
    };

    /** Requests the server has taken (its /v1/stats count, less the reads of it here). */
    let statsReads = 0;
    const served = async () => {
      statsReads++;
      const s = (await (await fetch(`${base}/v1/stats`)).json()) as { requests: number };
      return s.requests - statsReads;
    };
    /** Until the server has taken `n` more requests than `from` (the polls are held, not still connecting). */
    const untilServed = async (from: number, n: number, what: string) => {
      for (let tries = 0; (await served()) < from + n; tries++) {
        if (tries > 1200) throw new Error(`the server never took ${what}`);
        await sleep(100);
      }
    };
    await measure('idle server', 15_000);
    const anon = { on: false };
    const r0 = await served();
    const anonAgents: http.Agent[] = [];
    // 1,000 connections every 100 ms: a burst of 10,000 overflows the listen queue, and the retried
    // connections would still be arriving in the window.
    for (let i = 0; i < followers; i++) {
      anonAgents.push(holdPolls(i, false, anon));
      if (i % 1000 === 999) await sleep(100);
    }
    await untilServed(r0, followers, `${followers} polls`);
    await measure(`+ ${followers.toLocaleString('en-US')} held channel polls`);
    anon.on = true;
    for (const a of anonAgents) a.destroy();
    const named = { on: false };
    const have = Buffer.from([0x80]).toString('base64'); // the one unit: idle
    const r1 = await served();
    const joinPools = new Map<number, http.Agent>();
    let next = 0;
    const joiner = async () => {
      for (let i = next++; i < followers; i = next++) {
        let pool = joinPools.get(site(i));
        if (!pool) {
          joinPools.set(site(i), (pool = new http.Agent({ keepAlive: true, maxSockets: 1 })));
          pools.push(pool);
        }
        const ref = { release, group: `site${site(i)}`, member: `m${i}` };
        for (let tries = 0; ; tries++) {
          const r = await request(pool, i, 'POST', '/v1/join', { ...ref, have, address: local(i), dataPort: 40000 + (i % PER_GROUP), mapVersion: 0 }).catch(() => null);
          if (r?.status === 200) break;
          if (tries > 20) throw new Error(`follower ${i} could not join: ${r ? `${r.status} ${r.body}` : 'no answer'}`);
          await sleep(500);
        }
        holdPolls(i, true, named);
      }
    };
    await Promise.all(Array.from({ length: JOINS_AT_ONCE }, joiner));
    await untilServed(r1, 2 * followers, `${followers} joins and polls`);
    // The join connections close (idle keep-alive sockets are no part of what row 3 measures).
    for (const a of joinPools.values()) a.destroy();
    await measure(`+ ${followers.toLocaleString('en-US')} joined idle members, each holding a poll naming it (instead of row 2's)`);
    named.on = true;
    return rows;
  } finally {
    for (const a of pools) a.destroy();
    if (proc && proc.exitCode === null) {
      const exited = new Promise((r) => proc!.once('exit', r));
      proc.kill('SIGTERM');
      await Promise.race([exited, sleep(5000)]);
      if (proc.exitCode === null && proc.signalCode === null) proc.kill('SIGKILL');
    }
    await fs.rm(dir, { recursive: true, force: true });
  }
}

export function idleHeldReport(rows: HeldRow[]): string[] {
  const lines = ['| row | window (s) | server CPU (ms per second) | µs per follower-second | requests answered in the window | server RSS (MiB) |', '| --- | ---: | ---: | ---: | ---: | ---: |'];
  for (const r of rows) {
    const msPerSec = (r.cpuSeconds / r.seconds) * 1000;
    lines.push(`| ${r.row} | ${r.seconds.toFixed(0)} | ${msPerSec.toFixed(1)} | ${((msPerSec * 1000) / r.followers).toFixed(2)} | ${r.answered} | ${r.rssMiB.toFixed(0)} |`);
  }
  return lines;
}
