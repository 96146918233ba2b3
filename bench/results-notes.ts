/*
 * Hand-written notes in bench/results/*.md survive a new run of the bench that writes the
 * file: a run replaces its generated tables and carries the notes over.
 */

/**
 * `npm run bench -- demo`: every line from the first `### ` heading on (the rounds of issue
 * 16's memory work), without the old `Generated` stamp. The run writes its own tables above them.
 */
export function keptNotes(previous: string): string[] {
  const lines = previous.split('\n');
  const at = lines.findIndex((l) => l.startsWith('### '));
  if (at < 0) return [];
  const notes = lines.slice(at).filter((l) => !l.startsWith('Generated '));
  while (notes.length && notes[notes.length - 1] === '') notes.pop();
  return [...notes, ''];
}

/**
 * The namespace benches (lan, sites, uplinks, policies): what follows the previous file's
 * `Generated` stamp (sections written after a run, such as lan.md's before/after checks of
 * issue 16), to go after the new stamp.
 */
export function notesAfterGenerated(previous: string): string[] {
  const lines = previous.split('\n');
  let at = -1;
  lines.forEach((l, i) => {
    if (l.startsWith('Generated ')) at = i;
  });
  if (at < 0) return [];
  const notes = lines.slice(at + 1);
  while (notes.length && notes[0] === '') notes.shift();
  while (notes.length && notes[notes.length - 1] === '') notes.pop();
  return notes.length ? ['', ...notes, ''] : [];
}

/**
 * A bench's new report with every `## ` section of the previous file that the report does not
 * write kept, in their order, before its Generated line: for stream.md (bench/stream.ts) the
 * sites section and its notes, which that bench does not measure, and hand-written sections such
 * as "Where the tail went"; for scale.md its hand-written readings. The previous file's own
 * tables (before its first `## `) and its Generated stamp go.
 */
export function keepOtherSections(previous: string, report: string[]): string[] {
  const written = new Set(report.filter((l) => l.startsWith('## ')));
  const kept: string[] = [];
  let keep = false;
  for (const l of previous.split('\n')) {
    if (l.startsWith('## ')) keep = !written.has(l);
    if (keep && !l.startsWith('Generated ')) kept.push(l);
  }
  while (kept.length && kept[kept.length - 1] === '') kept.pop();
  if (!kept.length) return report;
  let gen = report.length;
  for (let i = report.length - 1; i >= 0; i--) if (report[i].startsWith('Generated ')) { gen = i; break; }
  return [...report.slice(0, gen), ...kept, ...(gen < report.length ? [''] : []), ...report.slice(gen)];
}
