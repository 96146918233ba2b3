import { exitStatusHelp } from '../util/errors';
import { CommandSpec, didYouMean, FlagValue, usageError } from '../config/schema';

/** The options schema lives with the config (src/config/schema.ts); re-exported for the CLI's commands. */
export * from '../config/schema';

/**
 * A small command-line parser: `--flag value`, `--flag=value`, boolean flags and
 * positionals. Unknown flags are errors with a "did you mean" (exit 64, EX_USAGE).
 */
export interface ParsedArgs {
  flags: Record<string, FlagValue>;
  positionals: string[];
  help: boolean;
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
    } else if (spec.type === 'list') {
      // A list flag given again adds to it (--server A --server B).
      const before = Array.isArray(flags[name]) ? (flags[name] as string[]) : [];
      flags[name] = [...before, ...value.split(',').map((x) => x.trim()).filter((x) => x !== '')];
    } else {
      flags[name] = value;
    }
  }
  if (!help) {
    const pos = cmd.positionals ?? [];
    const needed = pos.filter((p) => p.required).length;
    if (positionals.length < needed) throw usageError(cmd, `missing ${pos[positionals.length].name}`);
    if (positionals.length > pos.length) throw usageError(cmd, `unexpected argument ${JSON.stringify(positionals[pos.length])}`);
  }
  return { flags, positionals, help };
}

export function formatHelp(cmd: CommandSpec): string {
  const lines = [`Usage: fleetcast ${cmd.usage}`, '', cmd.summary, '', 'Options:'];
  const rows = Object.entries(cmd.flags).map(([n, s]) => [
    `--${n}${s.type === 'boolean' ? '' : ` ${s.arg ?? s.type.toUpperCase()}`}`,
    s.help + (s.default !== undefined && s.type !== 'boolean' ? ` (default ${s.default})` : '') + (s.required ? ' (required)' : '') + (s.reload ? ' [reloads on SIGHUP]' : ''),
  ]);
  rows.push(['--help', 'show this help']);
  const w = Math.max(...rows.map((r) => r[0].length));
  for (const [a, b] of rows) lines.push(`  ${a.padEnd(w)}  ${b}`);
  if (cmd.flags.config && !cmd.configOf) lines.push('', 'Every option except --config is also a key of the YAML config file, with _ for - (fragment-bytes: fragment_bytes).', 'Flags given on the command line override the file.');
  lines.push('', exitStatusHelp());
  return lines.join('\n') + '\n';
}

