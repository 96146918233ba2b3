/**
 * Logging to stderr. Under systemd (JOURNAL_STREAM set) lines carry sd-daemon `<N>`
 * priority prefixes and no timestamps; on a terminal or a pipe, plain text.
 */
export type Level = 'error' | 'warn' | 'info' | 'debug';
const PRIORITY: Record<Level, number> = { error: 3, warn: 4, info: 6, debug: 7 };
const ORDER: Record<Level, number> = { error: 0, warn: 1, info: 2, debug: 3 };

export interface Logger {
  error(msg: string): void;
  warn(msg: string): void;
  info(msg: string): void;
  debug(msg: string): void;
  child(prefix: string): Logger;
  /** Change the level of this logger and every child (SIGHUP reload). */
  setLevel(level: Level): void;
}

export function createLogger(opts: { level?: Level; prefix?: string; journald?: boolean; write?: (line: string) => void; shared?: { level: Level } } = {}): Logger {
  const state = opts.shared ?? { level: opts.level ?? ((process.env.FLEETCAST_LOG_LEVEL as Level) || 'info') };
  const journald = opts.journald ?? Boolean(process.env.JOURNAL_STREAM);
  const write = opts.write ?? ((line: string) => process.stderr.write(line + '\n'));
  const prefix = opts.prefix ? `${opts.prefix}: ` : '';
  const emit = (l: Level, msg: string) => {
    if (ORDER[l] > (ORDER[state.level] ?? 2)) return;
    write(journald ? `<${PRIORITY[l]}>${prefix}${msg}` : `${l === 'info' ? '' : l + ': '}${prefix}${msg}`);
  };
  return {
    error: (m) => emit('error', m),
    warn: (m) => emit('warn', m),
    info: (m) => emit('info', m),
    debug: (m) => emit('debug', m),
    child: (p) => createLogger({ shared: state, journald, write, prefix: opts.prefix ? `${opts.prefix} ${p}` : p }),
    setLevel: (l) => {
      state.level = l;
    },
  };
}

export const silentLogger: Logger = { error() {}, warn() {}, info() {}, debug() {}, child: () => silentLogger, setLevel() {} };
