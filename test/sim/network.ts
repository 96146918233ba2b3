import { Sim } from './clock';
import { LossModel, LossSpec, NO_LOSS, makeLossModel } from './loss';
import { Prng } from './prng';

/**
 * An in-memory network for the simulator: LAN groups (multicast domains) joined
 * by routed WAN paths, built from directed links.
 *
 * Topology. Every endpoint sits on one LAN behind a switch: an `up` link
 * (endpoint -> switch) and a `down` link (switch -> endpoint). A multicast
 * crosses the sender's `up` once, then every other member's `down`, so loss on
 * `down` links is independent per receiver and loss on an `up` link is shared by
 * all of them. A unicast inside a LAN takes `up` then the receiver's `down`. A
 * unicast to another LAN (cross-group traffic: copy packets to gateways, remote
 * NACKs) takes `up`, the routed path between the two LANs (`route`), then the
 * receiver's `down`; with no route it is dropped and counted.
 *
 * Links. A link serialises packets one after another at its rate (a packet of
 * `n` bytes holds it for n / rate), then delays each by its propagation delay,
 * and loses some by its loss model, drawn from its own seeded stream as the
 * packet leaves. A link may bound the bytes waiting for it (drop-tail queue).
 * Every link counts what it was given, delivered, lost and dropped.
 *
 * Bytes. `send` copies the datagram once; every receiver of a multicast gets the
 * same copy, which receivers must not modify.
 */
export interface LinkSpec {
  /** Propagation delay, ms. Default 0. */
  delayMs?: number;
  /** Serialisation rate, bytes per second. Default: unlimited. */
  rateBytesPerSec?: number;
  /** Default: no loss. */
  loss?: LossSpec;
  /** Bytes that may wait for serialisation; a packet beyond that is dropped. Default: unlimited. */
  queueBytes?: number;
  /** Bytes each packet adds on the wire (headers) for serialisation. Default 0. */
  overheadBytes?: number;
}

export class LinkCounters {
  sentPackets = 0;
  sentBytes = 0;
  deliveredPackets = 0;
  deliveredBytes = 0;
  /** Lost by the loss model. */
  lostPackets = 0;
  lostBytes = 0;
  /** Dropped by a full queue, or on arrival at an endpoint that is down. */
  droppedPackets = 0;
  droppedBytes = 0;

  add(o: LinkCounters): this {
    this.sentPackets += o.sentPackets;
    this.sentBytes += o.sentBytes;
    this.deliveredPackets += o.deliveredPackets;
    this.deliveredBytes += o.deliveredBytes;
    this.lostPackets += o.lostPackets;
    this.lostBytes += o.lostBytes;
    this.droppedPackets += o.droppedPackets;
    this.droppedBytes += o.droppedBytes;
    return this;
  }
}

export type TraceEvent = 'send' | 'deliver' | 'lose' | 'drop';
export type Tracer = (now: number, link: string, event: TraceEvent, bytes: number) => void;

export class Link {
  readonly counters = new LinkCounters();
  private readonly loss: LossModel;
  private readonly delayMs: number;
  private readonly rate: number;
  private readonly queueBytes: number;
  private readonly overheadBytes: number;
  /** When the link finishes serialising what it has been given. */
  private busyUntil = 0;

  constructor(
    readonly name: string,
    spec: LinkSpec,
    rng: Prng,
    private readonly sim: Sim,
    private readonly tracer: () => Tracer | undefined,
    private readonly onLose?: (link: Link, data: Buffer) => void,
  ) {
    this.delayMs = spec.delayMs ?? 0;
    this.rate = spec.rateBytesPerSec ?? Infinity;
    this.queueBytes = spec.queueBytes ?? Infinity;
    this.overheadBytes = spec.overheadBytes ?? 0;
    if (!(this.delayMs >= 0)) throw new RangeError(`link ${name}: delayMs must be >= 0, not ${spec.delayMs}`);
    if (!(this.rate > 0)) throw new RangeError(`link ${name}: rateBytesPerSec must be > 0, not ${spec.rateBytesPerSec}`);
    this.loss = makeLossModel(spec.loss ?? NO_LOSS, rng);
  }

