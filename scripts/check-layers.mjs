#!/usr/bin/env node
// Checks that imports in src/ (and bench/) run one way down the layers:
//
//   cli  ->  agent | server  ->  config  ->  transport | net  ->  release  ->  storage  ->  wire  ->  util
//
// A file may import from its own folder and from any folder on a lower level. Folders on the same level
// (agent and server, transport and net) are peers and do not import each other. release may import
// storage, not the other way. Nothing in src/ imports bench/ or test/; bench/ sits above cli and may use
// test/'s helpers. Type-only imports count like any other: a type that a lower layer needs lives in that
// lower layer. CONTRIBUTING.md ("Layers") says what each level holds.
//
// Usage: node scripts/check-layers.mjs [--graph] [ROOT]   (ROOT defaults to the repository this script is in;
// `npm test` runs it after tsc, and test/check-layers.test.ts proves it fails on planted back-edges)
// Prints every import that runs back up, as file:line, and exits 1 if there is one (2 on bad usage).
// --graph also prints the folder-to-folder edges (for docs/architecture.md's picture).
// Plain Node, no dependency: a small lexer drops comments and template text, then the import forms
// (import/export ... from, import '...', import(...), require(...)) are read from what is left.

import { readdirSync, readFileSync, statSync, existsSync } from 'node:fs';
import { dirname, join, relative, resolve, sep } from 'node:path';
import { fileURLToPath } from 'node:url';

/** Each level lists its folders; a folder may import from its own level only within itself. Lowest first. */
export const LEVELS = [
  ['src/util'],
  ['src/wire'],
  ['src/storage'],
  ['src/release'],
  ['src/transport', 'src/net'],
  ['src/config'],
  ['src/agent', 'src/server'],
  ['src/cli'],
  ['test'], // not checked itself (a test may import anything); listed so that src/ does not import it
  ['bench'],
];

const SCANNED = ['src', 'bench'];

function layerOf(relPath) {
  const parts = relPath.split('/');
  const key = parts[0] === 'src' ? `src/${parts[1]}` : parts[0];
  for (let level = 0; level < LEVELS.length; level++) {
    if (LEVELS[level].includes(key)) return { key, level };
  }
  return { key, level: -1 };
}

/** Replace comments and template-literal text by spaces (newlines kept, so offsets keep their line). */
export function stripComments(text) {
  const out = text.split('');
  const blank = (from, to) => {
    for (let k = from; k < to; k++) if (out[k] !== '\n') out[k] = ' ';
  };
  let i = 0;
  let prev = ''; // last significant character of code, to tell a regex literal from a division
  const templateDepth = []; // brace depth at which each open ${ ... } of a template resumes
  let braces = 0;
  const n = text.length;
  while (i < n) {
    const c = text[i];
    const d = text[i + 1];
    if (c === '/' && d === '/') {
      const end = text.indexOf('\n', i);
      const stop = end === -1 ? n : end;
      blank(i, stop);
      i = stop;
    } else if (c === '/' && d === '*') {
      const end = text.indexOf('*/', i + 2);
      const stop = end === -1 ? n : end + 2;
      blank(i, stop);
      i = stop;
    } else if (c === "'" || c === '"') {
      let j = i + 1;
      while (j < n && text[j] !== c && text[j] !== '\n') j += text[j] === '\\' ? 2 : 1;
      i = j + 1;
      prev = c;
    } else if (c === '`' || (c === '}' && templateDepth.length && templateDepth[templateDepth.length - 1] === braces)) {
      if (c === '}') templateDepth.pop();
      let j = i + 1;
      while (j < n && text[j] !== '`' && !(text[j] === '$' && text[j + 1] === '{')) j += text[j] === '\\' ? 2 : 1;
      blank(i + 1, Math.min(j, n));
      if (text[j] === '$') {
        templateDepth.push(braces);
        i = j + 2;
      } else {
        i = j + 1;
      }
      prev = '`';
    } else if (c === '/' && (prev === '' || '(,=:[!&|?{};+-*%<>~^'.includes(prev) || /\b(return|typeof|case|of|in)\s*$/.test(text.slice(Math.max(0, i - 8), i)))) {
      // A regex literal: skip it (with its classes) so a quote or slash inside is not taken for code.
      let j = i + 1;
      let inClass = false;
      while (j < n && text[j] !== '\n') {
        if (text[j] === '\\') { j += 2; continue; }
        if (text[j] === '[') inClass = true;
        else if (text[j] === ']') inClass = false;
        else if (text[j] === '/' && !inClass) break;
        j++;
      }
      i = j + 1;
      prev = 'r';
    } else {
      if (c === '{') braces++;
      else if (c === '}') braces--;
      if (!/\s/.test(c)) prev = c;
      i++;
    }
  }
  return out.join('');
}

