/**
 * One error class for everything a user can cause or meet. `exitCode` follows
 * sysexits(3) so scripts and systemd (RestartPreventExitStatus=78) can act on it.
 */
export const ExitCode = {
  OK: 0,
  FAILURE: 1,
  USAGE: 64, // bad command line
  DATAERR: 65, // bad input data: manifest, signature, corrupt file
  NOINPUT: 66, // a named input file does not exist
  UNAVAILABLE: 69, // server unreachable / refused
  SOFTWARE: 70, // internal error (a bug)
  CANTCREAT: 73, // cannot create output
  IOERR: 74, // disk full, read-only storage
  TEMPFAIL: 75, // try again later (e.g. --once gave up waiting)
  NOPERM: 77, // missing permission or capability (CAP_NET_RAW)
  CONFIG: 78, // configuration error
} as const;
export type ExitCodeValue = (typeof ExitCode)[keyof typeof ExitCode];

/**
 * What each exit status means, for every command: printed by `--help` and copied into
 * README.md (a test keeps the two the same).
 */
export const EXIT_STATUS_TABLE: readonly [ExitCodeValue, string][] = [
  [ExitCode.OK, 'done (agent --once: the release is complete and verified)'],
  [ExitCode.FAILURE, 'doctor: a check failed (its findings say how to fix it)'],
  [ExitCode.USAGE, 'bad command line: unknown option, bad value, plain http:// without --plain-http'],
  [ExitCode.DATAERR, 'bad data: a manifest not signed by a trusted key, a corrupt file'],
  [ExitCode.NOINPUT, 'missing input: the config file, a file to publish, the store (server without --create)'],
  [ExitCode.UNAVAILABLE, 'the server or network is unavailable, or answered an error'],
  [ExitCode.SOFTWARE, 'internal error (a bug: please report it)'],
  [ExitCode.CANTCREAT, 'cannot create an output file or directory'],
  [ExitCode.IOERR, 'I/O error: disk full, read-only storage'],
  [ExitCode.TEMPFAIL, 'gave up for now (--timeout)'],
  [ExitCode.NOPERM, 'not permitted: the server refused the token (401), a file the service user cannot read, no CAP_NET_RAW'],
  [ExitCode.CONFIG, "configuration error: a config value (file:line:column), a TLS certificate not trusted (set ca:), a certificate and key that do not match"],
];

/** The table as `--help` prints it. */
export function exitStatusHelp(): string {
  return ['Exit status (sysexits):', ...EXIT_STATUS_TABLE.map(([c, m]) => `  ${String(c).padStart(2)}  ${m}`)].join('\n');
}

export class FleetcastError extends Error {
  readonly exitCode: ExitCodeValue;
  readonly code: string;
  constructor(code: string, message: string, exitCode: ExitCodeValue = ExitCode.FAILURE, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'FleetcastError';
    this.code = code;
    this.exitCode = exitCode;
  }
}

/** Map a Node system error (ENOSPC, EROFS, ENOENT, ...) to a clear FleetcastError. */
export function fromSystemError(err: unknown, what: string): FleetcastError {
  if (err instanceof FleetcastError) return err;
  const e = err as NodeJS.ErrnoException;
  switch (e?.code) {
    case 'ENOSPC':
      return new FleetcastError('ENOSPC', `${what}: no space left on device`, ExitCode.IOERR, { cause: err });
    case 'EROFS':
      return new FleetcastError('EROFS', `${what}: storage is read-only`, ExitCode.IOERR, { cause: err });
    case 'EDQUOT':
      return new FleetcastError('EDQUOT', `${what}: disk quota exceeded`, ExitCode.IOERR, { cause: err });
    case 'ENOENT':
      return new FleetcastError('ENOENT', `${what}: no such file or directory`, ExitCode.NOINPUT, { cause: err });
    case 'EACCES':
    case 'EPERM':
      return new FleetcastError(e.code, `${what}: permission denied`, ExitCode.CANTCREAT, { cause: err });
    default:
      return new FleetcastError(e?.code ?? 'EIO', `${what}: ${e?.message ?? String(err)}`, ExitCode.IOERR, { cause: err });
  }
}
