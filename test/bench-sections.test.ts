import test from 'ava';
import { keepSitesSection, placeSection, sitesSectionOf } from '../bench/stream-sites';

// bench/results/stream.md holds a generated "Sites testbed" section followed by hand-written
// notes under ### headings; a new stream-sites run replaces the tables, never the notes.
const HEAD = '## Sites testbed (network namespaces, shaped WAN links)';
const file = ['# Stream', '', 'loopback table', '', HEAD, '', 'old table', '', '### Notes on a run', '', 'hand-written', '', '## Later', 'more', 'Generated 2026'].join('\n');

test('a new sites section replaces the old tables and keeps the hand-written ### notes after them', (t) => {
  t.deepEqual(sitesSectionOf(file), [HEAD, '', 'old table', '']);
  const out = placeSection(file, [HEAD, '', 'new table', '']).split('\n');
  t.false(out.includes('old table'));
  t.true(out.includes('new table'));
  for (const kept of ['### Notes on a run', 'hand-written', '## Later', 'Generated 2026', 'loopback table']) t.true(out.includes(kept), kept);
  t.true(out.indexOf('new table') < out.indexOf('### Notes on a run'));
});

test('a file without a sites section gets it before the Generated line; the loopback bench keeps the previous one with its notes', (t) => {
  const bare = ['# Stream', 'table', 'Generated 2026'].join('\n');
  t.deepEqual(placeSection(bare, [HEAD, 'x']).split('\n'), ['# Stream', 'table', HEAD, 'x', 'Generated 2026']);
  const report = keepSitesSection(file, ['# Stream', 'new loopback', 'Generated 2027']);
  t.deepEqual(report, ['# Stream', 'new loopback', HEAD, '', 'old table', '', '### Notes on a run', '', 'hand-written', '', 'Generated 2027']);
});
