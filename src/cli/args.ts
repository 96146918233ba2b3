import { ExitCode, FleetcastError } from '../util/errors';

/**
 * A small command-line parser: `--flag value`, `--flag=value`, boolean flags and
 * positionals. Unknown flags are errors with a "did you mean" (exit 64, EX_USAGE).
 */
export interface FlagSpec {
  type: 'string' | 'number' | 'boolean';
  help: string;
  /** Placeholder shown in help, e.g. DIR. */
  arg?: string;
  default?: string | number | boolean;
  required?: boolean;
}

export interface CommandSpec {
  name: string;
  summary: string;
  usage: string;
  flags: Record<string, FlagSpec>;
  positionals?: { name: string; required: boolean }[];
}

export interface ParsedArgs {
  flags: Record<string, string | number | boolean | undefined>;
  positionals: string[];
  help: boolean;
}

export function usageError(cmd: CommandSpec, msg: string): FleetcastError {
  return new FleetcastError('USAGE', `${cmd.name}: ${msg}\nRun 'fleetcast ${cmd.name} --help' for usage.`, ExitCode.USAGE);
}

export function editDistance(a: string, b: string): number {
  const d = Array.from({ length: a.length + 1 }, (_, i) => [i, ...new Array<number>(b.length).fill(0)]);
  for (let j = 1; j <= b.length; j++) d[0][j] = j;
  for (let i = 1; i <= a.length; i++) {
    for (let j = 1; j <= b.length; j++) {
      d[i][j] = Math.min(d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + (a[i - 1] === b[j - 1] ? 0 : 1));
    }
  }
  return d[a.length][b.length];
}

export function didYouMean(word: string, candidates: string[]): string | null {
  let best: string | null = null;
  let bestD = Infinity;
  for (const c of candidates) {
    const dist = editDistance(word, c);
    if (dist < bestD) {
      bestD = dist;
      best = c;
    }
  }
  return best !== null && bestD <= Math.max(2, Math.floor(word.length / 3)) ? best : null;
}

export function parseArgs(cmd: CommandSpec, argv: string[]): ParsedArgs {
  const flags: ParsedArgs['flags'] = {};
  const positionals: string[] = [];
  let help = false;
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === '--help' || a === '-h') {
      help = true;
      continue;
    }
    if (a === '--') {
      positionals.push(...argv.slice(i + 1));
      break;
    }
    if (!a.startsWith('--')) {
      if (a.startsWith('-') && a.length > 1) throw usageError(cmd, `unknown option ${a}`);
      positionals.push(a);
      continue;
    }
    const eq = a.indexOf('=');
    const name = a.slice(2, eq < 0 ? undefined : eq);
    const spec = cmd.flags[name];
    if (!spec) {
      const guess = didYouMean(name, Object.keys(cmd.flags));
      throw usageError(cmd, `unknown option --${name}${guess ? ` (did you mean --${guess}?)` : ''}`);
    }
    let value: string | undefined = eq < 0 ? undefined : a.slice(eq + 1);
    if (spec.type === 'boolean') {
      if (value !== undefined && value !== 'true' && value !== 'false') throw usageError(cmd, `--${name} takes no value (or =true/=false)`);
      flags[name] = value !== 'false';
      continue;
    }
    if (value === undefined) {
      value = argv[++i];
      if (value === undefined) throw usageError(cmd, `--${name} needs a value (${spec.arg ?? spec.type})`);
    }
    if (spec.type === 'number') {
      const n = Number(value);
      if (value.trim() === '' || !Number.isFinite(n)) throw usageError(cmd, `--${name} must be a number, not ${JSON.stringify(value)}`);
      flags[name] = n;
    } else {
      flags[name] = value;
    }
  }
  if (!help) {
    for (const [name, spec] of Object.entries(cmd.flags)) {
      if (flags[name] === undefined) {
        if (spec.required) throw usageError(cmd, `--${name} is required`);
        if (spec.default !== undefined) flags[name] = spec.default;
      }
    }
    const pos = cmd.positionals ?? [];
    const needed = pos.filter((p) => p.required).length;
    if (positionals.length < needed) throw usageError(cmd, `missing ${pos[positionals.length].name}`);
    if (positionals.length > pos.length) throw usageError(cmd, `unexpected argument ${JSON.stringify(positionals[pos.length])}`);
  }
  return { flags, positionals, help };
}

export function formatHelp(cmd: CommandSpec): string {
  const lines = [`Usage: fleetcast ${cmd.usage}`, '', cmd.summary, '', 'Options:'];
  const rows = Object.entries(cmd.flags).map(([n, s]) => [`--${n}${s.type === 'boolean' ? '' : ` ${s.arg ?? s.type.toUpperCase()}`}`, s.help + (s.default !== undefined && s.type !== 'boolean' ? ` (default ${s.default})` : '') + (s.required ? ' (required)' : '')]);
  rows.push(['--help', 'show this help']);
  const w = Math.max(...rows.map((r) => r[0].length));
  for (const [a, b] of rows) lines.push(`  ${a.padEnd(w)}  ${b}`);
  return lines.join('\n') + '\n';
}

/** "HOST:PORT", "[v6]:PORT" → parts; throws a usage error naming the flag. */
export function parseHostPort(cmd: CommandSpec, flag: string, s: string): { host: string; port: number } {
  const m = /^\[([^\]]+)\]:(\d+)$/.exec(s) ?? /^([^:]+):(\d+)$/.exec(s);
  if (!m) throw usageError(cmd, `--${flag} must be HOST:PORT (or [IPv6]:PORT), not ${JSON.stringify(s)}`);
  const port = Number(m[2]);
  if (port > 65535) throw usageError(cmd, `--${flag}: port ${port} is out of range`);
  return { host: m[1], port };
}
