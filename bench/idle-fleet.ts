import { spawnSync } from 'node:child_process';
import { promises as fs } from 'node:fs';
import * as http from 'node:http';
import * as os from 'node:os';
import * as path from 'node:path';
import { clockTicks, cpuSeconds, memKiB } from './idle';
import { startScaleServers } from './scale-cluster';

/**
 * `npm run bench -- idle-fleet [FOLLOWERS] [SECONDS] [FORM[,FORM]]`: what an idle agent that
 * follows a channel costs the server (issue 17: at most 1 µs of CPU a second, and a new
 * release learned within 5 s). A real `fleetcast server` process; FOLLOWERS simulated
 * agents in this process, 10 per LAN group, each group on its own loopback address. Each
 * holds the channel's release (joined with every unit) and does on the control plane what
 * an idle agent's daemon does (src/agent/daemon.ts, install.ts, heartbeat.ts) in one of two
 * forms:
 * - 1.5: a channel poll held `channel_poll` (10 s), a rollout poll after each answer, and a
 *   heartbeat every interval the server answers (clamped to 60 s);
 * - 1.6: the same, but once the server has sent a rollout token and no rollout runs, each
 *   channel poll asks for the server's longest hold (`x-fleetcast-long-poll`) with the
 *   token, and heartbeat intervals up to 900 s are taken (docs/protocol.md section 18).
 * - 1.7: the same long polls name the follower (member and group), which the server takes
 *   as its rollout poll and as a sign of life: the rollout poll after an answer is left out
 *   while the answer says `x-fleetcast-following: rollout` and the token is the one of the
 *   follower's last rollout poll, and heartbeat intervals and holds up to an hour are taken
 *   (section 19: a longer hold or interval in an answer is clamped to an hour).
 * - 1.8: the same as 1.7, with heartbeat intervals and holds up to a day (section 20).
 * A real fleet's agents started at different times, so each follower's first hold and
 * first heartbeat are cut to a random part of a whole one: the window then sees the steady
 * rate. Measured over the window: the server's CPU (utime + stime from /proc) per
 * follower-second, requests per second by kind, the server's RSS. Then the bench publishes
 * a new release to the channel and measures, per follower, the time from the publish
 * command's end to the answer naming it.
 * FLEETCAST_IDLE_HOLD_MS=N caps the long holds at N ms (at least 1000): the same idle
 * members, N times more often answered and asked again, so a window's extra CPU over an
 * uncapped run, divided by its extra channel polls, is what one poll costs the server.
 * FLEETCAST_SCALE_NODE_ARGS adds node options to the server's command line, as for
 * `bench -- scale` (e.g. --perf-basic-prof, so `perf record -p PID` names JS functions).
 */

const BIN = path.join(__dirname, '..', '..', 'bin', 'fleetcast.js');
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const sleepUnref = (ms: number) => new Promise((r) => setTimeout(r, ms).unref());
const PER_GROUP = 10;
const CHANNEL_POLL_MS = 10_000;
/** FLEETCAST_IDLE_HOLD_MS: a cap on the long holds (ms), to measure the cost of one poll. */
const HOLD_CAP_MS = process.env.FLEETCAST_IDLE_HOLD_MS ? Math.max(1000, Number(process.env.FLEETCAST_IDLE_HOLD_MS)) : Infinity;

/**
 * Before each window: V8's memory reducer runs a few full GCs (`Mark-Compact (reduce)`) 30 to
 * 50 s after the setup's allocations stop (--trace-gc), about 150 ms of CPU each with 10,000
 * followers; they come once after a burst, not in an idle fleet's steady state.
 */
export const SETTLE_MS = 60_000;

export type IdleForm = '1.5' | '1.6' | '1.7' | '1.8';

/** The longest heartbeat interval, and (1.7, 1.8) channel hold, a form takes (ms): longer ones are clamped to it. */
const MAX_TAKEN_MS: Record<IdleForm, number> = { '1.5': 60_000, '1.6': 900_000, '1.7': 3_600_000, '1.8': 86_400_000 };
/** Every form the bench simulates. */
export const IDLE_FORMS = Object.keys(MAX_TAKEN_MS) as IdleForm[];
/** Forms whose long polls name the follower (section 19). */
const NAMES_ITSELF = (form: IdleForm) => form === '1.7' || form === '1.8';