const IMPORT_FORMS = [
  /\b(?:import|export)\s+(?:type\s+)?[\w*{}\s,$]*?\bfrom\s*(['"])([^'"\n]+)\1/g,
  /\bimport\s*(['"])([^'"\n]+)\1/g,
  /\bimport\s*\(\s*(['"])([^'"\n]+)\1\s*\)/g,
  /\brequire\s*\(\s*(['"])([^'"\n]+)\1\s*\)/g,
];

/** The relative imports of one source text: [{ spec, line }]. */
export function importsOf(text) {
  const code = stripComments(text);
  const found = new Map();
  for (const form of IMPORT_FORMS) {
    for (const m of code.matchAll(form)) {
      const spec = m[2];
      if (!spec.startsWith('.')) continue;
      const at = m.index + m[0].lastIndexOf(spec);
      if (!found.has(at)) found.set(at, { spec, line: code.slice(0, at).split('\n').length });
    }
  }
  return [...found.entries()].sort((a, b) => a[0] - b[0]).map(([, v]) => v);
}

function listTs(root, dir, acc) {
  const abs = join(root, dir);
  if (!existsSync(abs)) return acc;
  for (const name of readdirSync(abs).sort()) {
    const rel = `${dir}/${name}`;
    if (statSync(join(root, rel)).isDirectory()) listTs(root, rel, acc);
    else if (/\.(ts|mts|cts|js|mjs)$/.test(name) && !name.endsWith('.d.ts')) acc.push(rel);
  }
  return acc;
}

/**
 * Every import in ROOT that breaks the layer rule, [{ file, line, spec, from, to, why }], and the
 * folder-to-folder edges of the import graph with how many imports make each (`from -> to`).
 */
export function checkLayers(root) {
  const problems = [];
  const edges = new Map();
  const files = SCANNED.flatMap((dir) => listTs(root, dir, []));
  for (const file of files) {
    const from = layerOf(file);
    for (const { spec, line } of importsOf(readFileSync(join(root, file), 'utf8'))) {
      const target = relative(root, resolve(root, dirname(file), spec)).split(sep).join('/');
      // Only source files are layered: package.json and the like may be read from anywhere.
      if (/\.\w+$/.test(target) && !/\.(ts|mts|cts|js|mjs)$/.test(target)) continue;
      const to = layerOf(target);
      if (to.key !== from.key) edges.set(`${from.key} -> ${to.key}`, (edges.get(`${from.key} -> ${to.key}`) ?? 0) + 1);
      let why = null;
      if (from.level === -1) why = `${from.key} has no layer: add it to LEVELS in scripts/check-layers.mjs`;
      else if (to.level === -1) why = `${to.key} has no layer: add it to LEVELS in scripts/check-layers.mjs`;
      else if (to.key === from.key) continue;
      else if (to.level > from.level) why = `${from.key} may not import ${to.key}, a higher layer`;
      else if (to.level === from.level) why = `${from.key} and ${to.key} are peers and do not import each other`;
      if (why) problems.push({ file, line, spec, from: from.key, to: to.key, why });
    }
  }
  return { problems, edges };
}

function main(argv) {
  const graph = argv[0] === '--graph';
  const args = graph ? argv.slice(1) : argv;
  if (args.length > 1 || (args[0] ?? '').startsWith('-')) {
    console.error('usage: node scripts/check-layers.mjs [--graph] [ROOT]\n  --graph  also print the folder-to-folder import edges, with how many imports make each');
    return 2;
  }
  const root = resolve(args[0] ?? join(dirname(fileURLToPath(import.meta.url)), '..'));
  if (!existsSync(join(root, 'src'))) {
    console.error(`check-layers: ${join(root, 'src')}: no such directory`);
    return 2;
  }
  const { problems, edges } = checkLayers(root);
  if (graph) for (const [edge, n] of [...edges].sort()) console.log(`${edge} ${n}`);
  for (const p of problems) console.log(`${p.file}:${p.line}: imports '${p.spec}': ${p.why}`);
  if (problems.length > 0) {
    console.log(`check-layers: ${problems.length} import(s) run against the layers (see LEVELS in scripts/check-layers.mjs)`);
    return 1;
  }
  console.log('check-layers: every import runs down the layers');
  return 0;
}

if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  process.exitCode = main(process.argv.slice(2));
}