  /** The long-run loss rate of this link's model. */
  get lossRate(): number {
    return this.loss.stationaryRate;
  }

  /** Bytes given to the link and not yet serialised, at `now`. */
  backlogBytes(now: number): number {
    return this.rate === Infinity ? 0 : Math.max(0, ((this.busyUntil - now) * this.rate) / 1000);
  }

  /**
   * Puts a packet on the link; `arrive` runs at the far end if it is neither
   * dropped (full queue) nor lost. `arrive` returns false when nobody took the
   * packet there (an endpoint that is down), which counts as a drop.
   */
  transmit(data: Buffer, arrive: () => boolean): void {
    const bytes = data.length;
    const now = this.sim.now;
    const c = this.counters;
    const trace = this.tracer();
    c.sentPackets++;
    c.sentBytes += bytes;
    trace?.(now, this.name, 'send', bytes);
    const wire = bytes + this.overheadBytes;
    if (this.rate !== Infinity && this.backlogBytes(now) + wire > this.queueBytes) {
      c.droppedPackets++;
      c.droppedBytes += bytes;
      trace?.(now, this.name, 'drop', bytes);
      return;
    }
    const start = Math.max(now, this.busyUntil);
    const done = this.rate === Infinity ? start : start + (wire * 1000) / this.rate;
    this.busyUntil = done;
    if (this.loss.lose()) {
      c.lostPackets++;
      c.lostBytes += bytes;
      trace?.(now, this.name, 'lose', bytes);
      this.onLose?.(this, data);
      return;
    }
    this.sim.at(done + this.delayMs, () => {
      if (arrive()) {
        c.deliveredPackets++;
        c.deliveredBytes += bytes;
        this.tracer()?.(this.sim.now, this.name, 'deliver', bytes);
      } else {
        c.droppedPackets++;
        c.droppedBytes += bytes;
        this.tracer()?.(this.sim.now, this.name, 'drop', bytes);
      }
    });
  }
}

export type Via = 'lan' | 'cross';
export type ReceiveHandler = (data: Buffer, from: string, via: Via, now: number) => void;

export class EndpointCounters {
  sentPackets = 0;
  sentBytes = 0;
  receivedPackets = 0;
  receivedBytes = 0;
}

export class Endpoint {
  readonly counters = new EndpointCounters();
  private up_ = true;
  onReceive: ReceiveHandler | null = null;

  constructor(
    readonly name: string,
    readonly lan: Lan,
    readonly up: Link,
    readonly down: Link,
    private readonly net: Network,
  ) {}

  /** False once the endpoint is killed: it neither sends nor receives. */
  get alive(): boolean {
    return this.up_;
  }

  /** The box dies (or is unplugged): packets in flight to it are dropped on arrival. */
  kill(): void {
    this.up_ = false;
  }

  /** To every other member of this endpoint's LAN. */
  multicast(data: Uint8Array): void {
    if (!this.up_) return;
    const copy = this.net.take(this, data, null);
    this.up.transmit(copy, () => {
      // At the switch: one copy for every member attached now (a member that joins
      // later does not see packets already past the switch).
      for (const m of this.lan.members) {
        if (m === this) continue;
        m.down.transmit(copy, () => m.receive(copy, this.name, 'lan'));
      }
      return true;
    });
  }

  /** To one endpoint, on this LAN or (through the routed path) another. */
  unicast(to: string, data: Uint8Array): void {
    if (!this.up_) return;
    const dest = this.net.endpoint(to);
    const copy = this.net.take(this, data, to);
    if (!dest) {
      this.net.unroutable.sentPackets++;
      this.net.unroutable.sentBytes += copy.length;
      return;
    }
    if (dest.lan === this.lan) {
      this.up.transmit(copy, () => {
        dest.down.transmit(copy, () => dest.receive(copy, this.name, 'lan'));
        return true;
      });
      return;
    }
    const path = this.net.route(this.lan, dest.lan);
    if (!path) {
      this.net.unroutable.sentPackets++;
      this.net.unroutable.sentBytes += copy.length;
      return;
    }
    this.up.transmit(copy, () => {
      path.transmit(copy, () => {
        dest.down.transmit(copy, () => dest.receive(copy, this.name, 'cross'));
        return true;
      });
      return true;
    });
  }

