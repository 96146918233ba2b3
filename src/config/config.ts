import { promises as fs } from 'node:fs';
import type { Node as YamlNode } from 'yaml';
import { ExitCode, FleetcastError } from '../util/errors';
import { CommandSpec, ConfigError, ConfigValues, configKey, didYouMean, FlagValue, ValueSource } from './schema';

/**
 * The YAML config file of `fleetcast agent|server --config FILE`: a flat mapping whose
 * keys are the command's flags with `_` for `-`. Parsed with the `yaml` package's
 * LineCounter so every error names the file, line and column (the package's own
 * `linePos` on syntax errors, the node's range otherwise). Unknown keys, duplicate
 * keys, wrong types and (in resolveFlags) bad values are errors: a typo in a config
 * file must never be silently ignored on a box nobody looks at.
 */
export async function loadConfigFile(file: string, spec: CommandSpec): Promise<ConfigValues> {
  let text: string;
  try {
    text = await fs.readFile(file, 'utf8');
  } catch (err) {
    const e = err as NodeJS.ErrnoException;
    // A file that is not there is missing input (66); one the user may not read, 77 (as
    // the service user: `config check --as USER` tells before the unit starts).
    if (e.code === 'ENOENT') throw new FleetcastError('NOINPUT', `${file}: cannot read config file: no such file`, ExitCode.NOINPUT);
    if (e.code === 'EACCES') throw new FleetcastError('NOPERM', `${file}: cannot read config file: permission denied (uid ${process.getuid?.()}); make it readable by the service user`, ExitCode.NOPERM);
    const why = e.code === 'EISDIR' ? 'is a directory' : e.message;
    throw new ConfigError({ file, line: 1, col: 1 }, `cannot read config file: ${why}`);
  }
  return parseConfig(text, file, spec);
}

/** Parse config text (pure; also the fuzz target). Throws ConfigError, nothing else. */
/** Loaded on first use: an agent started without --config never pays for the parser's ~70 modules. */
let yamlLib: typeof import('yaml') | null = null;
const yaml = () => (yamlLib ??= require('yaml') as typeof import('yaml'));

export function parseConfig(text: string, file: string, spec: CommandSpec): ConfigValues {
  const { LineCounter, parseDocument, isMap, isScalar } = yaml();
  const lc = new LineCounter();
  const doc = parseDocument(text, { lineCounter: lc, prettyErrors: false, uniqueKeys: true, strict: true });
  const at = (offset: number | undefined): ValueSource => {
    const p = lc.linePos(offset ?? 0);
    return { file, line: p.line, col: p.col };
  };
  const where = (n: YamlNode | null | undefined): ValueSource => at(n?.range?.[0]);
  lineCounterOf = at;
  if (doc.errors.length > 0) {
    const e = doc.errors[0];
    const pos = e.linePos?.[0];
    const first = e.message.split('\n')[0].replace(/ at line \d+, column \d+:?$/, '');
    throw new ConfigError(pos ? { file, line: pos.line, col: pos.col } : at(e.pos?.[0]), `YAML syntax: ${first}`);
  }
  const out: ConfigValues = { file, values: {}, where: {}, root: { file, line: 1, col: 1 } };
  const root = doc.contents;
  if (root === null || (isScalar(root) && (root.value === null || root.value === undefined))) return out; // empty file
  if (!isMap(root)) throw new ConfigError(where(root as YamlNode), 'expected a mapping of keys (key: value lines)');
  out.root = where(root);
  const known = Object.entries(spec.flags).filter(([, f]) => !f.cliOnly).map(([n]) => configKey(n));
  for (const pair of root.items) {
    const keyNode = pair.key as YamlNode | null;
    if (!isScalar(keyNode) || typeof keyNode.value !== 'string') throw new ConfigError(where(keyNode), 'keys must be plain strings');
    const key = keyNode.value;
    const name = key.replace(/_/g, '-');
    const flag = spec.flags[name];
    if (!flag || flag.cliOnly || key.includes('-')) {
      const guess = didYouMean(key, known);
      throw new ConfigError(where(keyNode), `unknown key ${key}${guess ? ` (did you mean ${guess}?)` : ''}`);
    }
    const valueNode = pair.value as YamlNode | null;
    const loc = valueNode ? where(valueNode) : where(keyNode);
    out.values[name] = convert(key, flag.type, valueNode, loc);
    out.where[name] = loc;
  }
  return out;
}

function describe(n: YamlNode | null): string {
  const { isMap, isScalar, isSeq } = yaml();
  if (n === null || (isScalar(n) && n.value === null)) return 'nothing';
  if (isMap(n)) return 'a mapping';
  if (isSeq(n)) return 'a list';
  if (isScalar(n)) {
    const v = n.value;
    return typeof v === 'string' ? `the string ${JSON.stringify(v)}` : `${typeof v} ${String(v)}`;
  }
  return 'something else';
}

let lineCounterOf: ((offset: number) => ValueSource) | null = null;
const atNode = (n: YamlNode, fallback: ValueSource): ValueSource => (lineCounterOf && n.range ? lineCounterOf(n.range[0]) : fallback);

function convert(key: string, type: 'string' | 'number' | 'boolean' | 'list', n: YamlNode | null, loc: ValueSource): FlagValue {
  const { isMap, isScalar, isSeq } = yaml();
  const v = isScalar(n) ? n.value : undefined;
  switch (type) {
    case 'number':
      if (typeof v === 'number' && Number.isFinite(v)) return v;
      throw new ConfigError(loc, `${key} must be a number, not ${describe(n)}`);
    case 'boolean':
      if (typeof v === 'boolean') return v;
      throw new ConfigError(loc, `${key} must be true or false, not ${describe(n)}`);
    case 'string':
      // A number where a string is expected (member: 42) is what the user meant.
      if (typeof v === 'string' || typeof v === 'number') return String(v);
      throw new ConfigError(loc, `${key} must be a string, not ${describe(n)}`);
    case 'list':
      if (typeof v === 'string') return v.split(',').map((x) => x.trim()).filter((x) => x !== '');
      if (isSeq(n)) {
        return n.items.map((item) => {
          const iv = isScalar(item) ? item.value : undefined;
          if (typeof iv !== 'string') throw new ConfigError(isScalar(item) || isMap(item) || isSeq(item) ? atNode(item as YamlNode, loc) : loc, `${key} must be a list of strings; one entry is ${describe(item as YamlNode)}`);
          return iv;
        });
      }
      throw new ConfigError(loc, `${key} must be a string or a list of strings, not ${describe(n)}`);
  }
}
