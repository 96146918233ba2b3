import { MemberRow } from './engine';

/** A member whose units verified grew is written again at most this often (the fleet views of other instances lag by as much). */
export const REGISTRY_PROGRESS_MS = 10_000;
/** A member with nothing new is written this often, so its last_seen stays well inside MEMBER_MEMORY_MS. */
export const REGISTRY_REFRESH_MS = 60_000;

type Row = Omit<MemberRow, 'msAgo'>;

/**
 * Which of an owner's members go to the engine's registry at a write (every 2 s). Writing
 * all of them each time cost, at 100,000 members, 0.9-1.35 s of PostgreSQL CPU and
 * 0.16-0.37 s of the coordinator's per write, 1.35-1.75 s wall: nearly its whole interval
 * (bench/registry.ts).
 * Now a row is written when it is new, when what a reader acts on changed (its group, its
 * allocation key, completion, address: the new owner's wait list and the fleet view),
 * when its count of verified units changed and it was last written REGISTRY_PROGRESS_MS
 * ago, and otherwise every REGISTRY_REFRESH_MS. Bounded: it remembers only the members
 * of the last write's views.
 */
export class RegistryWriter {
  private written = new Map<string, { sig: string; verified: number; at: number }>();

  pick(rows: Row[], now: number): Row[] {
    const next = new Map<string, { sig: string; verified: number; at: number }>();
    const out: Row[] = [];
    for (const r of rows) {
      const id = `${r.release}/${r.member}`;
      const sig = [r.group, r.key, r.complete, r.address ?? '', r.instance].join('\n');
      const w = this.written.get(id);
      const due = !w || w.sig !== sig || now - w.at >= REGISTRY_REFRESH_MS || (w.verified !== r.verifiedUnits && now - w.at >= REGISTRY_PROGRESS_MS);
      if (due) out.push(r);
      next.set(id, due ? { sig, verified: r.verifiedUnits, at: now } : w!);
    }
    this.written = next;
    return out;
  }

  /** The member was in the last write's views. */
  knows(release: string, member: string): boolean {
    return this.written.has(`${release}/${member}`);
  }

  /** The engine refused the write: those rows are due again at the next. */
  failed(rows: Row[]): void {
    for (const r of rows) this.written.delete(`${r.release}/${r.member}`);
  }
}
