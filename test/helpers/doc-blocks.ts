/**
 * Command blocks of the Markdown docs (```sh fences), for tests that run them as written.
 * A line ending in `\` continues on the next; a whole-line `#` comment and a trailing
 * ` # comment` are dropped, as the shell would.
 */
export function commandBlocks(markdown: string): string[][] {
  const out: string[][] = [];
  const fence = /^```(sh|bash|shell|console)?\s*$/;
  let block: string[] | null = null;
  let pending = '';
  for (const raw of markdown.split('\n')) {
    if (block === null) {
      const m = fence.exec(raw);
      if (m && m[1]) block = [];
      continue;
    }
    if (raw.startsWith('```')) {
      out.push(block);
      block = null;
      continue;
    }
    const line = pending + raw;
    if (/\\$/.test(line)) {
      pending = line.replace(/\\$/, '');
      continue;
    }
    pending = '';
    const cmd = line.replace(/(^|\s+)#(\s.*)?$/, '').trim();
    if (cmd) block.push(cmd.replace(/\s+/g, ' '));
  }
  return out;
}

/** The text of a `## Title` section (up to the next `## `). */
export function section(markdown: string, title: string): string {
  const parts = markdown.split(/^## /m);
  const s = parts.find((p) => p.startsWith(title + '\n'));
  if (!s) throw new Error(`no section "## ${title}"`);
  return s;
}
