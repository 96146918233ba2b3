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
