import { ExitCode, exitStatusHelp, FleetcastError } from '../util/errors';
import { loadConfigFile } from '../config/config';
import { buildInfo } from '../util/build-info';
import { didYouMean, formatHelp, parseArgs, resolveFlags } from './args';
import type { Command } from './command';

const version: Command = {
  spec: { name: 'version', summary: 'Print the version of fleetcast and of the Node.js it runs on.', usage: 'version [--json]', flags: { json: { type: 'boolean', help: 'print it as JSON' } } },
  async run(a) {
    const b = buildInfo();
    process.stdout.write(a.flags.json ? JSON.stringify(b) + '\n' : `fleetcast ${b.version} (node ${b.node})\n`);
    return ExitCode.OK;
  },
};

/* eslint-disable @typescript-eslint/no-require-imports */
/**
 * Each command's module is loaded when the command is looked up, not at startup: the
 * agent runs for months on boxes with little RAM and has no use for the server, the
 * rollout engine, streams, the demo or the doctor (issue 16: ~2 MiB less resident, 72 modules
 * instead of 108). `--help` lists them all, and loads them all.
 */
const COMMANDS: Record<string, Command> = lazyTable({
  init: () => (require('./init') as typeof import('./init')).init,
  keygen: () => (require('./commands') as typeof import('./commands')).keygen,
  publish: () => (require('./commands') as typeof import('./commands')).publish,
  server: () => (require('./server-command') as typeof import('./server-command')).server,
  agent: () => (require('./agent-command') as typeof import('./agent-command')).agent,
  status: () => (require('./ops') as typeof import('./ops')).status,
  fleet: () => (require('./ops') as typeof import('./ops')).fleet,
  rollout: () => (require('./rollout') as typeof import('./rollout')).rollout,
  stream: () => (require('./stream') as typeof import('./stream')).stream,
  config: () => (require('./ops') as typeof import('./ops')).config,
  doctor: () => (require('./doctor') as typeof import('./doctor')).doctor,
  demo: () => (require('./demo') as typeof import('./demo')).demo,
  version: () => version,
});
/* eslint-enable @typescript-eslint/no-require-imports */

/** An object whose properties are computed once, on first read; the keys are known without loading anything. */
function lazyTable<T>(loaders: Record<string, () => T>): Record<string, T> {
  const table: Record<string, T> = {};
  for (const [name, load] of Object.entries(loaders)) {
    let value: T | undefined;
    Object.defineProperty(table, name, { enumerable: true, get: () => (value ??= load()) });
  }
  return table;
}

function topHelp(): string {
  const w = Math.max(...Object.keys(COMMANDS).map((k) => k.length));
  return [
    'Usage: fleetcast COMMAND [options]',
    '',
    'Deliver releases to fleets of edge boxes: each unit crosses the WAN once per LAN group, the rest travels as multicast.',
    '',
    'Commands:',
    ...Object.values(COMMANDS).map((c) => `  ${c.spec.name.padEnd(w)}  ${c.spec.summary.split('. ')[0].replace(/\.$/, '')}`),
    '',
    "Run 'fleetcast COMMAND --help' for a command's options.",
    '',
    exitStatusHelp(),
    '',
  ].join('\n');
}

export async function main(argv: string[]): Promise<number> {
  const [name, ...rest] = argv;
  if (!name || name === '--help' || name === '-h' || name === 'help') {
    process.stdout.write(topHelp());
    return name ? ExitCode.OK : ExitCode.USAGE;
  }
  if (name === '--version') {
    process.stdout.write(`fleetcast ${buildInfo().version}\n`);
    return ExitCode.OK;
  }
  const cmd = Object.hasOwn(COMMANDS, name) ? COMMANDS[name] : undefined;
  if (!cmd) {
    const guess = didYouMean(name, Object.keys(COMMANDS));
    process.stderr.write(`fleetcast: unknown command ${JSON.stringify(name)}${guess ? ` (did you mean ${guess}?)` : ''}\nRun 'fleetcast --help' for the list.\n`);
    return ExitCode.USAGE;
  }
  if (cmd.subcommands) {
    // `fleetcast stream publish ...`: the word after the command picks the subcommand.
    const sub = cmd.subcommands[rest[0]];
    if (!sub) {
      const asked = rest[0] === undefined || rest[0] === '--help' || rest[0] === '-h';
      const subs = Object.entries(cmd.subcommands);
      const w = Math.max(...subs.map(([k]) => k.length));
      const list = subs.map(([k, c]) => `  ${k.padEnd(w)}  ${c.spec.summary.split('. ')[0].replace(/\.$/, '')}`).join('\n');
      const text = `Usage: fleetcast ${cmd.spec.usage}\n\n${cmd.spec.summary}\n\nCommands:\n${list}\n\nRun 'fleetcast ${name} COMMAND --help' for a command's options.\n\n${exitStatusHelp()}\n`;
      (asked ? process.stdout : process.stderr).write(`${asked ? '' : `fleetcast ${name}: unknown subcommand ${JSON.stringify(rest[0])}\n`}${text}`);
      return asked && rest[0] !== undefined ? ExitCode.OK : ExitCode.USAGE;
    }
    return runCommand(sub, `${name} ${rest[0]}`, rest.slice(1));
  }
  return runCommand(cmd, name, rest);
}

async function runCommand(cmd: Command, name: string, rest: string[]): Promise<number> {
  try {
    const args = parseArgs(cmd.spec, rest);
    if (args.help) {
      process.stdout.write(formatHelp(cmd.spec));
      return ExitCode.OK;
    }
    const file = cmd.spec.flags.config && !cmd.spec.configOf && args.flags.config !== undefined ? await loadConfigFile(String(args.flags.config), cmd.spec) : undefined;
    return await cmd.run({ ...args, flags: resolveFlags(cmd.spec, args.flags, file), cliFlags: args.flags });
  } catch (err) {
    // Under systemd (journald on stderr) the error gets the err priority, <3>.
    const pri = process.env.JOURNAL_STREAM ? '<3>' : '';
    if (err instanceof FleetcastError) {
      process.stderr.write(`${pri}fleetcast ${name}: error: ${err.message.replace(/\n/g, `\n${pri}`)}\n`);
      return err.exitCode;
    }
    process.stderr.write(`${pri}fleetcast ${name}: internal error (please report): ${((err as Error)?.stack ?? String(err)).replace(/\n/g, `\n${pri}`)}\n`);
    return ExitCode.SOFTWARE;
  }
}