export interface IdleFleetResult {
  followers: number;
  form: IdleForm;
  seconds: number;
  serverCpuSeconds: number;
  /** Requests per second the server answered, by kind, over the window. */
  rates: Record<string, number>;
  failed: number;
  /** Failed requests by kind and status or error code. */
  failures: Record<string, number>;
  /** Heartbeat interval the server answered last (ms). */
  heartbeatMs: number;
  holdMs: number;
  learnedMs: { p50: number; p99: number; max: number; within5s: number; learned: number };
  serverRssMiB: number;
  loadAverage: number;
}

/** This process's open-files limit (soft), which its children inherit. */
function fileLimit(): number {
  const r = spawnSync('prlimit', ['--pid', String(process.pid), '--nofile', '--output', 'SOFT', '--noheadings'], { encoding: 'utf8' });
  return Number(r.stdout.trim()) || 1024;
}

function pct(xs: number[], p: number): number {
  if (xs.length === 0) return NaN;
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))];
}

/** Runs `fleetcast ARGS` of the build at `bin` to its end; its last line of output, or an error with its stderr. */
export function fleetcastCli(bin: string): (args: string[]) => string {
  return (args) => {
    const r = spawnSync(process.execPath, [bin, ...args], { encoding: 'utf8' });
    if (r.status !== 0) throw new Error(`fleetcast ${args[0]}: ${r.stderr}`);
    return r.stdout.trim().split('\n').pop()!.trim();
  };
}

