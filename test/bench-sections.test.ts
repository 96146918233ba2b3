import test from 'ava';
import { placeSection, sitesSectionOf } from '../bench/stream-sites';
import { keepOtherSections, keptNotes, notesAfterGenerated } from '../bench/results-notes';

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
  const report = keepOtherSections(file, ['# Stream', 'new loopback', 'Generated 2027']);
  t.deepEqual(report, ['# Stream', 'new loopback', HEAD, '', 'old table', '', '### Notes on a run', '', 'hand-written', '', '## Later', 'more', '', 'Generated 2027']);
});

test('the loopback bench replaces the sections it writes and keeps the hand-written ## ones between them', (t) => {
  const previous = ['# Stream', 'old loopback', '## Where the time goes', 'old stages', '', '## Where the tail went (2026-12-01)', 'hand', '', HEAD, 'old table', '### Notes', 'n', 'Generated 2026', ''].join('\n');
  const report = keepOtherSections(previous, ['# Stream', 'new loopback', '## Where the time goes', 'new stages', '', 'Generated 2027', '']);
  t.deepEqual(report, ['# Stream', 'new loopback', '## Where the time goes', 'new stages', '', '## Where the tail went (2026-12-01)', 'hand', '', HEAD, 'old table', '### Notes', 'n', '', 'Generated 2027', '']);
  t.deepEqual(keepOtherSections('# Stream\nold\nGenerated 2026\n', ['# Stream', 'new', 'Generated 2027']), ['# Stream', 'new', 'Generated 2027'], 'nothing hand-written: the report as it is');
});

test('bench demo keeps the hand-written ### rounds of bench/results/demo.md, without the old Generated stamp', (t) => {
  const demo = ['# Loopback demo', 'old table', '## Agent memory (issue 16)', 'old memory table', '', '### Round 5', 'notes', '', '### Round 7', 'more', 'Generated 2026', ''].join('\n');
  t.deepEqual(keptNotes(demo), ['### Round 5', 'notes', '', '### Round 7', 'more', '']);
  t.deepEqual(keptNotes('# Loopback demo\nold table\nGenerated 2026\n'), [], 'a file without notes keeps nothing');
  t.deepEqual(keptNotes(''), []);
});

test('the namespace benches keep what follows the previous Generated stamp (lan.md\'s before/after checks)', (t) => {
  const lan = ['# Namespace benchmark: lan', '', 'old table', '', 'Generated 2026-11-30.', '', '## Before and after (issue 16)', 'notes', '', '### Re-check', 'more', ''].join('\n');
  t.deepEqual(notesAfterGenerated(lan), ['', '## Before and after (issue 16)', 'notes', '', '### Re-check', 'more', '']);
  t.deepEqual(notesAfterGenerated('# x\ntable\nGenerated 2026.\n'), [], 'nothing after the stamp');
  t.deepEqual(notesAfterGenerated('# x\ntable\n'), [], 'no stamp');
});

test('a scale run keeps the hand-written ## readings of scale.md, and replaces the coordinators section when it writes one', (t) => {
  const previous = ['# Control-plane scale', 'old table', '', '## 100,000 agents', 'reading', '', '## Two coordinator instances (issue 18)', 'old cluster', '', 'Generated 2026', ''].join('\n');
  t.deepEqual(keepOtherSections(previous, ['# Control-plane scale', 'new table', '', 'Generated 2027', '']), ['# Control-plane scale', 'new table', '', '## 100,000 agents', 'reading', '', '## Two coordinator instances (issue 18)', 'old cluster', '', 'Generated 2027', '']);
  const withCluster = keepOtherSections(previous, ['# Control-plane scale', 'new table', 'Generated 2027', '', '## Two coordinator instances (issue 18)', 'new cluster']);
  t.false(withCluster.includes('old cluster'));
  t.true(withCluster.includes('reading') && withCluster.includes('new cluster'));
});
