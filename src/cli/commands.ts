import { checks } from './args';
import * as path from 'node:path';
import { generateKeyPair, loadPrivateKey } from '../release/keys';
import { publishRelease } from '../release/publish';
import { setChannel } from '../release/channels';
import { MAX_ORIGINS, Policy, POLICIES, StartPolicy, START_POLICIES, writeDistribution } from '../release/distribution';
import { ExitCode } from '../util/errors';
import { channelCheck, Command, out } from './command';
import { formatBytes, ProgressBar } from './progress';

/**
 * The commands that make releases (keygen, publish). The long-running ones have files of
 * their own (server-command.ts, agent-command.ts), re-exported here with Command.
 */
export { Command } from './command';
export { agent, defaultStatusSocket } from './agent-command';
export { checkTlsPair, loadTokens, server } from './server-command';

export const keygen: Command = {
  spec: {
    name: 'keygen',
    summary: 'Create an Ed25519 key pair for signing releases: DIR/server.key (private) and DIR/server.pub (give this to agents).',
    usage: 'keygen --out DIR',
    flags: { out: { type: 'string', arg: 'DIR', help: 'directory for server.key and server.pub', required: true } },
  },
  async run(a) {
    const { keyPath, pubPath } = await generateKeyPair(String(a.flags.out));
    out(`private key: ${keyPath}`);
    out(`public key:  ${pubPath}`);
    return ExitCode.OK;
  },
};

export const publish: Command = {
  spec: {
    name: 'publish',
    summary: 'Split FILE into units, hash and sign them, and store the release for the server. Prints the release id last.',
    usage: 'publish FILE --store DIR --key KEYFILE [--name NAME] [--unit-size BYTES] [--channel NAME]',
    positionals: [{ name: 'FILE', required: true }],
    flags: {
      store: { type: 'string', arg: 'DIR', help: "the server's store directory", required: true },
      key: { type: 'string', arg: 'KEYFILE', help: 'Ed25519 private key (from fleetcast keygen)', required: true },
      name: { type: 'string', arg: 'NAME', help: 'release name, also the file name on agents (default: the file name)' },
      'unit-size': { type: 'number', arg: 'BYTES', help: 'unit size in bytes', default: 1048576, integer: true, min: 1024, max: 1 << 30 },
      channel: { type: 'string', arg: 'NAME', help: "make the release this channel's current one (agents following it move to it)", check: channelCheck },
      encrypt: { type: 'boolean', help: 'encrypt the content (AES-256-GCM per unit); the key goes to --content-keys, never into the store' },
      policy: { type: 'string', arg: 'POLICY', help: 'distribution: wide (one copy per wide-area group), group (one per LAN group) or representative (each group\'s best member fetches all)', choices: POLICIES },
      start: { type: 'string', arg: 'WHEN', help: 'LAN exchange: immediate (as units arrive) or all-fetched (once every unit is held)', choices: START_POLICIES },
      'content-keys': { type: 'string', arg: 'DIR', help: "with --encrypt: directory for the release's key (the server's content_keys)" },
      origin: { type: 'list', arg: 'URL[,URL]', help: `HTTP range origins that serve this release's unit bytes instead of the server: base URLs of a copy of the store (URL/releases/ID/data; docs/scale-out.md), at most ${MAX_ORIGINS}`, check: checks.originUrl },
    },
    validate: (f) => {
      if (Array.isArray(f.origin) && f.origin.length > MAX_ORIGINS) return { flag: 'origin', problem: `names ${f.origin.length} origins; at most ${MAX_ORIGINS}` };
      if (f.encrypt && f['content-keys'] === undefined) return { flag: 'content-keys', problem: 'is required with --encrypt: where the key is kept, outside the store' };
      if (!f.encrypt && f['content-keys'] !== undefined) return { flag: 'content-keys', problem: 'only goes with --encrypt' };
      return null;
    },
  },
  async run(a) {
    const key = await loadPrivateKey(String(a.flags.key));
    const bar = new ProgressBar('publish');
    const m = await publishRelease(a.positionals[0], String(a.flags.store), key, {
      name: a.flags.name as string | undefined,
      unitSize: a.flags['unit-size'] as number,
      onProgress: (d, t) => bar.update(d, t, formatBytes(d)),
      contentKeysDir: a.flags.encrypt ? String(a.flags['content-keys']) : undefined,
    });
    bar.finish();
    out(`published ${m.name}: ${formatBytes(m.size)} in ${m.unitCount} units of ${formatBytes(m.unitSize)}, sha256 ${m.sha256}${m.enc ? ` (encrypted; plaintext sha256 ${m.plainSha256}, key in ${a.flags['content-keys']})` : ''}`);
    const origins = a.flags.origin as string[] | undefined;
    if (a.flags.policy || a.flags.start || origins?.length) {
      await writeDistribution(path.join(String(a.flags.store), 'releases', m.id), { policy: a.flags.policy as Policy | undefined, start: a.flags.start as StartPolicy | undefined, ...(origins?.length ? { origins } : {}) });
      out(`distribution: policy ${a.flags.policy ?? '(server default)'}, start ${a.flags.start ?? '(server default)'}${origins?.length ? `, unit bytes from ${origins.join(', ')}` : ''}`);
    }
    if (a.flags.channel) {
      await setChannel(String(a.flags.store), { channel: String(a.flags.channel), release: m.id, name: m.name, publishedAt: Date.now() });
      out(`channel ${a.flags.channel} now points at ${m.id}`);
    }
    out(m.id);
    return ExitCode.OK;
  },
};