export async function benchIdleFleet(followers: number, seconds: number, form: IdleForm): Promise<IdleFleetResult> {
  // A connection per follower for its held polls, and 2 per site for the posts (heartbeats and
  // rollout polls of its 10 followers), on each side: a real agent has its own, but an idle
  // connection costs the server no CPU, and one process may have only so many files.
  const need = followers + Math.ceil(followers / PER_GROUP) * 2 + 1024;
  const limit = fileLimit();
  if (limit < need) throw new Error(`${followers} followers need ${need} open files; this process (and the server it starts) may have ${limit}`);
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'fleetcast-idle-fleet-'));
  let stopServers: (() => Promise<void>) | null = null;
  const pools: http.Agent[] = [];
  let stop = false;
  try {
    const cli = fleetcastCli(BIN);
    cli(['keygen', '--out', path.join(dir, 'keys')]);
    const store = path.join(dir, 'store');
    const publish = (name: string) => {
      const file = path.join(dir, name);
      spawnSync('sh', ['-c', `head -c 1048576 /dev/urandom > ${file}`]);
      return cli(['publish', file, '--store', store, '--key', path.join(dir, 'keys', 'server.key'), '--channel', 'stable']);
    };
    const release = publish('fw-1.img');
    const groups = Math.ceil(followers / PER_GROUP);
    const started = await startScaleServers(1, store, ['--max-members-per-release', String(followers * 2), '--max-groups-per-release', String(groups * 2), '--max-connections', String(need), '--max-connections-per-client', '64'], [...(process.env.FLEETCAST_SCALE_PROF ? ['--cpu-prof', '--cpu-prof-dir', process.env.FLEETCAST_SCALE_PROF] : []), ...(process.env.FLEETCAST_SCALE_NODE_ARGS ?? '').split(' ').filter(Boolean)]);
    stopServers = started.stop;
    const server = started.servers[0];
    const base = `http://127.0.0.1:${server.port}`;
    const have = Buffer.from([0x80]).toString('base64'); // the one unit

    const measuring = { on: false };
    const counts: Record<string, number> = {};
    let failed = 0;
    const failures: Record<string, number> = {};
    let answeredHeartbeatMs = 0;
    let answeredHoldMs = 0;
    /** When the new release was published (after the window), and when each follower learned it. */
    let published = 0;
    let newRelease = '';
    const learned: number[] = [];

    const request = (pool: http.Agent, local: string, kind: string, method: string, p: string, body?: unknown, timeoutMs = 30_000) =>
      new Promise<{ status: number; headers: http.IncomingHttpHeaders; body: Buffer }>((resolve, reject) => {
        const data = body === undefined ? null : Buffer.from(JSON.stringify(body));
        const req = http.request(`${base}${p}`, { method, agent: pool, localAddress: local, timeout: timeoutMs, headers: data ? { 'content-type': 'application/json', 'content-length': data.length } : {} }, (res) => {
          const chunks: Buffer[] = [];
          res.on('data', (c: Buffer) => chunks.push(c));
          res.on('end', () => {
            if (measuring.on) counts[kind] = (counts[kind] ?? 0) + 1;
            if (measuring.on && res.statusCode !== 200) {
              failed++;
              const k = `${kind} ${res.statusCode}`;
              failures[k] = (failures[k] ?? 0) + 1;
            }
            resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks) });
          });
        });
        req.on('timeout', () => req.destroy(new Error('timeout')));
        req.on('error', (err: NodeJS.ErrnoException) => {
          if (measuring.on) {
            failed++;
            const k = `${kind} ${err.code ?? err.message}`;
            failures[k] = (failures[k] ?? 0) + 1;
          }
          reject(err);
        });
        req.end(data ?? undefined);
      });

    const sitePools = new Map<number, http.Agent>();
    const follower = async (i: number) => {
      const site = Math.floor(i / PER_GROUP);
      const local = `127.${1 + ((site >> 16) & 0xff)}.${(site >> 8) & 0xff}.${1 + (site & 0xff) === 256 ? 255 : 1 + (site & 0xff)}`;
      let pool = sitePools.get(site);
      if (!pool) {
        sitePools.set(site, (pool = new http.Agent({ keepAlive: true, maxSockets: 2 })));
        pools.push(pool);
      }
      const polls = new http.Agent({ keepAlive: true, maxSockets: 1 });
      pools.push(polls);
      const ref = { release, group: `site${site}`, member: `m${i}` };
      let heartbeatMs = 1000;
      // The map version of the last answer, sent back as a 1.4 agent does: an idle member's
      // answers then carry nothing (section 14).
      let map: { mapEpoch?: number; mapVersion: number } = { mapVersion: 0 };
      const took = (body: Buffer) => {
        const a = JSON.parse(body.toString()) as { heartbeatMs: number; mapEpoch?: number; mapVersion?: number };
        if (typeof a.mapVersion === 'number') map = { mapEpoch: a.mapEpoch, mapVersion: a.mapVersion };
        return a.heartbeatMs;
      };
      for (let tries = 0; ; tries++) {
        const r = await request(pool, local, 'join', 'POST', '/v1/join', { ...ref, have, address: local, dataPort: 40000 + (i % PER_GROUP), mapVersion: 0 }).catch(() => null);
        if (r?.status === 200) {
          heartbeatMs = took(r.body);
          break;
        }
        if (stop) return;
        await sleep(Math.min(10_000, 200 * 2 ** Math.min(tries, 6)));
      }
      const beats = (async () => {
        // The first beat, and the first at each new interval, at a random point of one
        // interval (agents started at different times): the window sees the steady rate.
        let phase = true;
        while (!stop) {
          // Unref'd: an hour's or a day's wait (1.7, 1.8) must not keep the bench alive after its run.
          await sleepUnref(phase ? Math.random() * heartbeatMs : heartbeatMs);
          phase = false;
          if (stop) break;
          const r = await request(pool, local, 'heartbeat', 'POST', '/v1/heartbeat', { ...ref, have, address: local, dataPort: 40000 + (i % PER_GROUP), ...map }).catch(() => null);
          if (r?.status === 200) {
            const ms = Math.min(MAX_TAKEN_MS[form], Math.max(50, took(r.body)));
            phase = ms !== heartbeatMs;
            heartbeatMs = ms;
            answeredHeartbeatMs = heartbeatMs;
          }
        }
      })();
      let known: string | null = null;
      let token: string | null = null;
      /** The token at our last rollout poll (1.7 leaves the next out while it stays). */
      let polledToken: string | null = null;
      let maxHold: number | null = null;
      /** Whether maxHold is what a poll naming us was granted (1.7: the server may grant those longer, section 19). */
      let maxHoldNamed = false;
      let phased = { short: false, long: false };
      while (!stop) {
        const long: boolean = form !== '1.5' && token !== null && maxHold !== null;
        let hold: number = known ? (long ? Math.min(HOLD_CAP_MS, Math.max(CHANNEL_POLL_MS, maxHold!)) : CHANNEL_POLL_MS) : 0;
        // 1.7: learn the hold granted to a poll that names us (a 1 ms one) before the first
        // long hold, so that hold's random phase is cut from the steady length.
        if (NAMES_ITSELF(form) && long && !maxHoldNamed) hold = 1;
        else if (hold > 0) {
          if (long) answeredHoldMs = hold;
          // The first hold of each length is cut to a random part of it (a random phase).
          const kind = long ? 'long' : 'short';
          if (!phased[kind]) {
            phased = { ...phased, [kind]: true };
            hold = Math.max(1, Math.round(Math.random() * hold));
          }
        }
        const q: string = hold > 0 ? `?${new URLSearchParams({ release: known!, waitMs: String(hold), ...(form !== '1.5' && token !== null ? { rollout: token } : {}), ...(NAMES_ITSELF(form) && token !== null ? { member: ref.member, group: ref.group } : {}) })}` : '';
        const r: { status: number; headers: http.IncomingHttpHeaders; body: Buffer } | null = await request(polls, local, 'channel', 'GET', `/v1/channels/stable${q}`, undefined, hold + 30_000).catch(() => null);
        if (!r || r.status !== 200) {
          await sleep(1000);
          continue;
        }
        const head = JSON.parse(r.body.toString()) as { release: string };
        if (newRelease && head.release === newRelease) {
          learned.push(Date.now() - published);
          break;
        }
        known = head.release;
        if (hold > 0) {
          const granted = Number(r.headers['x-fleetcast-long-poll']);
          maxHold = granted >= 1000 ? Math.min(granted, MAX_TAKEN_MS[form]) : null;
          maxHoldNamed = NAMES_ITSELF(form) && q.includes('member=');
          const t: string | string[] | undefined = r.headers['x-fleetcast-rollout'];
          token = typeof t === 'string' ? t : null;
        }
        // 1.7: a held poll that named us stood for the rollout poll while the token stayed.
        const following = String(r.headers['x-fleetcast-following'] ?? '').split(',');
        if (NAMES_ITSELF(form) && hold > 0 && following.includes('rollout') && token !== null && token === polledToken) continue;
        const asked = await request(pool, local, 'rollout poll', 'POST', '/v1/rollouts/poll', { channel: 'stable', group: ref.group, member: ref.member }).catch(() => null);
        if (asked?.status === 200) polledToken = token;
      }
      await beats;
    };

    const all = Array.from({ length: followers }, (_, i) => follower(i));
    // Warm-up: every follower joined and past its first (short) hold; for 1.7 and 1.8 also past its
    // first beat at the 1.6 idle interval (followers / 100 a second), after which it is asked
    // for one a day (taken as an hour by 1.7): the window then sees the steady rate, not the way into it. And then
    // SETTLE_MS more, for the GCs that follow that first-beat burst (2026-12-01: they fell in
    // the window, the server's main thread at 47 ms a second in the 10 s that held them, 9-13
    // in the rest).
    await sleep(Math.max(15_000, followers / 2, NAMES_ITSELF(form) ? Math.min(900_000, followers * 10) + 15_000 + SETTLE_MS : 0));
    const hz = clockTicks();
    const c0 = await cpuSeconds(server.pid, hz);
    measuring.on = true;
    const t0 = Date.now();
    await sleep(seconds * 1000);
    measuring.on = false;
    const window = (Date.now() - t0) / 1000;
    const c1 = await cpuSeconds(server.pid, hz);
    const mem = await memKiB(server.pid);
    const stats = (await (await fetch(`${base}/v1/stats`)).json()) as { limits?: Record<string, number> };
    const limitsHit = Object.fromEntries(Object.entries(stats.limits ?? {}).filter(([, n]) => n > 0));
    if (Object.keys(limitsHit).length) process.stderr.write(`idle-fleet: server limits hit: ${JSON.stringify(limitsHit)}\n`);
    const loadAverage = os.loadavg()[0];
    newRelease = publish('fw-2.img');
    published = Date.now();
    // Learned within the channel check (500 ms) plus the answers' time; give it 60 s.
    for (let i = 0; i < 600 && learned.length < followers; i++) await sleep(100);
    stop = true;
    for (const p of pools) p.destroy();
    await Promise.race([Promise.allSettled(all), sleep(5000)]);
    const rates: Record<string, number> = {};
    for (const [k, n] of Object.entries(counts)) rates[k] = n / window;
    return {
      followers,
      form,
      seconds: window,
      serverCpuSeconds: c1.user + c1.system - (c0.user + c0.system),
      rates,
      failed,
      failures,
      heartbeatMs: answeredHeartbeatMs,
      holdMs: answeredHoldMs || CHANNEL_POLL_MS,
      learnedMs: { p50: pct(learned, 50), p99: pct(learned, 99), max: learned.length ? Math.max(...learned) : NaN, within5s: learned.filter((x) => x <= 5000).length, learned: learned.length },
      serverRssMiB: mem.rss / 1024,
      loadAverage,
    };
  } finally {
    stop = true;
    for (const p of pools) p.destroy();
    await stopServers?.();
    await fs.rm(dir, { recursive: true, force: true });
  }
}

