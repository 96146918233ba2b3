/**
 * What agent and server exchange about rollouts (docs/protocol.md, "Rollouts"), and the
 * install-window format both read. Pure and shared by both sides, so it lives below them.
 */
import { isReleaseId, isRolloutId } from './ids';
import { parseJsonObject } from './json-object';
export type RolloutState = 'running' | 'paused' | 'halted' | 'aborted' | 'completed';
export const ROLLOUT_STATES: readonly RolloutState[] = ['running', 'paused', 'halted', 'aborted', 'completed'];

/** What the server tells one agent about the rollout on its channel (POST /v1/rollouts/poll). */
export interface Directive {
  rollout: string;
  release: string;
  previous: string;
  state: RolloutState;
  wave: number;
  waveOpen: boolean;
  /** Stage (download) `release` now; false once halted or aborted: stay on `previous`. */
  stage: boolean;
  /** Run the install hook now (window permitting). */
  install: boolean;
  /** Run on_rollback now, if this member installed the release. */
  rollback: boolean;
  window: string | null;
}

// ---------------------------------------------------------------- install windows

const DAYS = ['sun', 'mon', 'tue', 'wed', 'thu', 'fri', 'sat'];

export interface WindowPart {
  /** Days (0 = Sunday) on which the window opens. */
  days: boolean[];
  /** Minutes after local midnight; end <= start runs past midnight into the next day. */
  start: number;
  end: number;
}

function parseClock(s: string): number | null {
  const m = /^(\d{1,2}):(\d{2})$/.exec(s);
  if (!m) return null;
  const h = Number(m[1]);
  const min = Number(m[2]);
  if (min > 59 || h > 24 || (h === 24 && min !== 0)) return null;
  return h * 60 + min;
}

/**
 * "Mon-Fri 02:00-04:00", "Sat,Sun 00:00-24:00", "22:00-02:00" (every day, across
 * midnight), several joined by ";". Returns the parts or what is wrong.
 */
export function parseWindow(s: string): WindowPart[] | string {
  if (s.length > 512) return 'is longer than 512 characters';
  const parts = s.split(';').map((x) => x.trim());
  const out: WindowPart[] = [];
  for (const p of parts) {
    const m = /^(?:([A-Za-z,-]+)\s+)?(\d{1,2}:\d{2})-(\d{1,2}:\d{2})$/.exec(p);
    if (!m) return `${JSON.stringify(p)} is not a window like "Mon-Fri 02:00-04:00" or "22:00-02:00"`;
    const days = new Array<boolean>(7).fill(m[1] === undefined);
    if (m[1] !== undefined) {
      for (const item of m[1].toLowerCase().split(',')) {
        const [a, b, extra] = item.split('-');
        const i = DAYS.indexOf(a);
        const j = b === undefined ? i : DAYS.indexOf(b);
        if (extra !== undefined || i < 0 || j < 0) return `${JSON.stringify(item)} in ${JSON.stringify(p)} is not a day or range of days (Mon, Tue, ..., Sun; e.g. Mon-Fri)`;
        for (let d = i; ; d = (d + 1) % 7) {
          days[d] = true;
          if (d === j) break;
        }
      }
    }
    const start = parseClock(m[2]);
    const end = parseClock(m[3]);
    if (start === null || end === null) return `${JSON.stringify(p)}: times must be HH:MM between 00:00 and 24:00`;
    if (start === end) return `${JSON.stringify(p)}: the window is empty (it starts where it ends)`;
    out.push({ days, start: start % 1440, end });
  }
  return out;
}

/** Does the window allow an install at this local time (day 0 = Sunday, minute after local midnight)? */
export function windowAllowsAt(w: WindowPart[], day: number, minute: number): boolean {
  for (const p of w) {
    if (p.end > p.start) {
      if (p.days[day] && minute >= p.start && minute < p.end) return true;
    } else {
      // Across midnight: belongs to the day it starts on.
      if (p.days[day] && minute >= p.start) return true;
      if (p.days[(day + 6) % 7] && minute < p.end) return true;
    }
  }
  return false;
}

/** The window read in this process's local time (the agent's). */
export function windowAllows(w: WindowPart[], nowMs: number): boolean {
  const d = new Date(nowMs);
  return windowAllowsAt(w, d.getDay(), d.getHours() * 60 + d.getMinutes());
}


/** The server's answer to POST /v1/rollouts/poll (untrusted bytes: a fuzz target). Null: no rollout on the channel. */
export function parsePollAnswer(bytes: Uint8Array): Directive | null | string {
  const o = parseJsonObject(bytes);
  if (typeof o === 'string') return o;
  const r = o.rollout;
  if (r === null) return null;
  if (typeof r !== 'object' || r === undefined || Array.isArray(r)) return 'rollout must be an object or null';
  const d = r as Record<string, unknown>;
  if (!isRolloutId(d.rollout)) return 'rollout.rollout must be a rollout id';
  if (!isReleaseId(d.release) || !isReleaseId(d.previous)) return 'rollout.release and rollout.previous must be release ids';
  if (!ROLLOUT_STATES.includes(d.state as RolloutState)) return 'rollout.state is not a rollout state';
  if (!Number.isSafeInteger(d.wave) || (d.wave as number) < 0) return 'rollout.wave must be a wave number';
  for (const k of ['waveOpen', 'stage', 'install', 'rollback']) if (typeof d[k] !== 'boolean') return `rollout.${k} must be a boolean`;
  if (d.window !== null && (typeof d.window !== 'string' || typeof parseWindow(d.window) === 'string')) return 'rollout.window must be a window or null';
  return {
    rollout: d.rollout,
    release: d.release as string,
    previous: d.previous as string,
    state: d.state as RolloutState,
    wave: d.wave as number,
    waveOpen: d.waveOpen as boolean,
    stage: d.stage as boolean,
    install: d.install as boolean,
    rollback: d.rollback as boolean,
    window: d.window as string | null,
  };
}
