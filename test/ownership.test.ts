import test from 'ava';
import { Claim, CoordinationEngine, EngineUnavailable, MemberRow } from '../src/server/engine';
import { Ownership, OWNER_LEASE_TTL_MS } from '../src/server/ownership';

/**
 * Ownership of allocation keys against an in-memory engine with the lease table's rules
 * (take when free or expired, renew only one's own) and an injected clock.
 */
class FakeEngine implements CoordinationEngine {
  readonly name = 'fake';
  down = false;
  readonly leases = new Map<string, { owner: string; url: string; expires: number }>();
  constructor(readonly owner: string, readonly url: string, readonly clock: { now: number }) {}
  private check(): void {
    if (this.down) throw new EngineUnavailable('fake: ECONNREFUSED');
  }
  async open(s: Buffer): Promise<Buffer> {
    return s;
  }
  async claim(key: string, ttlMs: number): Promise<Claim> {
    this.check();
    const l = this.leases.get(key);
    if (!l || l.expires < this.clock.now || l.owner === this.owner) {
      this.leases.set(key, { owner: this.owner, url: this.url, expires: this.clock.now + ttlMs });
      return { mine: true };
    }
    return { mine: false, owner: l.owner, url: l.url, msLeft: l.expires - this.clock.now };
  }
  async renew(keys: string[], ttlMs: number): Promise<Set<string>> {
    this.check();
    const out = new Set<string>();
    for (const k of keys) {
      const l = this.leases.get(k);
      if (l?.owner === this.owner) {
        l.expires = this.clock.now + ttlMs;
        out.add(k);
      }
    }
    return out;
  }
  async release(keys: string[]): Promise<void> {
    this.check();
    for (const k of keys) if (this.leases.get(k)?.owner === this.owner) this.leases.delete(k);
  }
  async putMembers(): Promise<void> {}
  async membersOf(): Promise<string[]> {
    return [];
  }
  async members(): Promise<MemberRow[]> {
    return [];
  }
  async putHook(): Promise<void> {}
  async hooks(): Promise<[]> {
    return [];
  }
  async liveInstances(): Promise<number> {
    return 1;
  }
  async putChannel(): Promise<void> {}
  async channels(): Promise<[]> {
    return [];
  }
  async putRollouts(): Promise<void> {}
  async rollouts(): Promise<[]> {
    return [];
  }
  async close(): Promise<void> {}
}

function setup() {
  const clock = { now: 1_000_000 };
  const engine = new FakeEngine('me#1', 'http://me', clock);
  const lines: string[] = [];
  const log = { debug: () => {}, info: (m: string) => void lines.push(m), warn: (m: string) => void lines.push(m), error: (m: string) => void lines.push(m) } as never;
  const gained: string[] = [];
  const lost: string[] = [];
  const own = new Ownership(engine, log, () => clock.now, { gained: async (k) => void gained.push(k), lost: (k) => void lost.push(k) });
  return { clock, engine, lines, gained, lost, own };
}

test('a free key is taken on first need; a key held elsewhere routes to its owner until its lease expires, then is taken', async (t) => {
  const { clock, engine, gained, own } = setup();
  t.deepEqual(await own.route('r/g1'), { mine: true });
  t.deepEqual(gained, ['r/g1']);
  engine.leases.set('r/g2', { owner: 'other#1', url: 'http://other', expires: clock.now + OWNER_LEASE_TTL_MS });
  const r = await own.route('r/g2');
  t.like(r, { mine: false, url: 'http://other' });
  clock.now += OWNER_LEASE_TTL_MS + 1; // the other instance stopped renewing
  t.deepEqual(await own.route('r/g2'), { mine: true });
  t.deepEqual(own.keys().sort(), ['r/g1', 'r/g2']);
});

test('engine unreachable: keys held stay held, a new key is refused with the reason, a known owner keeps its key; all resumes when it returns', async (t) => {
  const { clock, engine, lines, own } = setup();
  await own.route('r/mine');
  engine.leases.set('r/theirs', { owner: 'other#1', url: 'http://other', expires: clock.now + OWNER_LEASE_TTL_MS });
  await own.route('r/theirs');
  engine.down = true;
  clock.now += 60_000;
  await own.renew();
  t.deepEqual(await own.route('r/mine'), { mine: true }, 'still served from memory');
  t.like(await own.route('r/theirs'), { mine: false, url: 'http://other' }, 'the last known owner keeps it');
  const refused = await own.route('r/new');
  t.true('unavailable' in refused);
  if ('unavailable' in refused) {
    t.regex(refused.unavailable, /cannot take ownership of r\/new: the shared engine is unreachable \(fake: ECONNREFUSED\)/);
    t.true(refused.retryAfterMs > 0);
  }
  t.is(lines.filter((l) => /shared engine unreachable/.test(l)).length, 1, 'logged once, not per request');
  engine.down = false;
  t.deepEqual(await own.route('r/new'), { mine: true });
  t.true(lines.some((l) => /reachable again/.test(l)));
  t.is(own.unavailable, null);
});

test('a renewal the engine refuses (another instance took the key) drops it at once', async (t) => {
  const { clock, engine, lost, own } = setup();
  await own.route('r/g');
  engine.leases.set('r/g', { owner: 'other#1', url: 'http://other', expires: clock.now + OWNER_LEASE_TTL_MS });
  await own.renew();
  t.deepEqual(lost, ['r/g']);
  t.false(own.owns('r/g'));
  t.like(await own.route('r/g'), { mine: false, url: 'http://other' });
});

test('a clean stop releases every key, so another instance takes them without waiting for expiry', async (t) => {
  const { engine, own } = setup();
  await own.route('r/a');
  await own.route('r/b');
  await own.route('r/c');
  await own.release(['r/c']); // no member left in it
  t.false(engine.leases.has('r/c'));
  t.deepEqual(own.keys().sort(), ['r/a', 'r/b']);
  await own.releaseAll();
  t.is(engine.leases.size, 0);
  t.deepEqual(own.keys(), []);
});
