import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { writeAtomic } from '../storage/files';
import { OneAtATime } from '../util/one-at-a-time';
import { StoredRelease } from '../release/store';
import { MAX_UNITS, unitLength } from '../release/manifest';
import { MemberRef } from '../wire/http-bodies';
import { GroupAllocator } from './allocator';
import { Distribution, readDistribution } from '../release/distribution';
import { HttpError } from './http-util';
import { allocatorKey, MEMBER_MEMORY_MS, parseAllocatorKey, ServerCore } from './server-core';

/** Due allocators one turn of expiry visits (expireSlice). */
export const EXPIRE_SLICE = 200;

/**
 * Who is in which allocation: one GroupAllocator per (release, LAN group) or (release,
 * wide-area group), admission under the caps, expiry, the members and identities kept
 * across a restart (members.json, identities.json) and the rebuild wait after one, each
 * release's distribution policy, and the overheads noted for the fleet memory.
 */
export abstract class MemberRegistry extends ServerCore {
  /** Members seen in the last MEMBER_MEMORY_MS before the file was written are awaited after a restart. */
  protected get membersFile(): string {
    return path.join(this.opts.storeDir, 'members.json');
  }

  protected get identitiesFile(): string {
    return path.join(this.opts.storeDir, 'identities.json');
  }

  /** Member id -> token bindings survive a restart, so a restart opens no window to claim ids. */
  protected async loadIdentities(): Promise<void> {
    let raw: string;
    try {
      raw = await fs.readFile(this.identitiesFile, 'utf8');
    } catch {
      return;
    }
    try {
      this.identities.load(JSON.parse(raw), this.limits.maxMembersPerRelease * 16);
    } catch (err) {
      this.log.warn(`ignoring ${this.identitiesFile}: ${(err as Error).message}`);
    }
  }

  private readonly saving = new OneAtATime();

  /**
   * members.json and identities.json, at most once per membersWriteMinMs (a storm of
   * joins must not turn into a storm of rewrites); `force` on stop. One write at a time:
   * a save waits for the one in flight, so stop() returns only after the timer's write is
   * done (it used to return while that write was still creating its temp file) and two
   * writes never share a temp file.
   */
  protected saveState(force = false): Promise<void> {
    return this.saving.run(() => this.saveStateNow(force));
  }

  private async saveStateNow(force: boolean): Promise<void> {
    if (!this.membersDirty && !this.identities.dirty) return;
    const now = this.now();
    if (!force && now - this.lastMembersWrite < this.limits.membersWriteMinMs) {
      this.limitHit('members_file_writes_deferred');
      return;
    }
    this.lastMembersWrite = now;
    if (this.identities.dirty) {
      this.identities.dirty = false;
      await writeAtomic(this.identitiesFile, Buffer.from(JSON.stringify(this.identities.toJSON()))).catch((err: Error) => this.log.warn(`cannot save ${this.identitiesFile}: ${err.message}`));
    }
    await this.saveMembers();
  }

  protected async loadMembers(): Promise<void> {
    let raw: string;
    try {
      raw = await fs.readFile(this.membersFile, 'utf8');
    } catch {
      return; // fresh store
    }
    try {
      const j = JSON.parse(raw) as { savedAt?: unknown; groups?: unknown };
      if (typeof j.savedAt !== 'number' || typeof j.groups !== 'object' || j.groups === null) throw new Error('bad shape');
      if (this.now() - j.savedAt > MEMBER_MEMORY_MS) return; // too old: those agents gave up or moved on
      for (const [key, ids] of Object.entries(j.groups as Record<string, unknown>)) {
        if (!Array.isArray(ids)) continue;
        const set = new Set(ids.filter((x): x is string => typeof x === 'string').slice(0, 100_000));
        if (set.size) this.awaited.set(key, set);
      }
      if (this.awaited.size) this.log.info(`rebuilding allocation: waiting for ${[...this.awaited.values()].reduce((a, s) => a + s.size, 0)} member(s) seen before the restart`);
    } catch (err) {
      this.log.warn(`ignoring ${this.membersFile}: ${(err as Error).message}`);
    }
  }

  protected async saveMembers(): Promise<void> {
    if (!this.membersDirty) return;
    this.membersDirty = false;
    const groups: Record<string, string[]> = {};
    const now = this.now();
    for (const [key, g] of this.groups) groups[key] = g.memberIds();
    try {
      await writeAtomic(this.membersFile, Buffer.from(JSON.stringify({ savedAt: now, groups })));
    } catch (err) {
      this.log.warn(`cannot save ${this.membersFile}: ${(err as Error).message}`);
    }
  }

  /** ms a lease request in `key` must still wait for the rebuild, or 0. */
  protected rebuildWait(key: string, now: number): number {
    const waiting = this.awaited.get(key);
    if (!waiting || waiting.size === 0) return 0;
    const left = this.startedAt + this.rebuildGraceMs - now;
    if (left <= 0) {
      this.awaited.delete(key);
      return 0;
    }
    return Math.min(left, this.heartbeatMs);
  }

