import { CHANNEL_RE } from '../release/channels';
import { CommandSpec, FlagValue, ParsedArgs } from './args';

/** A subcommand of `fleetcast`: its options and what it does. main.ts lists them. */
export interface Command {
  spec: CommandSpec;
  /** `args.flags` are resolved (file, flags, defaults); `cliFlags` are only what the command line gave. */
  run(args: ParsedArgs & { cliFlags: Record<string, FlagValue> }): Promise<number>;
  /** A command made of subcommands (`stream publish`): main.ts runs the one named next. */
  subcommands?: Record<string, Command>;
}

/** A line to stdout: results a script may read (paths, ids). */
export const out = (s: string) => process.stdout.write(s + '\n');

/** --channel of publish and agent: a channel name as release/channels.ts allows it. */
export function channelCheck(s: string): string | null {
  return CHANNEL_RE.test(s) ? null : `must be 1–64 letters, digits or . _ -, not ${JSON.stringify(s)}`;
}
