import { X509Certificate } from 'node:crypto';
import { constants, promises as fs } from 'node:fs';
import * as path from 'node:path';
import { resolveInterface } from '../net/interface';
import { loadPublicKey } from '../release/keys';
import { ConfigValues, configKey, FlagValue, splitHostPort, ValueSource } from './args';
import { checkTlsPair, loadTokens } from './server-command';

/**
 * What `fleetcast config check` looks at beyond the file itself, as `nginx -t` does: the
 * files the config names (readable, and what they should be), the interface, the TLS
 * pair, the store. Run as the service user (`--as`), a file it cannot read is found here
 * rather than by a unit that fails to start.
 */
export interface Problem {
  at: ValueSource;
  message: string;
  /** A permission problem (the fix is ownership or mode, not the config). */
  permission: boolean;
}

export interface Note {
  at: ValueSource;
  message: string;
}

type Flags = Record<string, FlagValue>;

function whereOf(cfg: ConfigValues, flag: string): ValueSource {
  return cfg.where[flag] ?? cfg.root;
}

const errCode = (err: unknown) => (err as NodeJS.ErrnoException)?.code;
const permission = (err: unknown) => errCode(err) === 'EACCES' || errCode(err) === 'EPERM' || /permission denied/i.test((err as Error)?.message ?? '');

function describe(err: unknown, file: string): string {
  switch (errCode(err)) {
    case 'ENOENT':
      return `${file} does not exist`;
    case 'EACCES':
    case 'EPERM':
      return `${file} is not readable by uid ${process.getuid?.()} (permission denied)`;
    case 'EISDIR':
      return `${file} is a directory`;
    default:
      return (err as Error)?.message ?? String(err);
  }
}

async function readable(file: string): Promise<string> {
  return fs.readFile(file, 'utf8');
}

/** The nearest directory that exists, at or above `dir`. */
async function nearestExisting(dir: string): Promise<string> {
  let d = path.resolve(dir);
  for (;;) {
    if (await fs.stat(d).then(() => true, () => false)) return d;
    const up = path.dirname(d);
    if (up === d) return d;
    d = up;
  }
}

/** A directory the process writes into: it must be writable, or creatable. */
async function writableDir(dir: string, key: string, missingIsFine: string | null, at: ValueSource, problems: Problem[], notes: Note[]): Promise<void> {
  const st = await fs.stat(dir).catch((err: unknown) => err as NodeJS.ErrnoException);
  if (st instanceof Error) {
    if (st.code !== 'ENOENT') return void problems.push({ at, message: `${key}: ${describe(st, dir)}`, permission: permission(st) });
    if (missingIsFine === null) return void problems.push({ at, message: `${key}: ${dir} does not exist`, permission: false });
    const parent = await nearestExisting(dir);
    const ok = await fs.access(parent, constants.W_OK).then(() => true, () => false);
    notes.push({ at, message: `${key}: ${dir} does not exist yet; ${missingIsFine}${ok ? '' : ` (uid ${process.getuid?.()} could not create it in ${parent})`}` });
    return;
  }
  if (!st.isDirectory()) return void problems.push({ at, message: `${key}: ${dir} is not a directory`, permission: false });
  // A note, not a problem: under systemd, StateDirectory= hands the directory to the
  // service's (dynamic) user at start, whoever owns it now.
  const ok = await fs.access(dir, constants.W_OK | constants.X_OK).then(() => true, () => false);
  if (!ok) notes.push({ at, message: `${key}: ${dir} is not writable by uid ${process.getuid?.()} (fine under systemd when StateDirectory= names it)` });
}

export async function checkReferences(kind: 'agent' | 'server', f: Flags, cfg: ConfigValues): Promise<{ problems: Problem[]; notes: Note[] }> {
  const problems: Problem[] = [];
  const notes: Note[] = [];
  const fail = (flag: string, err: unknown, what: string) => problems.push({ at: whereOf(cfg, flag), message: `${configKey(flag)}: ${what}: ${describe(err, String(f[flag]))}`, permission: permission(err) });

  if (kind === 'agent') {
    for (const file of (f.trust as string[] | undefined) ?? []) {
      await loadPublicKey(file).catch((err: Error) => problems.push({ at: whereOf(cfg, 'trust'), message: `trust: ${/no such file/.test(err.message) ? `${file} does not exist` : err.message}`, permission: permission(err) }));
    }
    if (f.ca !== undefined) {
      await readable(String(f.ca)).then(
        (pem) => {
          try {
            new X509Certificate(pem);
          } catch {
            problems.push({ at: whereOf(cfg, 'ca'), message: `ca: ${f.ca} is not a PEM certificate`, permission: false });
          }
        },
        (err) => fail('ca', err, 'the CA certificate'),
      );
    }
    if (f['token-file'] !== undefined) {
      await readable(String(f['token-file'])).then(
        (t) => {
          if (!/^[\x21-\x7e]{16,512}$/.test(t.trim())) problems.push({ at: whereOf(cfg, 'token-file'), message: `token_file: ${f['token-file']} does not hold a token (16-512 printable characters, no spaces)`, permission: false });
        },
        (err) => fail('token-file', err, 'the token'),
      );
    }
    const mc = splitHostPort(String(f.multicast));
    const family = typeof mc !== 'string' && mc.host.includes(':') ? 6 : 4;
    try {
      resolveInterface(String(f.interface), family);
    } catch (err) {
      problems.push({ at: whereOf(cfg, 'interface'), message: `interface: ${(err as Error).message.replace(/^--interface /, '')}`, permission: false });
    }
    await writableDir(String(f.storage), 'storage', 'the agent creates it (under systemd, StateDirectory= does)', whereOf(cfg, 'storage'), problems, notes);
  } else {
    if (f['tls-cert'] !== undefined) {
      const cert = await readable(String(f['tls-cert'])).catch((err) => void fail('tls-cert', err, 'the certificate'));
      const key = await readable(String(f['tls-key'])).catch((err) => void fail('tls-key', err, 'the key'));
      if (cert !== undefined && key !== undefined) {
        try {
          checkTlsPair({ cert, key }, String(f['tls-cert']), String(f['tls-key']));
        } catch (err) {
          problems.push({ at: whereOf(cfg, 'tls-key'), message: `tls_key: ${(err as Error).message}`, permission: false });
        }
      }
    }
    if (f['tokens-file'] !== undefined) {
      await loadTokens({ 'tokens-file': f['tokens-file'] }).catch((err: Error) => problems.push({ at: whereOf(cfg, 'tokens-file'), message: err.message, permission: /EACCES/.test(err.message) }));
    }
    await writableDir(String(f.store), 'store', f.create ? 'create: true makes it at start' : null, whereOf(cfg, 'store'), problems, notes);
    if (f['content-keys'] !== undefined) {
      await fs.access(String(f['content-keys']), constants.R_OK | constants.X_OK).catch((err) => fail('content-keys', err, 'the content keys directory'));
    }
  }
  return { problems, notes };
}
