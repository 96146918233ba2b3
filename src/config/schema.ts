import { isIP } from 'node:net';
import { ExitCode, FleetcastError } from '../util/errors';
import { isName } from '../wire/ids';
import { originUrlProblem } from '../release/distribution';

/**
 * The options schema shared by the command line and the YAML config files: what a flag
 * is (FlagSpec, CommandSpec), the checks every value passes, and resolveFlags, which
 * merges command-line flags over a config file over defaults. The agent, the server and
 * the CLI read it; argv parsing and help text are the CLI's (src/cli/args.ts).
 */
export interface FlagSpec {
  /** `list`: comma-separated on the command line, a string or a sequence in YAML. */
  type: 'string' | 'number' | 'boolean' | 'list';
  help: string;
  /** Placeholder shown in help, e.g. DIR. */
  arg?: string;
  default?: string | number | boolean;
  required?: boolean;
  /** Numbers: inclusive bounds, and whether only integers are allowed. */
  min?: number;
  max?: number;
  /** Numbers: the value must be more than `min`, not equal to it. */
  minExclusive?: boolean;
  integer?: boolean;
  choices?: readonly string[];
  /** Strings: say what is wrong with `v` (completing "--flag ..."), or null when it is fine. */
  check?: (v: string) => string | null;
  /** Can change at run time (SIGHUP reload). */
  reload?: boolean;
  /** Only on the command line, never a config-file key (e.g. --config itself). */
  cliOnly?: boolean;
}

export type FlagValue = string | number | boolean | string[] | undefined;

export interface CommandSpec {
  name: string;
  summary: string;
  usage: string;
  flags: Record<string, FlagSpec>;
  positionals?: { name: string; required: boolean }[];
  /**
   * The command reads --config itself, against another command's keys (doctor reads the
   * agent's file); the generic loader leaves it alone.
   */
  configOf?: string;
  /** Rules across options (e.g. "--release or --channel"): the flag to blame and what is wrong. */
  validate?: (flags: Record<string, FlagValue>) => { flag: string; problem: string } | null;
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

/** Where a config-file value came from, for messages: `file:line:col`. */
export interface ValueSource {
  file: string;
  line: number;
  col: number;
}

/** Values read from a config file, keyed by flag name, with where each one was. */
export interface ConfigValues {
  file: string;
  values: Record<string, FlagValue>;
  where: Record<string, ValueSource>;
  /** Where the top-level mapping starts (named when a required key is missing). */
  root: ValueSource;
}

export class ConfigError extends FleetcastError {
  constructor(
    readonly source: ValueSource,
    message: string,
  ) {
    super('CONFIG', `${source.file}:${source.line}:${source.col}: ${message}`, ExitCode.CONFIG);
  }
}

/** The YAML key for a flag: `fragment-bytes` → `fragment_bytes`. */
export const configKey = (flag: string): string => flag.replace(/-/g, '_');

/** What is wrong with `v` for `spec` (a phrase completing "--name ..."), or null. */
export function checkValue(spec: FlagSpec, v: Exclude<FlagValue, undefined>): string | null {
  if (spec.type === 'number') {
    const n = v as number;
    if (spec.integer && !Number.isInteger(n)) return `must be an integer, not ${n}`;
    const lo = spec.min;
    const hi = spec.max;
    const tooLow = lo !== undefined && (spec.minExclusive ? n <= lo : n < lo);
    if (tooLow || (hi !== undefined && n > hi)) {
      const from = lo === undefined ? '' : spec.minExclusive ? `more than ${lo}` : `from ${lo}`;
      const to = hi === undefined ? '' : spec.minExclusive ? `at most ${hi}` : `to ${hi}`;
      return `must be ${[from, to].filter(Boolean).join(spec.minExclusive ? ' and ' : ' ')}, not ${n}`;
    }
    return null;
  }
  if (spec.type === 'string' && spec.choices && !spec.choices.includes(v as string)) {
    return `must be one of ${spec.choices.join(', ')}, not ${JSON.stringify(v)}`;
  }
  if (spec.type === 'string' && spec.check) return spec.check(v as string);
  if (spec.type === 'list' && spec.check) {
    for (const x of v as string[]) {
      const p = spec.check(x);
      if (p) return p;
    }
  }
  if (spec.type === 'list' && (v as string[]).length === 0) return 'needs at least one entry';
  return null;
}

/**
 * The command's final options: command-line flags override the config file, which
 * overrides defaults. Every value, from either place, passes the same checks; an
 * error names the flag (exit 64) or the file, line and column of the key (exit 78).
 */
export function resolveFlags(cmd: CommandSpec, cli: Record<string, FlagValue>, file?: ConfigValues): Record<string, FlagValue> {
  const out: Record<string, FlagValue> = {};
  for (const [name, spec] of Object.entries(cmd.flags)) {
    const fromCli = cli[name];
    const fromFile = spec.cliOnly ? undefined : file?.values[name];
    const v = fromCli ?? fromFile;
    if (v === undefined) {
      if (spec.required) {
        if (file) throw new ConfigError(file.root, `missing required key ${configKey(name)} (or give --${name})`);
        throw usageError(cmd, `--${name} is required`);
      }
      out[name] = spec.default;
      continue;
    }
    const problem = checkValue(spec, v);
    if (problem) {
      if (fromCli !== undefined) throw usageError(cmd, `--${name} ${problem}`);
      throw new ConfigError(file!.where[name], `${configKey(name)} ${problem}`);
    }
    out[name] = v;
  }
  const bad = cmd.validate?.(out);
  if (bad) {
    if (cli[bad.flag] !== undefined || !file) throw usageError(cmd, `--${bad.flag} ${bad.problem}`);
    throw new ConfigError(file.where[bad.flag] ?? file.root, `${configKey(bad.flag)} ${bad.problem}`);
  }
  return out;
}

/** "HOST:PORT", "[v6]:PORT" → parts, or what is wrong (a phrase completing "--flag ..."). */
export function splitHostPort(s: string): { host: string; port: number } | string {
  const m = /^\[([^\]]+)\]:(\d+)$/.exec(s) ?? /^([^:]+):(\d+)$/.exec(s);
  if (!m) return `must be HOST:PORT (or [IPv6]:PORT), not ${JSON.stringify(s)}`;
  const port = Number(m[2]);
  if (port > 65535) return `has port ${port}, which is out of range`;
  return { host: m[1], port };
}

