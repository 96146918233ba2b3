import { readFileSync, readdirSync } from 'node:fs';
import { spawnSync } from 'node:child_process';

/**
 * Resident memory of the agent processes a benchmark starts, read from /proc (issue 16).
 *
 * VmHWM in /proc/PID/status is the kernel's own peak of VmRSS for the process, so one
 * sample taken any time after a peak sees it; the sampler reads each agent's status
 * every SAMPLE_MS until the process is gone. A peak inside the last SAMPLE_MS before an
 * agent exits is the only one it can miss. Agents are found as children of this process
 * (/proc/self/task/TID/children) whose command line runs `fleetcast agent`.
 */
const SAMPLE_MS = 20;

export interface AgentMemory {
  pid: number;
  /** Highest VmHWM read (KiB): the agent's peak resident set. */
  hwmKiB: number;
  /** Highest VmRSS sampled (KiB). */
  rssMaxKiB: number;
  /** Median of the VmRSS samples (KiB). */
  rssMedianKiB: number;
  samples: number;
}

const median = (xs: number[]) => {
  if (!xs.length) return 0;
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};

function statusKiB(pid: number): { rss: number; hwm: number } | null {
  let s: string;
  try {
    s = readFileSync(`/proc/${pid}/status`, 'utf8');
  } catch {
    return null; // gone
  }
  const kib = (k: string) => Number(new RegExp(`^${k}:\\s+(\\d+) kB`, 'm').exec(s)?.[1] ?? NaN);
  const rss = kib('VmRSS');
  const hwm = kib('VmHWM');
  // A zombie (exited, not yet reaped) has no memory lines left.
  return Number.isFinite(rss) && Number.isFinite(hwm) ? { rss, hwm } : null;
}

function childPids(): number[] {
  const out: number[] = [];
  let tasks: string[];
  try {
    tasks = readdirSync('/proc/self/task');
  } catch {
    return out;
  }
  for (const t of tasks) {
    try {
      for (const p of readFileSync(`/proc/self/task/${t}/children`, 'utf8').trim().split(/\s+/)) if (p) out.push(Number(p));
    } catch {
      /* thread gone, or no CONFIG_PROC_CHILDREN */
    }
  }
  return out;
}

function isAgent(pid: number): boolean {
  try {
    const argv = readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0');
    return argv.some((a) => a.endsWith('fleetcast.js')) && argv.includes('agent');
  } catch {
    return false;
  }
}

/** Samples every agent child of this process until stop(); then one entry per agent seen. */
export class AgentMemorySampler {
  private readonly seen = new Map<number, { hwm: number; rss: number[] }>();
  private readonly notAgent = new Set<number>();
  private readonly timer: NodeJS.Timeout;

  constructor() {
    this.timer = setInterval(() => this.sample(), SAMPLE_MS);
  }

  private sample(): void {
    for (const pid of childPids()) {
      if (this.notAgent.has(pid)) continue;
      let s = this.seen.get(pid);
      if (!s) {
        if (!isAgent(pid)) {
          this.notAgent.add(pid);
          continue;
        }
        s = { hwm: 0, rss: [] };
        this.seen.set(pid, s);
      }
      const m = statusKiB(pid);
      if (!m) continue;
      s.hwm = Math.max(s.hwm, m.hwm);
      s.rss.push(m.rss);
    }
  }

  stop(): AgentMemory[] {
    clearInterval(this.timer);
    return [...this.seen].map(([pid, s]) => ({ pid, hwmKiB: s.hwm, rssMaxKiB: Math.max(0, ...s.rss), rssMedianKiB: median(s.rss), samples: s.rss.length }));
  }
}

/** Resident memory of a bare `node -e` (no fleetcast code), KiB: the floor under any agent. */
export function nodeBaselineKiB(): { rss: number; file: number } {
  const r = spawnSync(
    process.execPath,
    ['-e', "setTimeout(() => { const s = require('fs').readFileSync('/proc/self/status', 'utf8'); process.stdout.write(/VmRSS:\\s+(\\d+)/.exec(s)[1] + ' ' + /RssFile:\\s+(\\d+)/.exec(s)[1]); }, 200)"],
    { encoding: 'utf8' },
  );
  const [rss, file] = r.stdout.trim().split(' ').map(Number);
  return { rss, file };
}
