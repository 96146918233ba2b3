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
