import { Prng } from './prng';

/**
 * Packet loss models for simulated links. Each link owns one model instance and
 * asks it, packet by packet, whether that packet is lost.
 *
 * - Bernoulli: every packet is lost independently with probability `p`.
 * - Gilbert-Elliott: a two-state Markov chain advanced once per packet
 *   (E. N. Gilbert, "Capacity of a burst-noise channel", 1960; E. O. Elliott,
 *   1963; the packet-level form behind RFC 3611's burst metrics and Linux netem's
 *   `loss gemodel`). From Good the chain moves to Bad with
 *   probability `p`, from Bad back to Good with probability `r`; a packet is lost
 *   with probability `lossGood` in Good and `lossBad` in Bad. The stationary
 *   share of Bad is p / (p + r), so the long-run loss rate is
 *   (r · lossGood + p · lossBad) / (p + r), and with lossBad = 1 and lossGood = 0
 *   a loss burst lasts 1 / r packets on average.
 */
export interface GilbertElliottSpec {
  kind: 'gilbert-elliott';
  p: number;
  r: number;
  lossGood: number;
  lossBad: number;
}
export type LossSpec = { kind: 'none' } | { kind: 'bernoulli'; p: number } | GilbertElliottSpec;

export interface LossModel {
  /** Advances the model by one packet; true when that packet is lost. */
  lose(): boolean;
  /** The long-run loss rate the model converges to. */
  readonly stationaryRate: number;
}

export const NO_LOSS: LossSpec = { kind: 'none' };

export function bernoulli(p: number): LossSpec {
  return { kind: 'bernoulli', p };
}

/** Bursty loss: Good -> Bad with `p`, Bad -> Good with `r`; defaults: lossless Good, lossy Bad. */
export function gilbertElliott(p: number, r: number, lossBad = 1, lossGood = 0): GilbertElliottSpec {
  return { kind: 'gilbert-elliott', p, r, lossGood, lossBad };
}

/**
 * A Gilbert-Elliott spec with the given long-run loss rate and mean burst length
 * (in packets, >= 1), with Bad losing everything and Good nothing.
 */
export function burstyLoss(rate: number, meanBurstPackets: number): GilbertElliottSpec {
  const r = 1 / meanBurstPackets;
  // rate = p / (p + r)  =>  p = rate · r / (1 - rate)
  return gilbertElliott((rate * r) / (1 - rate), r);
}

export function stationaryRate(spec: LossSpec): number {
  switch (spec.kind) {
    case 'none':
      return 0;
    case 'bernoulli':
      return spec.p;
    case 'gilbert-elliott':
      return spec.p + spec.r === 0 ? spec.lossGood : (spec.r * spec.lossGood + spec.p * spec.lossBad) / (spec.p + spec.r);
  }
}

function checkProbability(name: string, v: number): void {
  if (!(v >= 0 && v <= 1)) throw new RangeError(`loss model: ${name} must be a probability in [0, 1], not ${v}`);
}

export function makeLossModel(spec: LossSpec, rng: Prng): LossModel {
  const rate = stationaryRate(spec);
  switch (spec.kind) {
    case 'none':
      return { lose: () => false, stationaryRate: 0 };
    case 'bernoulli': {
      checkProbability('p', spec.p);
      const p = spec.p;
      return { lose: () => p > 0 && rng.next() < p, stationaryRate: rate };
    }
    case 'gilbert-elliott': {
      for (const k of ['p', 'r', 'lossGood', 'lossBad'] as const) checkProbability(k, spec[k]);
      // Start in the stationary distribution, so short runs are not biased towards Good.
      let bad = rng.next() < (spec.p + spec.r === 0 ? 0 : spec.p / (spec.p + spec.r));
      return {
        stationaryRate: rate,
        lose: () => {
          // The packet sees the current state; the chain then steps.
          const lost = rng.next() < (bad ? spec.lossBad : spec.lossGood);
          bad = bad ? !(rng.next() < spec.r) : rng.next() < spec.p;
          return lost;
        },
      };
    }
  }
}