/** Checks shared by flags and config keys; each says what is wrong or returns null. */
export const checks = {
  hostPort: (s: string): string | null => {
    const r = splitHostPort(s);
    return typeof r === 'string' ? r : null;
  },
  multicast: (s: string): string | null => {
    const r = splitHostPort(s);
    if (typeof r === 'string') return r;
    const v = isIP(r.host);
    const first = Number(r.host.split('.')[0]);
    const ok = v === 4 ? first >= 224 && first <= 239 : v === 6 && r.host.toLowerCase().startsWith('ff');
    if (!ok) return `${r.host} is not a multicast address (224.0.0.0/4 or ff00::/8)`;
    if (r.port === 0) return 'needs a non-zero port';
    return null;
  },
  httpUrl: (s: string): string | null => {
    try {
      const u = new URL(s);
      if (u.protocol === 'http:' || u.protocol === 'https:') return null;
    } catch {
      /* below */
    }
    return `must be a URL like http://HOST:PORT, not ${JSON.stringify(s)}`;
  },
  /** `embedded` (one server) or a PostgreSQL URL shared by several coordinators (docs/scale-out.md). */
  engine: (s: string): string | null => {
    if (s === 'embedded') return null;
    try {
      const u = new URL(s);
      if ((u.protocol === 'postgres:' || u.protocol === 'postgresql:') && u.host) return null;
    } catch {
      /* below */
    }
    return `must be embedded or a PostgreSQL URL like postgres://USER@HOST:5432/DB, not ${JSON.stringify(s.replace(/:[^@/]*@/, ':***@'))}`;
  },
  /** An HTTP range origin's base URL (docs/scale-out.md). */
  originUrl: (s: string): string | null => {
    const bad = originUrlProblem(s);
    return bad ? `${JSON.stringify(s)} ${bad}` : null;
  },
  name: (s: string): string | null => (isName(s) ? null : `must be 1–128 letters, digits or . _ : @ -, not ${JSON.stringify(s)}`),
  nonEmpty: (s: string): string | null => (s.trim() === '' ? 'must not be empty' : null),
};
