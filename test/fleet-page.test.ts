import test, { ExecutionContext } from 'ava';
import { execFileSync } from 'node:child_process';
import { summary } from '../src/server/rollout';
import { run } from './helpers/run';
import { startRolloutFleet } from './helpers/rollout-fleet';

type Summary = ReturnType<typeof summary>;

function findChromium(): string | null {
  for (const c of ['chromium', 'chromium-browser']) {
    try {
      return execFileSync('sh', ['-c', `command -v ${c}`], { encoding: 'utf8', timeout: 60_000 }).trim() || null;
    } catch {
      /* next */
    }
  }
  return null;
}

const chromium = findChromium();
const title = 'the fleet page at /ui/ loads in headless chromium and shows the numbers of rollout status --json';

async function pageTest(t: ExecutionContext): Promise<void> {
  const f = await startRolloutFleet(t);
  const post = async (p: string, body: unknown) => {
    const res = await fetch(f.url + p, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
    t.true(res.ok, `${p}: ${res.status}`);
    return res.json() as Promise<unknown>;
  };
  // Eight members on the channel, as agents announce themselves by polling.
  const members = Array.from({ length: 8 }, (_, i) => ({ member: `p${i}`, group: i < 4 ? 'site-a' : 'site-b' }));
  for (const m of members) await post('/v1/rollouts/poll', { channel: 'stable', ...m });
  const s0 = (await post('/v1/rollouts', { channel: 'stable', release: f.b.id, waves: '25%,100%', maxFailures: '1' })) as Summary;
  const first = Object.entries(s0.memberStates).filter(([, m]) => m.wave === 1).map(([id]) => id);
  const second = Object.keys(s0.memberStates).filter((id) => !first.includes(id));
  const group = (id: string) => members.find((m) => m.member === id)!.group;
  const say = (id: string, state: string, reason?: string) => post('/v1/rollouts/poll', { channel: 'stable', member: id, group: group(id), release: f.b.id, state, ...(reason ? { reason } : {}) });
  await say(first[0], 'committed');
  await say(first[1], 'failed', 'health check: exit status 1');
  for (const id of second.slice(0, 3)) await say(id, 'staged');

  // Two members joined release B's transfer, as agents do by heartbeat.
  for (const m of members.slice(0, 2)) await post('/v1/join', { release: f.b.id, group: m.group, member: m.member });
  // ... and keep heartbeating while the browser looks (members that go quiet leave the view).
  const beat = setInterval(() => {
    // Each reports what it took from its LAN and forwarded as a gateway (the page's columns).
    for (const [i, m] of members.slice(0, 2).entries()) {
      const body = { release: f.b.id, group: m.group, member: m.member, lanBytes: (i + 2) * 1048576, forwarded: 40 + i };
      void fetch(f.url + '/v1/heartbeat', { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) }).catch(() => undefined);
    }
  }, 300);
  t.teardown(() => clearInterval(beat));
  await new Promise((r) => setTimeout(r, 700)); // a heartbeat or two with those numbers
  const fleet = JSON.parse((await f.cli(['fleet', '--json'])).stdout) as { groups: { release: string; units: number; members: { id: string; verifiedUnits: number; originBytes: number; lanBytes: number; forwarded: number }[] }[] };
  const cli = await f.cli(['rollout', 'status', s0.id, '--json']);
  t.is(cli.code, 0, cli.stderr);
  const s = JSON.parse(cli.stdout) as Summary;
  // Chromium runs the page's script (virtual time lets its fetches finish) and prints the DOM.
  const r = await run(chromium!, ['--headless', '--no-sandbox', '--disable-gpu', '--no-first-run', `--user-data-dir=${f.dir}/chromium`, '--virtual-time-budget=8000', '--dump-dom', `${f.url}/ui/`], { timeoutMs: 90_000 });
  t.is(r.code, 0, r.stderr.slice(-2000));
  t.regex(r.stdout, /data-loaded="1"/, 'the page loaded its data');
  const shown = new Map<string, string>();
  for (const m of r.stdout.matchAll(/data-k="([^"]+)"[^>]*>([^<]*)</g)) shown.set(m[1], m[2].replace(/&amp;/g, '&'));
  t.is(shown.get(`${s.id}/state`), s.state);
  for (const w of s.waves) {
    for (const k of ['members', 'pending', 'staged', 'installed', 'committed', 'failed', 'rolledBack'] as const) {
      t.is(shown.get(`${s.id}/w${w.wave}/${k}`), String(w[k]), `wave ${w.wave} ${k}`);
    }
    t.is(shown.get(`${s.id}/w${w.wave}/open`), w.open ? 'open' : '—');
  }
  t.is(s.failures.length, 1);
  for (const x of s.failures) t.is(shown.get(`${s.id}/reason/${x.member}`), x.reason!);
  // Sites and members, as /v1/fleet has them.
  const joined = fleet.groups.flatMap((g) => g.members.map((m) => ({ g, m })));
  t.is(joined.length, 2);
  for (const { g, m } of joined) {
    t.is(shown.get(`${g.release}/${m.id}/verified`), `${m.verifiedUnits}/${g.units}`);
    t.is(shown.get(`${g.release}/${m.id}/origin`), `${(m.originBytes / 1048576).toFixed(1)} MiB`);
    t.true(m.lanBytes >= 2 * 1048576, 'the heartbeats carried lanBytes');
    t.is(shown.get(`${g.release}/${m.id}/lan`), `${(m.lanBytes / 1048576).toFixed(1)} MiB`);
    t.is(shown.get(`${g.release}/${m.id}/forwarded`), `${m.forwarded} fragments`);
  }
  // The page pulls nothing from elsewhere.
  const html = await (await fetch(`${f.url}/ui/`)).text();
  t.notRegex(html, /(src|href)=["']?(https?:)?\/\//);
}

if (chromium) test(title, pageTest);
else if (process.env.CI === 'true') test(`${title} (cannot run: no chromium)`, (t) => t.fail('install Debian\'s chromium (.ci/run does)'));
else test.skip(`${title} (skipped: no chromium; apt-get install chromium)`, () => {});

test('the fleet page is under the API auth: a browser gives the token as the Basic password', async (t) => {
  const { FleetcastServer } = await import('../src/server/server');
  const { tmpdir } = await import('./helpers/fleet');
  const dir = await tmpdir(t);
  const token = 'page-test-token-0123456789';
  const server = new FleetcastServer({ storeDir: dir, host: '127.0.0.1', port: 0, tokens: { ops: token } });
  const { url } = await server.start();
  t.teardown(() => server.stop());
  const bare = await fetch(`${url}/ui/`);
  t.is(bare.status, 401);
  t.regex(bare.headers.get('www-authenticate') ?? '', /^Basic realm="fleetcast"/);
  const wrong = await fetch(`${url}/ui/`, { headers: { authorization: `Basic ${Buffer.from('x:not-the-token-at-all').toString('base64')}` } });
  t.is(wrong.status, 401);
  const basic = { authorization: `Basic ${Buffer.from(`ops:${token}`).toString('base64')}` };
  const page = await fetch(`${url}/ui/`, { headers: basic });
  t.is(page.status, 200);
  t.regex(page.headers.get('content-security-policy') ?? '', /default-src 'none'/);
  t.is((await fetch(`${url}/v1/rollouts`, { headers: basic })).status, 200);
  t.is((await fetch(`${url}/v1/rollouts`, { headers: { authorization: `Bearer ${token}` } })).status, 200);
  t.is((await fetch(`${url}/v1/rollouts`)).status, 401);
});

test('a rollout report speaks only for the token\'s own member', async (t) => {
  const { FleetcastServer } = await import('../src/server/server');
  const { tmpdir } = await import('./helpers/fleet');
  const dir = await tmpdir(t);
  const tokens = { box1: 'box1-token-0123456789abcdef', box2: 'box2-token-0123456789abcdef' };
  const server = new FleetcastServer({ storeDir: dir, host: '127.0.0.1', port: 0, tokens });
  const { url } = await server.start();
  t.teardown(() => server.stop());
  const poll = (token: string, member: string) =>
    fetch(`${url}/v1/rollouts/poll`, { method: 'POST', headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' }, body: JSON.stringify({ channel: 'stable', group: 'g', member }) });
  t.is((await poll(tokens.box1, 'box1')).status, 200);
  const other = await poll(tokens.box2, 'box1');
  t.is(other.status, 403);
  t.is(((await other.json()) as { error: string }).error, 'NOT_YOUR_MEMBER');
});