  private receive(data: Buffer, from: string, via: Via): boolean {
    if (!this.up_) return false;
    this.counters.receivedPackets++;
    this.counters.receivedBytes += data.length;
    this.onReceive?.(data, from, via, this.net.sim.now);
    return true;
  }
}

export class Lan {
  readonly members: Endpoint[] = [];
  constructor(
    readonly name: string,
    readonly defaults: { up: LinkSpec; down: LinkSpec },
  ) {}
}

export class Network {
  private readonly lans = new Map<string, Lan>();
  private readonly endpoints = new Map<string, Endpoint>();
  private readonly routes = new Map<string, Link>();
  private readonly links: Link[] = [];
  private readonly rng: Prng;
  /** Unicasts to an unknown endpoint or a LAN without a route. */
  readonly unroutable = new EndpointCounters();
  tracer: Tracer | undefined;
  /** Sees every datagram a link's loss model drops. */
  lossTap: ((link: Link, data: Buffer) => void) | undefined;
  /** Sees every datagram an endpoint sends (`to` null: multicast), before any link. */
  tap: ((from: Endpoint, data: Buffer, to: string | null) => void) | undefined;

  constructor(
    readonly sim: Sim,
    seed: number,
  ) {
    this.rng = new Prng(seed);
  }

  addLan(name: string, defaults: { up?: LinkSpec; down?: LinkSpec } = {}): Lan {
    if (this.lans.has(name)) throw new Error(`network: LAN ${name} exists`);
    const lan = new Lan(name, { up: defaults.up ?? {}, down: defaults.down ?? {} });
    this.lans.set(name, lan);
    return lan;
  }

  /** Plugs a new endpoint into `lan` (at any simulated time: a late joiner). */
  attach(lan: Lan, name: string, links: { up?: LinkSpec; down?: LinkSpec } = {}): Endpoint {
    if (this.endpoints.has(name)) throw new Error(`network: endpoint ${name} exists`);
    const up = this.link(`${name}.up`, links.up ?? lan.defaults.up);
    const down = this.link(`${name}.down`, links.down ?? lan.defaults.down);
    const ep = new Endpoint(name, lan, up, down, this);
    lan.members.push(ep);
    this.endpoints.set(name, ep);
    return ep;
  }

  /** A routed path from LAN `a` to LAN `b` and one back, each with `spec`. */
  connect(a: Lan, b: Lan, spec: LinkSpec, back: LinkSpec = spec): void {
    this.routes.set(`${a.name}>${b.name}`, this.link(`${a.name}>${b.name}`, spec));
    this.routes.set(`${b.name}>${a.name}`, this.link(`${b.name}>${a.name}`, back));
  }

  endpoint(name: string): Endpoint | undefined {
    return this.endpoints.get(name);
  }

  route(from: Lan, to: Lan): Link | undefined {
    return this.routes.get(`${from.name}>${to.name}`);
  }

  /** Every link, in the order they were made. */
  allLinks(): readonly Link[] {
    return this.links;
  }

  /** Counters summed over the links whose name passes `filter`. */
  total(filter: (link: Link) => boolean = () => true): LinkCounters {
    const sum = new LinkCounters();
    for (const l of this.links) if (filter(l)) sum.add(l.counters);
    return sum;
  }

  /** @internal Copies an outgoing datagram, counts it against its sender and shows it to the tap. */
  take(from: Endpoint, data: Uint8Array, to: string | null): Buffer {
    from.counters.sentPackets++;
    from.counters.sentBytes += data.length;
    const copy = Buffer.from(data);
    this.tap?.(from, copy, to);
    return copy;
  }

  private link(name: string, spec: LinkSpec): Link {
    const l = new Link(name, spec, this.rng.fork(name), this.sim, () => this.tracer, (link, data) => this.lossTap?.(link, data));
    this.links.push(l);
    return l;
  }
}
