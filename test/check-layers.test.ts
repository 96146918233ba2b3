import test from 'ava';
import { spawnSync } from './helpers/sync';
import { promises as fs } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

const ROOT = path.join(__dirname, '..', '..');
const SCRIPT = path.join(ROOT, 'scripts', 'check-layers.mjs');

function check(root?: string, ...flags: string[]): { code: number | null; out: string; err: string } {
  const r = spawnSync(process.execPath, [SCRIPT, ...flags, ...(root ? [root] : [])], { encoding: 'utf8' });
  return { code: r.status, out: r.stdout, err: r.stderr };
}

/** A throwaway copy of src/ and bench/, removed when the test ends. */
async function copyOfSources(t: { teardown: (fn: () => Promise<void>) => void }): Promise<string> {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'fc-layers-'));
  t.teardown(() => fs.rm(dir, { recursive: true, force: true }));
  await fs.cp(path.join(ROOT, 'src'), path.join(dir, 'src'), { recursive: true });
  await fs.cp(path.join(ROOT, 'bench'), path.join(dir, 'bench'), { recursive: true });
  return dir;
}

/** Put `lines` at the top of `file` (relative to `root`), after one blank line: the first is line 2. */
async function plant(root: string, file: string, lines: string[]): Promise<number> {
  const abs = path.join(root, file);
  await fs.writeFile(abs, ['', ...lines, await fs.readFile(abs, 'utf8')].join('\n'));
  return 2;
}

test('the sources import only down the layers', (t) => {
  const r = check();
  t.is(r.code, 0, r.out + r.err);
  t.regex(r.out, /every import runs down the layers/);
});

test('an import that runs back up fails the check, named by file and line', async (t) => {
  const dir = await copyOfSources(t);
  t.is(check(dir).code, 0, 'the untouched copy passes');
  const line = await plant(dir, 'src/util/log.ts', ["import { parseArgs } from '../cli/args';"]);
  const r = check(dir);
  t.is(r.code, 1);
  t.true(r.out.includes(`src/util/log.ts:${line}: imports '../cli/args': src/util may not import src/cli, a higher layer`), r.out);
  t.regex(r.out, /1 import\(s\) run against the layers/);
  const before = check(ROOT, '--graph').out;
  const graph = check(dir, '--graph');
  t.is(graph.code, 1);
  t.false(before.includes('src/util -> src/cli'));
  t.true(graph.out.split('\n').includes('src/util -> src/cli 1'), graph.out);
});

test('every import form counts: multi-line, type-only, export from, require, import()', async (t) => {
  const dir = await copyOfSources(t);
  await plant(dir, 'src/storage/make-dir.ts', [
    'import {', //                                      line 2
    '  signManifest,',
    "} from '../release/manifest';", //                   line 4: the specifier's line
    "import type { Agent } from '../agent/agent';", //   line 5
    "export { ServerAccess } from '../net/server-access';", // line 6
    "const c = require('../config/config');", //         line 7
    "void import('../server/server');", //                line 8
    'void c;',
  ]);
  const r = check(dir);
  t.is(r.code, 1);
  const lines = r.out.split('\n').filter((l) => l.startsWith('src/storage/make-dir.ts:')).map((l) => l.split(':')[1]);
  t.deepEqual(lines, ['4', '5', '6', '7', '8'], r.out);
});

test('peers do not import each other; comments and strings are not imports', async (t) => {
  const dir = await copyOfSources(t);
  const line = await plant(dir, 'src/server/guard.ts', ["import { Agent } from '../agent/agent';"]);
  await plant(dir, 'src/wire/auth.ts', [
    "// import { x } from '../cli/main';",
    "/* require('../cli/main') */",
    "const s = `import { y } from '../cli/main'`;",
    'void s;',
  ]);
  const r = check(dir);
  t.is(r.code, 1);
  t.true(r.out.includes(`src/server/guard.ts:${line}: imports '../agent/agent': src/server and src/agent are peers and do not import each other`), r.out);
  t.false(r.out.includes('src/wire/auth.ts'), r.out);
});

test('a folder that has no layer is an error, and so is src importing test or bench', async (t) => {
  const dir = await copyOfSources(t);
  await fs.mkdir(path.join(dir, 'src', 'extra'));
  await fs.writeFile(path.join(dir, 'src', 'extra', 'x.ts'), "export { ExitCode } from '../util/errors';\n");
  await plant(dir, 'src/cli/main.ts', ["import { tmpdir } from '../../test/helpers/fleet';"]);
  const r = check(dir);
  t.is(r.code, 1);
  t.true(r.out.includes('src/extra/x.ts:1: imports \'../util/errors\': src/extra has no layer'), r.out);
  t.true(r.out.includes("src/cli/main.ts:2: imports '../../test/helpers/fleet': src/cli may not import test"), r.out);
});

test('bad usage exits 2 with a message', async (t) => {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'fc-layers-'));
  t.teardown(() => fs.rm(dir, { recursive: true, force: true }));
  const r = check(dir);
  t.is(r.code, 2);
  t.regex(r.err, /src: no such directory/);
  const u = check(undefined, '--bogus');
  t.is(u.code, 2);
  t.regex(u.err, /^usage: /);
});

const MAX_LINES = 400;

test(`no file in src/ is over ${MAX_LINES} lines`, async (t) => {
  const long: string[] = [];
  let seen = 0;
  const walk = async (dir: string): Promise<void> => {
    for (const e of await fs.readdir(path.join(ROOT, dir), { withFileTypes: true })) {
      const rel = `${dir}/${e.name}`;
      if (e.isDirectory()) await walk(rel);
      else if (rel.endsWith('.ts')) {
        seen++;
        const lines = (await fs.readFile(path.join(ROOT, rel), 'utf8')).split('\n').length - 1;
        if (lines > MAX_LINES) long.push(`${rel}: ${lines} lines`);
      }
    }
  };
  await walk('src');
  t.true(seen > 50, `read ${seen} files`);
  t.deepEqual(long, [], `split these by responsibility (CONTRIBUTING.md)`);
});