  /**
   * Drop the members that stopped heartbeating (and holding polls) and reclaim overdue
   * leases: only in the allocators whose earliest deadline passed (Allocators.due), so a
   * tick over an idle fleet visits none.
   */
  protected expire(): void {
    if (!this.expiring) this.expireSlice();
  }

  /** The rest of a tick's expiry, queued behind the requests already waiting (stop() cancels it). */
  protected expiring: NodeJS.Immediate | null = null;
  /** Turns of expiry (a tick's first, and each one queued after EXPIRE_SLICE allocators), and the most allocators one visited: counted, never timed. */
  expirySlices = 0;
  largestExpirySlice = 0;

  /**
   * At most EXPIRE_SLICE due allocators a turn, then the loop reads requests before the
   * next: at 100,000 members a tick's expiry held the loop 10-55 ms in one piece (issue 17).
   */
  private expireSlice(): void {
    this.expirySlices++;
    const now = this.now();
    let visited = 0;
    for (const [key, g] of this.groups.due(now)) {
      for (const id of g.expire(now)) {
        this.membersDirty = true;
        this.counts.clear();
        this.log.info(`${key}: member ${id} stopped heartbeating; its leases go to others`);
      }
      this.largestExpirySlice = Math.max(this.largestExpirySlice, ++visited);
      if (visited === EXPIRE_SLICE) {
        this.expiring = setImmediate(() => {
          this.expiring = null;
          this.expireSlice();
        });
        return;
      }
    }
  }

  /**
   * The allocator a member belongs to. Policy `wide`: one per (release, wide-area
   * group), keyed "release/*wide"; `group` and `representative`: one per (release, LAN
   * group). A heartbeat names the wide-area group; other requests find the member's
   * allocator from its last heartbeat.
   */
  protected async group(ref: MemberRef, heartbeat?: { wideGroup?: string }, token: string | null = null): Promise<{ rel: StoredRelease; g: GroupAllocator; key: string; dist: Distribution }> {
    const rel = await this.store.get(ref.release);
    if (!rel) throw new HttpError(404, 'NO_RELEASE', `release ${ref.release} is not on this server`);
    const maxUnits = Math.min(MAX_UNITS, this.opts.maxUnitsPerRelease ?? MAX_UNITS);
    if (rel.manifest.unitCount > maxUnits) {
      this.limitHit('units_per_release');
      throw new HttpError(413, 'TOO_MANY_UNITS', `release ${ref.release} has ${rel.manifest.unitCount} units; this server serves at most ${maxUnits} (republish with a larger --unit-size)`);
    }
    const dist = await this.distribution(rel);
    const mk = `${ref.release}/${ref.member}`;
    let key: string;
    if (heartbeat) {
      key = allocatorKey(ref.release, dist.policy === 'wide' && heartbeat.wideGroup ? { wide: heartbeat.wideGroup } : { group: ref.group });
      this.admit(ref, key, token);
      const prev = this.memberKeys.get(mk);
      // A member is in one group per release: moving leaves the old one (and its key).
      if (prev !== undefined && prev !== key) this.groups.get(prev)?.leave(ref.member);
      this.memberKeys.set(mk, key);
    } else key = this.memberKeys.get(mk) ?? allocatorKey(ref.release, { group: ref.group });
    let g = this.groups.get(key);
    if (!g) {
      if (!heartbeat) throw new HttpError(409, 'NOT_JOINED', `member ${ref.member} has not joined group ${ref.group} (or timed out): send a heartbeat first`);
      const m = rel.manifest;
      g = new GroupAllocator({
        ...this.opts.allocator,
        unitCount: m.unitCount,
        unitBytes: (u) => unitLength(m, u),
        representativeOnly: dist.policy === 'representative',
        deferredStart: dist.start === 'all-fetched',
      });
      this.groups.set(key, g);
    }
    return { rel, g, key, dist };
  }

  /**
   * Caps on what heartbeats can make the server hold: groups per release, live members
   * per release, and groups per token. Throws 429 naming the limit.
   */
  protected admit(ref: MemberRef, key: string, token: string | null): void {
    const L = this.limits;
    const g = this.groups.get(key);
    if (g?.hasMember(ref.member)) return;
    const counts = this.releaseCounts(ref.release);
    let { groups } = counts;
    const { members } = counts;
    let reclaimed = 0;
    if (!g && groups >= L.maxGroupsPerRelease) groups -= reclaimed = this.reclaimEmptyGroups(ref.release);
    if (!g && groups >= L.maxGroupsPerRelease) {
      this.limitHit('groups_per_release');
      throw new HttpError(429, 'TOO_MANY_GROUPS', `release ${ref.release} has ${groups} groups, the most this server keeps for one release`);
    }
    const prev = this.memberKeys.get(`${ref.release}/${ref.member}`);
    const moving = prev !== undefined && !!this.groups.get(prev)?.hasMember(ref.member);
    if (members >= L.maxMembersPerRelease && !moving) {
      this.limitHit('members_per_release');
      throw new HttpError(429, 'TOO_MANY_MEMBERS', `release ${ref.release} has ${members} live members, the most this server keeps for one release`);
    }
    const admitted = () => {
      if (reclaimed) return void this.counts.delete(ref.release);
      if (!g) counts.groups++;
      if (!moving) counts.members++;
    };
    if (token === null) return admitted();
    const tk = `${ref.release}/${token}`;
    let mine = this.tokenGroups.get(tk);
    if (!mine) this.tokenGroups.set(tk, (mine = new Set()));
    if (mine.has(key)) return admitted();
    if (mine.size >= L.maxGroupsPerToken) {
      for (const k of mine) if (!this.groups.get(k)?.memberCount()) mine.delete(k);
      if (mine.size >= L.maxGroupsPerToken) {
        this.limitHit('groups_per_token');
        throw new HttpError(429, 'TOO_MANY_GROUPS', `token ${token} has members in ${mine.size} groups of release ${ref.release}, the most one token may`);
      }
    }
    mine.add(key);
    admitted();
  }

