import type { PartialStore } from '../storage/partial-store';
import type { Endpoint, Transport } from '../transport/transport';
import type { Logger } from '../util/log';
import { checkAgentHeap } from '../util/memory-tuning';
import type { CoreEvent, ProtocolCore } from './core/types';

/** What the driver does with the core's events besides storage. */
export interface DriverHooks {
  /** The in-place methods are needed only by a core with assembleInPlace. */
  store: Pick<PartialStore, 'writeUnit' | 'readUnit'> & Partial<Pick<PartialStore, 'writeRangeSync' | 'readRangeSync' | 'commitInPlace' | 'landing'>>;
  /** A pooled buffer to read a unit into (it becomes the core's with unitRead). */
  readBuffer(unit: number): Buffer;
  log: Logger;
  /** A unit from the LAN is stored (progress callbacks). */
  stored(): void;
  /** Storage failed: the release cannot complete here. */
  fail(err: Error): void;
  relay(units: number[], reason: 'relayed' | 'stalled'): void;
  /** Wake the fetch workers. */
  wake(): void;
  /** Every unit is stored: finish the file. */
  complete(): void;
  /** After each flush (paused downloads may resume). */
  afterFlush(): void;
}

/**
 * Runs a protocol core (core/lan-core.ts) on real sockets and a real clock, as quinn's
 * endpoint driver runs quinn-proto: every input goes to the core with Date.now(); then,
 * once the current run of inputs is over (a microtask: one receive batch, or one HTTP
 * chunk's fragments, leaves in one sendmmsg), flush() sends what pollTransmit() hands out
 * (LAN multicast through one transport, unicast to other groups through the other), acts
 * on pollEvent()'s events and arms one timer for pollTimeout().
 */
export class CoreDriver {
  private timer: NodeJS.Timeout | null = null;
  private timerAt = Infinity;
  private flushQueued = false;
  private closed = false;
  /** Unicast datagrams the cross transport refused (its queue was full): sent first once it is writable. */
  private readonly crossBacklog: { d: Uint8Array; to: Endpoint }[] = [];

  constructor(
    private readonly core: ProtocolCore,
    private readonly lan: Transport,
    private readonly cross: Transport,
    private readonly hooks: DriverHooks,
  ) {
    // sendmmsg copies before it returns; node:dgram holds each datagram until sent.
    core.reuseSentDatagrams?.(lan.info.kind === 'native');
    lan.onBatch((b) => {
      if (this.closed) return;
      const now = Date.now();
      for (let i = 0; i < b.count; i++) core.handleDatagram(b.data(i), now);
      this.kick();
    });
    cross.onBatch((b) => {
      if (this.closed) return;
      const now = Date.now();
      for (let i = 0; i < b.count; i++) core.handleDatagram(b.data(i), now, { address: b.address(i), port: b.port(i) });
      this.kick();
    });
    lan.onWritable(() => {
      core.writable(Date.now());
      this.kick();
    });
    cross.onWritable(() => this.sendCrossBacklog());
  }

  /** Drain the core once the current run of inputs is over. */
  kick(): void {
    if (this.flushQueued || this.closed) return;
    this.flushQueued = true;
    queueMicrotask(() => this.flush());
  }

  private flush(): void {
    this.flushQueued = false;
    if (this.closed) return;
    const now = Date.now();
    const core = this.core;
    for (let t = core.pollTransmit(now); t; t = core.pollTransmit(now)) {
      if (t.to === null) {
        core.transmitted(t, this.lan.sendBatch(t.datagrams, this.lan.groupEndpoint), now);
        continue;
      }
      // Unicast: what the socket refuses now waits in order for it (the core counts it sent).
      const to = t.to;
      const n = this.crossBacklog.length ? 0 : this.cross.sendBatch(t.datagrams, to);
      for (let i = n; i < t.datagrams.length; i++) this.crossBacklog.push({ d: t.datagrams[i], to });
      core.transmitted(t, t.datagrams.length, now);
    }
    for (let e = core.pollEvent(); e; e = core.pollEvent()) this.onEvent(e);
    this.hooks.afterFlush();
    checkAgentHeap(now);
    const at = core.pollTimeout();
    if (at === null || (this.timer && this.timerAt <= at)) return; // an earlier timer re-arms when it fires
    if (this.timer) clearTimeout(this.timer);
    this.timerAt = at;
    this.timer = setTimeout(() => {
      this.timer = null;
      this.timerAt = Infinity;
      if (this.closed) return;
      core.handleTimeout(Date.now());
      this.flush();
    }, Math.max(0, at - now));
  }

  private onEvent(e: CoreEvent): void {
    const { core, hooks } = this;
    switch (e.type) {
      case 'store':
        // The buffer goes back to the core once written, not after the commit's
        // fdatasync: behind a slow disk, up to 17 unit buffers per agent waited there.
        hooks.store.writeUnit(e.unit, e.bytes, () => core.unitWritten?.(e.unit, Date.now())).then(() => {
          core.unitStored(e.unit, Date.now());
          hooks.stored();
          this.kick();
        }, hooks.fail);
        return;
      case 'write': {
        // On the main thread: the chunk is the core's again at the next pollEvent(), and
        // no byte of the assembly is in flight when it is verified (issue 16).
        const w = hooks.store.writeRangeSync;
        if (!w) return hooks.fail(new Error('the core assembles in place but the store cannot write ranges'));
        try {
          if (!w.call(hooks.store, e.unit, e.offset, e.bytes)) core.assemblyRefused?.(e.unit, Date.now());
        } catch (err) {
          hooks.fail(err as Error);
        }
        return;
      }
      case 'verify': {
        const store = hooks.store;
        if (!store.readRangeSync || !store.commitInPlace || !store.landing) return hooks.fail(new Error('the core assembles in place but the store cannot read ranges'));
        const now = Date.now();
        // A download of the unit still landing could put its bytes over the ones just read.
        if (store.landing(e.unit)) return core.assemblyRefused?.(e.unit, now);
        if (!core.verifyInPlace?.(e.unit, (offset, into) => store.readRangeSync!(e.unit, offset, into), now)) return;
        store.commitInPlace(e.unit).then(() => {
          core.unitStored(e.unit, Date.now());
          hooks.stored();
          this.kick();
        }, hooks.fail);
        return;
      }
      case 'read':
        hooks.store
          .readUnit(e.unit, hooks.readBuffer(e.unit))
          .then(
            (b) => core.unitRead(e.unit, b, Date.now()),
            (err: Error) => {
              hooks.log.warn(`reading unit ${e.unit}: ${err.message}`);
              core.unitRead(e.unit, null, Date.now());
            },
          )
          .finally(() => this.kick());
        return;
      case 'relay':
        return hooks.relay(e.units, e.reason);
      case 'wake':
        return hooks.wake();
      case 'complete':
        return hooks.complete();
    }
  }

  private sendCrossBacklog(): void {
    while (this.crossBacklog.length && !this.closed) {
      const { d, to } = this.crossBacklog[0];
      if (this.cross.sendBatch([d], to) < 1) return;
      this.crossBacklog.shift();
    }
  }

  close(): void {
    this.closed = true;
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
  }
}
