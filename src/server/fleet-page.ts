/**
 * The read-only fleet page at GET /ui/: one HTML document with its style and script
 * inline (no external assets; the server's Content-Security-Policy allows nothing else).
 * It reads GET /v1/rollouts and GET /v1/fleet from the same origin every 2 s, so the
 * browser's credentials for the page (the same auth as the API) cover its requests.
 * Each number sits in an element with a `data-k` key (e.g. `r-…/w1/committed`), which
 * the browser test compares with `rollout status --json`.
 */
export const FLEET_PAGE = `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>fleetcast fleet</title>
<style>
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #222; }
h1 { font-size: 1.3em; margin: 0 0 .3em; }
h2 { font-size: 1.1em; margin: 1.5em 0 .4em; }
table { border-collapse: collapse; margin: .3em 0 1em; }
th, td { border: 1px solid #ccc; padding: .2em .6em; text-align: left; }
td.n { text-align: right; font-variant-numeric: tabular-nums; }
.state-running { color: #06c; } .state-completed { color: #080; }
.state-halted, .state-aborted, .bad { color: #b00; font-weight: bold; } .state-paused { color: #a60; }
#updated { color: #777; }
</style>
</head>
<body>
<h1>fleetcast fleet</h1>
<div id="updated">loading…</div>
<h2>Rollouts</h2>
<div id="rollouts"></div>
<h2>Sites and members</h2>
<div id="groups"></div>
<script>
'use strict';
function el(tag, attrs, text) {
  const e = document.createElement(tag);
  for (const k in attrs || {}) e.setAttribute(k, attrs[k]);
  if (text !== undefined && text !== null) e.textContent = String(text);
  return e;
}
function table(head, rows) {
  const t = el('table');
  const tr = el('tr');
  for (const h of head) tr.appendChild(el('th', {}, h));
  t.appendChild(tr);
  for (const r of rows) {
    const row = el('tr');
    for (const c of r) row.appendChild(c instanceof Node ? c : el('td', {}, c));
    t.appendChild(row);
  }
  return t;
}
function num(key, v) { return el('td', { class: 'n', 'data-k': key }, v); }
const MB = (b) => (b / 1048576).toFixed(1) + ' MiB';
function renderRollouts(j) {
  const box = document.getElementById('rollouts');
  box.replaceChildren();
  if (!j.rollouts.length) { box.appendChild(el('p', {}, 'No rollouts.')); return; }
  for (const r of j.rollouts) {
    const div = el('div', { 'data-rollout': r.id });
    const h = el('h3', {}, r.id + ' — channel ' + r.channel + ', release ' + r.release.slice(0, 12) + '… ');
    h.appendChild(el('span', { class: 'state-' + r.state, 'data-k': r.id + '/state' }, r.state));
    div.appendChild(h);
    if (r.reason) div.appendChild(el('p', { class: r.state === 'halted' ? 'bad' : '', 'data-k': r.id + '/reason' }, r.reason));
    div.appendChild(el('p', {}, 'max failures ' + r.maxFailures + (r.window ? ', window ' + r.window : '') + (r.waveWaitSeconds !== null ? ', wave wait ' + r.waveWaitSeconds + ' s' : '') + ', ' + r.members + ' member(s)'));
    const keys = ['members', 'pending', 'staged', 'installed', 'committed', 'failed', 'rolledBack'];
    div.appendChild(table(['wave', 'open'].concat(keys), r.waves.map((w) =>
      [el('td', {}, w.wave + ' (' + w.spec + ')'), el('td', { 'data-k': r.id + '/w' + w.wave + '/open' }, w.open ? 'open' : '—')].concat(keys.map((k) => num(r.id + '/w' + w.wave + '/' + k, w[k]))))));
    if (r.failures.length) {
      div.appendChild(el('p', {}, 'Failures (' + r.failures.length + '):'));
      div.appendChild(table(['member', 'group', 'wave', 'state', 'reason'], r.failures.map((f) =>
        [el('td', { 'data-k': r.id + '/failure/' + f.member }, f.member), f.group, f.wave, f.state, el('td', { 'data-k': r.id + '/reason/' + f.member }, f.reason)])));
    }
    box.appendChild(div);
  }
}
function renderFleet(f) {
  const box = document.getElementById('groups');
  box.replaceChildren();
  if (!f.groups.length) { box.appendChild(el('p', {}, 'No agent has joined.')); return; }
  for (const g of f.groups) {
    box.appendChild(el('h3', {}, (g.name || '?') + ' (' + g.release.slice(0, 12) + '…) ' + (g.wide ? 'wide-area group ' : 'group ') + g.group + ': ' + g.members.length + ' member(s), ' + (g.groupComplete ? 'complete' : g.missingUnits + ' unit(s) nobody holds yet')));
    box.appendChild(table(['member', 'LAN group', 'role', 'progress', 'from origin', 'from LAN', 'forwarded as gateway', 'hook', 'last seen'], g.members.map((m) => [
      m.id, m.group || g.group, (m.role || 'member') + ' #' + m.rank,
      num(g.release + '/' + m.id + '/verified', m.verifiedUnits + '/' + (g.units === null ? '?' : g.units) + (m.complete ? ' done' : '')),
      num(g.release + '/' + m.id + '/origin', m.originBytes === undefined ? '—' : MB(m.originBytes)),
      num(g.release + '/' + m.id + '/lan', m.lanBytes === undefined ? '—' : MB(m.lanBytes)),
      num(g.release + '/' + m.id + '/forwarded', m.forwarded === undefined ? '—' : m.forwarded + ' fragments'),
      m.hook ? (m.hook.exitCode !== null ? 'exit ' + m.hook.exitCode : (m.hook.signal || m.hook.error || 'failed')) : '—',
      (m.lastSeenMsAgo / 1000).toFixed(1) + ' s ago'])));
  }
}
async function refresh() {
  try {
    const [r, f] = await Promise.all([fetch('/v1/rollouts', { cache: 'no-store' }), fetch('/v1/fleet', { cache: 'no-store' })]);
    if (!r.ok || !f.ok) throw new Error('server said ' + r.status + '/' + f.status);
    renderRollouts(await r.json());
    renderFleet(await f.json());
    document.getElementById('updated').textContent = 'updated ' + new Date().toLocaleTimeString();
    document.body.setAttribute('data-loaded', '1');
  } catch (e) {
    document.getElementById('updated').textContent = 'cannot refresh: ' + e.message;
  }
}
refresh();
setInterval(refresh, 2000);
</script>
</body>
</html>
`;
