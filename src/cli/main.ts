import { ExitCode, exitStatusHelp, FleetcastError } from '../util/errors';
import { loadConfigFile } from '../config/config';
import { buildInfo } from '../util/build-info';
import { didYouMean, formatHelp, parseArgs, resolveFlags } from './args';
import { agent } from './agent-command';
import { Command } from './command';
import { keygen, publish } from './commands';
import { server } from './server-command';
import { demo } from './demo';
import { config, fleet, status } from './ops';
import { doctor } from './doctor';
import { init } from './init';
import { rollout } from './rollout';
import { stream } from './stream';

const version: Command = {
  spec: { name: 'version', summary: 'Print the version of fleetcast and of the Node.js it runs on.', usage: 'version [--json]', flags: { json: { type: 'boolean', help: 'print it as JSON' } } },
  async run(a) {
    const b = buildInfo();
    process.stdout.write(a.flags.json ? JSON.stringify(b) + '\n' : `fleetcast ${b.version} (node ${b.node})\n`);
    return ExitCode.OK;
  },
};

const COMMANDS: Record<string, Command> = { init, keygen, publish, server, agent, status, fleet, rollout, stream, config, doctor, demo, version };

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
  const cmd = COMMANDS[name];
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
