export { RateMeter, verifiedBytes } from '../util/rate';

/** A one-line progress bar, drawn only when the stream is a terminal. */
export class ProgressBar {
  private last = 0;
  private drawn = false;
  constructor(
    private label: string,
    private readonly stream: Pick<NodeJS.WriteStream, 'isTTY' | 'write'> = process.stderr,
    private readonly now: () => number = Date.now,
  ) {}

  /** The label for the next lines (the release name, when the agent moves to another). */
  relabel(label: string): void {
    this.finish();
    this.label = label;
  }

  get enabled(): boolean {
    return Boolean(this.stream.isTTY);
  }

  update(done: number, total: number, extra = ''): void {
    if (!this.enabled) return;
    const now = this.now();
    if (now - this.last < 100 && done < total) return;
    this.last = now;
    const frac = total > 0 ? Math.min(1, done / total) : 1;
    const width = 30;
    const fill = Math.round(frac * width);
    this.stream.write(`\r${this.label} [${'#'.repeat(fill)}${'.'.repeat(width - fill)}] ${(frac * 100).toFixed(0).padStart(3)}% ${extra}\x1b[K`);
    this.drawn = true;
  }

  finish(): void {
    if (this.drawn) this.stream.write('\n');
    this.drawn = false;
  }
}

export function formatBytes(n: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) {
    n /= 1024;
    i++;
  }
  return `${n.toFixed(i === 0 ? 0 : 1)} ${units[i]}`;
}

/** Seconds as M:SS or H:MM:SS; "?" when unknown. */
export function formatEta(seconds: number | null): string {
  if (seconds === null || !Number.isFinite(seconds) || seconds < 0) return '?';
  const s = Math.ceil(seconds);
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  const ss = String(s % 60).padStart(2, '0');
  return h > 0 ? `${h}:${String(m).padStart(2, '0')}:${ss}` : `${m}:${ss}`;
}

/** "12.0 MiB of 30.0 MiB, 8.1 MiB/s, ETA 0:03": a transfer's state for a person. */
export function transferLine(o: { done: number; total: number; bytesPerSec: number | null }): string {
  const left = o.total - o.done;
  const eta = left <= 0 ? 0 : o.bytesPerSec ? left / o.bytesPerSec : null;
  return `${formatBytes(o.done)} of ${formatBytes(o.total)}, ${o.bytesPerSec === null ? '? MiB/s' : `${formatBytes(o.bytesPerSec)}/s`}, ETA ${formatEta(eta)}`;
}