  /**
   * Groups and live members of a release, kept by admissions and dropped on every removal
   * (leave, expiry, reclaimed groups): a join costs O(1), not O(groups), while the fleet
   * only grows.
   */
  protected readonly counts = new Map<string, { groups: number; members: number }>();
  protected releaseCounts(release: string): { groups: number; members: number } {
    let c = this.counts.get(release);
    if (c) return c;
    c = { groups: 0, members: 0 };
    for (const [k, a] of this.groups) {
      if (!k.startsWith(release + '/')) continue;
      c.groups++;
      c.members += a.memberCount();
    }
    this.counts.set(release, c);
    return c;
  }

  /**
   * At the group cap, groups with no live member go (their soft state with them): a
   * member moving through new groups, or groups whose agents have all left, must not
   * use up the release's groups. Groups still awaited after a restart stay.
   */
  protected reclaimEmptyGroups(release: string): number {
    let n = 0;
    for (const [k, a] of this.groups) {
      if (!k.startsWith(release + '/') || a.memberCount() > 0 || this.awaited.get(k)?.size) continue;
      this.groups.delete(k);
      n++;
    }
    this.stats.limits.empty_groups_reclaimed += n;
    return n;
  }

  /** The release's distribution policy: `<store>/releases/<id>/distribution.json`, else the server's defaults. */
  protected async distribution(rel: StoredRelease): Promise<Distribution> {
    const cached = this.dists.get(rel.manifest.id);
    if (cached) return cached;
    const d = await readDistribution(path.dirname(rel.dataPath)).catch(() => null);
    const origins = d?.origins ?? this.opts.origins ?? [];
    const dist: Distribution = { policy: d?.policy ?? this.opts.policy ?? 'wide', start: d?.start ?? this.opts.start ?? 'immediate', ...(origins.length ? { origins } : {}) };
    this.dists.set(rel.manifest.id, dist);
    return dist;
  }

  protected member(g: GroupAllocator, ref: MemberRef): void {
    if (!g.hasMember(ref.member)) throw new HttpError(409, 'NOT_JOINED', `member ${ref.member} has not joined group ${ref.group} (or timed out): send a heartbeat first`);
  }

  /**
   * What an answer says about copies to other groups (docs/protocol.md sections 8 and 16).
   * Policy `wide` with every member speaking 1.5: `copyTree` (the degree k) and an empty
   * `copyTo`; each agent derives its at most k destinations, and what it forwards as a
   * gateway, from the member records of its map, so the answer does not grow with the
   * number of sites. Otherwise `copyTo` lists every other group's gateway (1.4).
   */
  protected copyFields(g: GroupAllocator, member: string, wide: boolean, now: number, cached = false): { copyTo: { group: string; member: string; address: string; port: number }[]; copyTree?: number } {
    if (!wide) return { copyTo: [] };
    const k = g.copyTreeDegree();
    return k > 0 ? { copyTo: [], copyTree: k } : { copyTo: this.copyDestinations(g, member, now, cached) };
  }

  /** Where a member of a wide-area group sends copies besides its LAN: the other LAN groups' gateways. */
  protected copyDestinations(g: GroupAllocator, member: string, now: number, cached = false): { group: string; member: string; address: string; port: number }[] {
    const mine = g.lanGroupOf(member);
    const out: { group: string; member: string; address: string; port: number }[] = [];
    for (const [group, gw] of cached ? g.rolesCached(now) : g.gateways(now)) {
      if (group === mine) continue;
      const ep = g.endpointOf(gw);
      if (ep) out.push({ group, member: gw, address: ep.address, port: ep.port });
    }
    return out;
  }

  /**
   * Members' measured overheads into the fleet memory (the fleet view after a restart): those
   * that changed since the last call (GroupAllocator.takeOverheads), not every member's.
   */
  protected noteOverheads(): void {
    for (const [key, changed] of this.groups.takeOverheads()) {
      const { release, group } = parseAllocatorKey(key);
      for (const [id, msPerMiB] of changed) this.memory.noteOverhead(`${release}/${group}/${id}`, msPerMiB);
    }
  }
}