export function idleFleetReport(rs: IdleFleetResult[], machine: string, command: string): string[] {
  const f = (x: number, d = 1) => (Number.isFinite(x) ? x.toFixed(d) : '-');
  const lines = [
    '# Idle followers (issue 17)',
    '',
    `Machine: ${machine}.`,
    `Command: \`${command}\`. A real \`fleetcast server\` process (plain HTTP on loopback) and simulated idle agents in one Node process (bench/idle-fleet.ts): each holds the channel's release and does what an idle agent's daemon does on the control plane, as protocol 1.5 to 1.8 (docs/protocol.md sections 18 to 20): channel long polls, a rollout poll after each answer (left out by 1.7 and 1.8 after a held poll that stood for it), and heartbeats at the interval the server answers. First holds and heartbeats are cut to a random part of a whole one, as agents started at different times would be. Server CPU is utime + stime from /proc over the window, divided by followers x seconds: it includes the server's own timers. "Learned" is from the end of \`fleetcast publish --channel\` of a new release, after the window, to each follower's answer naming it.`,
    '',
    'Goal: at most 1 µs of server CPU per idle agent-second; a new release learned within 5 s.',
    '',
    '| followers | form | window (s) | server CPU per follower-second (µs) | requests/s: channel, rollout poll, heartbeat | heartbeat interval asked (s) | channel hold (s) | failed | learned a new release: p50 / p99 / max (s) | within 5 s | server RSS (MiB) | load average |',
    '| ---: | --- | ---: | ---: | --- | ---: | ---: | ---: | --- | ---: | ---: | ---: |',
  ];
  for (const r of rs) {
    const rate = (k: string) => f(r.rates[k] ?? 0, 1);
    lines.push(
      `| ${r.followers.toLocaleString('en-US')} | ${r.form} | ${f(r.seconds, 0)} | ${f((r.serverCpuSeconds / (r.followers * r.seconds)) * 1e6, 2)} | ${rate('channel')}, ${rate('rollout poll')}, ${rate('heartbeat')} | ${f(r.heartbeatMs / 1000, 0)} | ${f(r.holdMs / 1000, 0)} | ${r.failed}${r.failed ? ` (${Object.entries(r.failures).map(([k, n]) => `${k}: ${n}`).join(', ')})` : ''} | ${f(r.learnedMs.p50 / 1000, 2)} / ${f(r.learnedMs.p99 / 1000, 2)} / ${f(r.learnedMs.max / 1000, 2)} | ${r.learnedMs.within5s.toLocaleString('en-US')} of ${r.followers.toLocaleString('en-US')} | ${f(r.serverRssMiB, 0)} | ${f(r.loadAverage, 1)} |`,
    );
  }
  lines.push('', `Generated ${new Date().toISOString()}.`, '');
  return lines;
}
