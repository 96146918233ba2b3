const FENCE = /^```(sh|bash|shell|console)?\s*$/;

/** The raw text of every ```sh (bash, shell, console) block. */
function shellBlocks(markdown: string): string[] {
  const out: string[] = [];
  let block: string[] | null = null;
  for (const raw of markdown.split('\n')) {
    if (block === null) {
      const m = FENCE.exec(raw);
      if (m && m[1]) block = [];
    } else if (raw.startsWith('```')) {
      out.push(block.join('\n'));
      block = null;
    } else block.push(raw);
  }
  return out;
}

/** A block whose first line is a shebang is a script file shown in full, not commands to type. */
const isScript = (block: string) => block.startsWith('#!');

/**
 * Command blocks of the Markdown docs (```sh fences), for tests that run them as written.
 * A line ending in `\` continues on the next; a whole-line `#` comment and a trailing
 * ` # comment` are dropped, as the shell would. A block that starts with `#!` is a
 * script file (see scriptBlocks), not commands: it is skipped.
 */
export function commandBlocks(markdown: string): string[][] {
  const out: string[][] = [];
  for (const text of shellBlocks(markdown)) {
    if (!isScript(text)) out.push(commandLines(text));
  }
  return out;
}

/** The script files among the ```sh blocks (first line `#!`), as written. */
export function scriptBlocks(markdown: string): string[] {
  return shellBlocks(markdown).filter(isScript);
}

function commandLines(text: string): string[] {
  const block: string[] = [];
  let pending = '';
  for (const raw of text.split('\n')) {
    const line = pending + raw;
    if (/\\$/.test(line)) {
      pending = line.replace(/\\$/, '');
      continue;
    }
    pending = '';
    const cmd = line.replace(/(^|\s+)#(\s.*)?$/, '').trim();
    if (cmd) block.push(cmd.replace(/\s+/g, ' '));
  }
  return block;
}

/** The text of a `## Title` section (up to the next `## `). */
export function section(markdown: string, title: string): string {
  const parts = markdown.split(/^## /m);
  const s = parts.find((p) => p.startsWith(title + '\n'));
  if (!s) throw new Error(`no section "## ${title}"`);
  return s;
}
